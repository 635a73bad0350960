"""Continuous batching: which sequences run this step, and how many tokens each.

Every step: running decodes first (one token each), then running prompts continue in chunks,
then waiting requests are admitted while the token budget, the sequence limit and the free
blocks allow (under load, every few steps: see prefill_interval). A long prompt is prefilled chunk by chunk, sharing steps with decodes, so it
never stalls other chats. When blocks run out, the newest running sequence is preempted and
later recomputed (its blocks usually come back from the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from app.engine.block_manager import BlockManager
from app.engine.sequence import Sequence, SeqStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed for this sequence in this step

    @property
    def samples(self) -> bool:
        """The chunk reaches the end of the known tokens, so the step samples a new token."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass
class Batch:
    items: list[ScheduledSeq] = field(default_factory=list)  # decodes first, then prefill chunks
    num_decodes: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(item.num_tokens for item in self.items)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prefill_chunk_size: int,
        prefill_interval: int = 1,
        busy_decodes: int = 32,
    ):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefill_chunk_size = prefill_chunk_size
        # Under load (busy_decodes or more sequences decoding) waiting requests are admitted only
        # every prefill_interval steps, together: the steps between are pure decodes (replayed
        # from CUDA graphs) instead of each one mixing in a prompt and running eagerly.
        self.prefill_interval, self.busy_decodes = prefill_interval, busy_decodes
        self._steps_since_admission = 0
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Ends a sequence (done, stopped or cancelled) and frees its blocks at once."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.free_seq(seq)
        seq.status, seq.finish_reason = SeqStatus.FINISHED, reason

    def schedule(self) -> Batch:
        budget = self.max_num_batched_tokens
        decodes: list[ScheduledSeq] = []
        prefills: list[ScheduledSeq] = []
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            remaining = seq.num_tokens - seq.num_computed_tokens
            n = 1 if remaining == 1 else min(remaining, self.prefill_chunk_size, budget)
            if n == 0 or seq.num_tokens >= seq.max_tokens:  # the latter: its last token is out, it ends
                i += 1
                continue
            if not self._reserve(seq, n):  # preempted itself: nothing left to free
                continue
            (decodes if remaining == 1 else prefills).append(ScheduledSeq(seq, n))
            budget -= n
            i += 1
        self._steps_since_admission += 1
        if len(decodes) < self.busy_decodes or self._steps_since_admission >= self.prefill_interval:
            if self._admit(prefills, budget):
                self._steps_since_admission = 0
        return Batch(items=decodes + prefills, num_decodes=len(decodes))

    def _reserve(self, seq: Sequence, n: int) -> bool:
        """Makes room for n more tokens of a running sequence, preempting the newest others."""
        needed = self.blocks.blocks_needed(seq, seq.num_computed_tokens + n)
        while not self.blocks.can_allocate(needed):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.allocate(seq, seq.num_computed_tokens + n)
        return True

    def _admit(self, prefills: list[ScheduledSeq], budget: int) -> bool:
        """Admits waiting requests while they fit; returns whether any was."""
        admitted = False
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            self.blocks.match_prefix(seq)
            n = min(seq.num_tokens - seq.num_computed_tokens, self.prefill_chunk_size, budget)
            if not self.blocks.can_allocate(self.blocks.blocks_needed(seq, seq.num_computed_tokens + n)):
                self.blocks.free_seq(seq)  # give the prefix blocks back until it can run
                break
            self.blocks.allocate(seq, seq.num_computed_tokens + n)
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            prefills.append(ScheduledSeq(seq, n))
            budget -= n
            admitted = True
        return admitted

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)

    def complete_step(self, batch: Batch) -> None:
        """Once the step is launched: its tokens count as computed (the device runs steps in
        order). Their blocks become reusable prefixes only with commit(), once no placeholder
        token is left among them."""
        for item in batch.items:
            item.seq.num_computed_tokens += item.num_tokens

    def commit(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            if not seq.is_finished:
                self.blocks.commit_full_blocks(seq)
