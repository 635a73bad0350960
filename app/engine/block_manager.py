"""Paged KV-cache bookkeeping: block allocation with reference counts and prefix caching.

A full block is identified by a hash chain over its tokens and all tokens before it, so two
sequences sharing a prompt prefix share its blocks. Blocks nobody references stay cached
until they are needed again, least recently used first.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from hashlib import blake2b

from app.engine.sequence import Sequence


def block_hash(parent: bytes, tokens: list[int], extra: bytes = b"") -> bytes:
    """Chain hash of a full block; ``extra``: the images it holds part of (Sequence.block_extra)."""
    h = blake2b(parent, digest_size=16)
    h.update(array("q", tokens).tobytes())
    h.update(extra)
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.hashes: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        # Unreferenced blocks in eviction order (first = evicted first). Cached ones keep their hash.
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks the sequence needs to hold ``num_tokens`` tokens in total."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self.free)

    def match_prefix(self, seq: Sequence) -> None:
        """On admission: takes the cached blocks covering the longest cached prefix. At least one
        token is always left to compute, so the step still produces logits."""
        if not self.enable_prefix_caching or seq.block_table:
            return
        parent = b""
        for i in range((seq.num_tokens - 1) // self.block_size):
            h = block_hash(parent, seq.token_ids[i * self.block_size : (i + 1) * self.block_size],
                           seq.block_extra(i, self.block_size))
            block = self.cached.get(h)
            if block is None:
                break
            self._acquire(block)
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            parent = h
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        seq.num_cached_prompt_tokens = min(seq.num_computed_tokens, seq.num_prompt_tokens)

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grows the block table to hold ``num_tokens`` tokens (caller checked can_allocate)."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            block, _ = self.free.popitem(last=False)
            old = self.hashes[block]
            if old is not None:
                del self.cached[old]
                self.hashes[block] = None
            self.ref_counts[block] = 1
            seq.block_table.append(block)

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Registers blocks that became full of computed tokens so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        for i in range(len(seq.block_hashes), full):
            parent = seq.block_hashes[-1] if seq.block_hashes else b""
            h = block_hash(parent, seq.token_ids[i * self.block_size : (i + 1) * self.block_size],
                           seq.block_extra(i, self.block_size))
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self.cached:  # an identical block cached already keeps serving
                self.cached[h] = block
                self.hashes[block] = h

    def free_seq(self, seq: Sequence) -> None:
        """Releases the sequence's blocks. Its last blocks are evicted first, its first blocks
        (the most shareable prefix) last; blocks holding nothing reusable go first of all."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
                if self.hashes[block] is None:
                    self.free.move_to_end(block, last=False)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

    def _acquire(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1
