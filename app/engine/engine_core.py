"""The synchronous engine: requests in, one scheduled step at a time, deltas out.

No threads here (``Engine`` adds the thread); tests and benchmarks drive it directly.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from app.engine.block_manager import BlockManager
from app.engine.config import EngineConfig, GenerationConfig
from app.engine.cuda_graphs import max_graph_batch
from app.engine.detokenizer import IncrementalDetokenizer
from app.engine.errors import ContextOverflowError, RequestError
from app.engine.kernels import WARM_UP_ROWS
from app.engine.loader.model_loader import LoadedModel
from app.engine.model_runner import ModelRunner, StepOutput
from app.engine.outputs import Delta, RequestStats, TokenLogprob
from app.engine.scheduler import Scheduler
from app.engine.sequence import ImageSpan, Sequence
from app.engine.tokenizer import encode_chat, encode_prompt, Message


@dataclass
class _InFlight:
    """A launched step: its output, the (sequence, placeholder position) of each sampled token
    in row order, and every sequence it computed."""

    out: StepOutput
    sampled: list[tuple[Sequence, int]]
    seqs: list[Sequence]


@dataclass(eq=False)
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer
    emit: Callable[[Delta], None]
    logits: list[torch.Tensor] = field(default_factory=list)


class EngineCore:
    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.loaded, self.config = loaded, config
        self.blocks = BlockManager(loaded.cache.num_blocks, loaded.cache.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.blocks, config.max_num_seqs, config.max_num_batched_tokens, config.prefill_chunk_size,
            config.prefill_interval,
        )
        self.runner = ModelRunner(loaded.model, loaded.cache, max_graph_batch(loaded.model, config),
                                  loaded.max_model_len, loaded.workers)
        self.requests: dict[int, _Request] = {}
        self.generated_tokens = 0
        self._in_flight: _InFlight | None = None
        self._failure: str | None = None
        if loaded.device.type == "cuda":
            self._warm_up()

    def _warm_up(self) -> None:
        """Runs each kind of step once (prefill; mixed steps over short and longer contexts;
        decodes of several sequences, then of one; a prompt long enough for the kernels that
        take many rows, such as the expansion of 4-bit weights) so the JIT kernels compile now,
        not seconds into someone's chat. The prompts repeat one of the last token ids, which no
        real prompt starts with."""
        limit = self.loaded.max_model_len
        vocab = self.loaded.config.vocab_size

        def run(prompt_len: int, new_tokens: int) -> None:
            gen = GenerationConfig(temperature=0.0, max_new_tokens=new_tokens, ignore_eos=True)
            self.add_request([vocab - 1] * max(1, min(prompt_len, limit - new_tokens - 1)), gen, lambda d: None)
            self.step()

        run(5, 8)  # prefill alone
        run(100, 2)  # a decode over 6 keys beside a prefill
        run(5, 2)  # decodes over 7 and 101 keys beside a prefill
        while self.has_work():
            self.step()
        # One step of WARM_UP_ROWS rows where the limits allow, whatever the chunk size: prompts of
        # one chunk each, each of its own token (no prefix-cache hit shortens one).
        rows = min(WARM_UP_ROWS, self.config.max_num_batched_tokens)
        chunk = max(1, min(self.config.prefill_chunk_size, rows, limit - 2))
        for i in range(min(-(-rows // chunk), self.config.max_num_seqs)):
            self.add_request([max(0, vocab - 2 - i)] * chunk,
                             GenerationConfig(temperature=0.0, max_new_tokens=1, ignore_eos=True), lambda d: None)
        while self.has_work():
            self.step()
        self.generated_tokens = 0

    # ---- requests -----------------------------------------------------------------------
    def tokenize(self, prompt: str | None = None, messages: list[Message] | None = None) -> list[int]:
        if (prompt is None) == (messages is None):
            raise RequestError("give either a prompt or messages")
        tok = self.loaded.tokenizer
        return encode_chat(tok, messages) if messages is not None else encode_prompt(tok, prompt)

    def prepare(self, prompt: str | None = None, messages: list[Message] | None = None) -> dict:
        """add_request's arguments for a prompt or messages: token_ids, and for pictures (which go
        through a vision-language model's processor, and which a text-only model refuses) images
        and, for M-RoPE models, rope (their positions)."""
        from app.engine.vision import prompts

        if messages is None or not prompts.has_images(messages):  # (under M-RoPE text alone counts as usual)
            return {"token_ids": self.tokenize(prompt, messages)}
        if self.loaded.processor is None:
            raise RequestError(f"{self.loaded.path.name} reads text only: load a vision-language model to ask "
                               "about pictures")
        ids, images, rope = prompts.build_prompt(self.loaded.processor, messages, self.loaded.model)
        return {"token_ids": ids, "images": images, "rope": rope}

    def add_request(
        self, token_ids: list[int], gen: GenerationConfig, emit: Callable[[Delta], None], request_id: int | None = None,
        images: tuple[ImageSpan, ...] = (), rope: tuple[torch.Tensor, int] | None = None,
    ) -> int:
        """Queues a request; raises RequestError when it cannot be served at all. ``images``: the
        prompt's pictures, each over its run of placeholder tokens (a vision-language model's);
        ``rope``: an M-RoPE model's prompt positions [3, tokens] and the offset after them."""
        gen.validate()
        if images:
            self._check_images(token_ids, images)
        limit = self.loaded.max_model_len
        if not token_ids:
            raise RequestError("the prompt is empty")
        if len(token_ids) >= limit:
            pictures = sum(image.length for image in images)
            of_them = f" ({pictures} of them for {len(images)} picture{'s' * (len(images) > 1)})" if images else ""
            raise ContextOverflowError(
                f"the prompt has {len(token_ids)} tokens{of_them}; this model's context holds {limit} "
                f"(prompt and reply together). Shorten the prompt, send fewer or smaller pictures, or start a "
                f"new conversation." if images else
                f"the prompt has {len(token_ids)} tokens; this model's context holds {limit} "
                f"(prompt and reply together). Shorten the prompt or start a new conversation."
            )
        vocab = self.loaded.config.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise RequestError(f"token ids must be in [0, {vocab})")
        stop_ids = set(gen.stop_token_ids)
        if not gen.ignore_eos:
            stop_ids |= self.loaded.eos_token_ids
        seq = Sequence(list(token_ids), gen, stop_token_ids=frozenset(stop_ids),
                       max_tokens=min(len(token_ids) + gen.max_new_tokens, limit), images=tuple(images))
        if rope is not None:
            seq.rope_positions, seq.rope_delta = rope
        if request_id is not None:
            seq.seq_id = request_id
        seq.seed = gen.seed if gen.seed is not None else random.getrandbits(63)
        detok = IncrementalDetokenizer(self.loaded.tokenizer, token_ids, gen.stop, gen.skip_special_tokens)
        self.requests[seq.seq_id] = _Request(seq, detok, emit)
        self.scheduler.add(seq)
        return seq.seq_id

    def _check_images(self, token_ids: list[int], images: tuple[ImageSpan, ...]) -> None:
        token = getattr(self.loaded.model, "image_token_id", None)
        if token is None:
            raise RequestError("this model reads text only; load a vision-language model to ask about pictures")
        end = 0
        for image in images:
            if image.start < end or image.end > len(token_ids) or image.length < 1:
                raise RequestError("image spans must lie in the prompt, in order, without overlapping")
            if any(t != token for t in token_ids[image.start : image.end]):
                raise RequestError("an image span must cover the model's image placeholder tokens only")
            end = image.end

    def cancel(self, request_id: int) -> bool:
        req = self.requests.get(request_id)
        if req is None:
            return False
        self._finish(req, "cancelled")
        return True

    def fail_all(self, message: str, error_type: str | None = None) -> None:
        for req in list(self.requests.values()):
            self._finish(req, "error", error=message, error_type=error_type)

    @property
    def failure(self) -> str | None:
        """Why the model cannot run any more (a tensor-parallel rank failed), or None."""
        workers = self.loaded.workers
        return self._failure or (workers.failure if workers is not None else None)

    def watch(self, callback: Callable[[], None]) -> None:
        """Has ``callback`` called (from another thread) when a tensor-parallel rank fails, so an
        idle engine learns of it too."""
        if self.loaded.workers is not None:
            self.loaded.workers.on_failure = callback

    def close(self) -> None:
        """Stops the other tensor-parallel ranks, if any; the core is unusable afterwards."""
        # After a rank failed, the group's abort has ended the steps that waited for it already.
        self.runner.release_graphs()
        self.loaded.close()

    def has_work(self) -> bool:
        return self.scheduler.has_work() or self._in_flight is not None

    # ---- the step -----------------------------------------------------------------------
    # Steps overlap with the host: step() launches the next step before reading back the
    # previous one's tokens, which the device already feeds into it (placeholders, see
    # Sequence). So scheduling, detokenizing and streaming happen while the device computes.
    # A sequence that ends at step k has one token too many computed in step k + 1, never shown.

    def step(self) -> int:
        """Launches one scheduled step, then finishes the one before it; returns the number of
        tokens launched."""
        batch = self.scheduler.schedule()
        launched = None
        if batch.items:
            try:
                out = self.runner.step(batch)
            except Exception as exc:  # e.g. out of memory: fail this batch, keep serving the rest
                if self.loaded.workers is not None:
                    return self._break(exc)
                self._fail([item.seq for item in batch.items], exc)
            else:
                sampling = [item.seq for item in batch.items if item.samples]
                self.scheduler.complete_step(batch)
                sampled = []
                for row, seq in enumerate(sampling):
                    sampled.append((seq, seq.num_tokens))
                    seq.token_ids.append(-(row + 1))
                launched = _InFlight(out, sampled, [item.seq for item in batch.items])
        previous, self._in_flight = self._in_flight, launched
        if previous is not None:
            self._complete(previous)
            if launched is not None:  # its placeholders resolved just now, so its blocks can be shared
                self.scheduler.commit(launched.seqs)
        return batch.num_tokens

    def _complete(self, done: _InFlight) -> None:
        """Reads back a step's tokens, puts them in place of their placeholders, streams them."""
        try:
            tokens = done.out.tokens()
        except Exception as exc:
            if self.loaded.workers is not None:
                self._break(exc)
                return
            self._fail([seq for seq, _ in done.sampled], exc)
            return
        self.scheduler.commit(done.seqs)
        now = time.perf_counter()
        logprobs = [None] * len(tokens)
        if done.out.logprobs is not None:
            logprobs = done.out.logprobs.per_row(tokens, lambda t: self.loaded.tokenizer.decode([t]))
        for (seq, position), token, logits, logprob in zip(done.sampled, tokens, done.out.logits, logprobs):
            if seq.is_finished:  # cancelled, or ended a step earlier
                continue
            seq.token_ids[position] = token
            req = self.requests[seq.seq_id]
            self.generated_tokens += 1
            if seq.first_token_time is None:
                seq.first_token_time = now
            if logits is not None:
                req.logits.append(logits)
            reason = self._finish_reason(seq, token, position + 1)
            text = "" if token in seq.stop_token_ids else req.detok.add(token)
            if req.detok.stopped:
                reason = "stop"
            token_logprobs = None if logprob is None else [logprob]
            if reason is None:
                req.emit(Delta(seq.seq_id, text=text, token_ids=[token], logprobs=token_logprobs))
                continue
            self._finish(req, reason, text=text, token_ids=[token], logprobs=token_logprobs)

    def _break(self, exc: Exception) -> int:
        """A tensor-parallel step failed: the ranks are out of step, so nothing can run any more.
        Every request fails with the reason (which rank failed, and how)."""
        error = self.loaded.workers.error(exc)
        self._failure = str(error)
        self._in_flight = None
        self.fail_all(self._failure, type(error).__name__)
        return 0

    def _fail(self, seqs: list[Sequence], exc: Exception) -> None:
        for seq in seqs:
            req = self.requests.get(seq.seq_id)
            if req is not None:
                self._finish(req, "error", error=f"generation failed: {exc}")

    def _finish_reason(self, seq: Sequence, token: int, length: int) -> str | None:
        """Why the sequence ends with this token (its length counted up to it), if it does."""
        if token in seq.stop_token_ids:  # the sampler kept them out until min_new_tokens
            return "stop"
        if length >= seq.max_tokens:
            return "length"
        return None

    def _finish(self, req: _Request, reason: str, text: str = "", token_ids: list[int] | None = None,
                error: str | None = None, error_type: str | None = None,
                logprobs: list[TokenLogprob] | None = None) -> None:
        seq = req.seq
        if seq.token_ids[-1] < 0:  # a token still being computed, never to be shown
            seq.token_ids.pop()
        self.scheduler.finish(seq, reason)
        del self.requests[seq.seq_id]
        if error is None:
            text += req.detok.flush()
        end = time.perf_counter()
        decode_time = end - seq.first_token_time if seq.first_token_time else 0.0
        stats = RequestStats(
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_generated,
            cached_prompt_tokens=seq.num_cached_prompt_tokens,
            ttft_s=(seq.first_token_time - seq.arrival_time) if seq.first_token_time else None,
            decode_tokens_per_s=(seq.num_generated - 1) / decode_time if seq.num_generated > 1 and decode_time > 0 else None,
            total_s=end - seq.arrival_time,
            preemptions=seq.num_preemptions,
        )
        req.emit(Delta(seq.seq_id, text=text, token_ids=token_ids or [], finished=True, finish_reason=reason,
                       error=error, error_type=error_type, stats=stats, logits=req.logits or None,
                       logprobs=logprobs))

    def stats(self) -> dict:
        loaded = self.loaded
        return {
            "model": str(loaded.path),
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "kernels": loaded.kernels,
            "vision": loaded.processor is not None,  # reads pictures in messages
            "cache_tokens": loaded.cache.num_tokens,
            "kv_cache_dtype": loaded.cache.format.name if loaded.cache.format else str(loaded.dtype).removeprefix("torch."),
            "free_cache_tokens": self.blocks.num_free_blocks * loaded.cache.block_size,
            "max_model_len": loaded.max_model_len,
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "generated_tokens": self.generated_tokens,
        }
