"""Runs one scheduled step: flat batch tensors in, one sampled token per finishing chunk out.

A runner owns the model and its KV cache on one device. It knows nothing about requests or
text. Under tensor parallelism every rank has one over its shard: rank 0's sends each step's
inputs (StepInputs) to the others and samples; they run the same steps (``follow``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from app.engine.attention_metadata import AttentionMetadata
from app.engine.cuda_graphs import DecodeGraphs
from app.engine.distributed import parallel_state
from app.engine.errors import RequestError
from app.engine.kv_cache import KVCache
from app.engine.models.decoder import DecoderLM
from app.engine.outputs import TokenLogprob
from app.engine.sampling import sample
from app.engine.scheduler import Batch

if TYPE_CHECKING:
    from app.engine.distributed.group import WorkerGroup
    from app.engine.sequence import Sequence


@dataclass
class StepOutput:
    """A launched step's samples (one token per batch item that samples, in batch order). The
    device may still be computing them: tokens() waits for them and reads them back."""

    device_tokens: torch.Tensor | None = None
    logits: list[torch.Tensor | None] = field(default_factory=list)  # where a request asked for them
    host: torch.Tensor | None = None  # pinned copy target, with the event that marks it filled
    ready: torch.cuda.Event | None = None
    wait: Callable[[torch.cuda.Event], None] | None = None  # how to wait for it, where not synchronize()

    logprobs: "StepLogprobs | None" = None

    def tokens(self) -> list[int]:
        if self.device_tokens is None:
            return []
        if self.ready is None:
            return self.device_tokens.tolist()
        if self.wait is None:
            self.ready.synchronize()
        else:
            self.wait(self.ready)
        return self.host[: self.device_tokens.shape[0]].tolist()


@dataclass
class StepLogprobs:
    """Log-probabilities for the rows whose requests ask for them, still on the device: each
    row's sampled token's, and its ``counts[i]`` likeliest tokens' (ids and values)."""

    rows: list[int]
    counts: list[int]
    chosen: torch.Tensor  # [len(rows)]
    top_values: torch.Tensor  # [len(rows), max(counts)]
    top_ids: torch.Tensor

    @classmethod
    def of(cls, log_probs: torch.Tensor, tokens: torch.Tensor, rows: list[int], counts: list[int]) -> "StepLogprobs":
        """log_probs: [len(rows), vocab] of the model's distribution; tokens: every row's sample."""
        chosen = log_probs.gather(1, tokens[rows][:, None])[:, 0]
        top = log_probs.topk(max(counts), dim=1)
        return cls(rows, counts, chosen, top.values, top.indices)

    def per_row(self, tokens: list[int], text: Callable[[int], str]) -> list[TokenLogprob | None]:
        """One entry per sampled row (None where not asked); reads back once the step is done.
        ``text``: a token id's text."""
        out: list[TokenLogprob | None] = [None] * len(tokens)
        chosen, values, ids = self.chosen.tolist(), self.top_values.tolist(), self.top_ids.tolist()
        for i, (row, count) in enumerate(zip(self.rows, self.counts)):
            top = [(t, text(t), v) for t, v in zip(ids[i][:count], values[i][:count])]
            out[row] = TokenLogprob(tokens[row], text(tokens[row]), chosen[i], top)
        return out


@dataclass
class StepInputs:
    """One step's batch as plain host lists: all a rank needs to run it (tensor-parallel rank 0
    pickles it to the other ranks). ids may hold placeholders (see Sequence)."""

    ids: list[int]
    positions: list[int]
    slots: list[int]
    block_tables: list[list[int]]
    query_starts: list[int]
    query_lens: list[int]
    context_lens: list[int]
    num_decodes: int
    sampling: list[int]  # the sequences (indices in the batch) whose chunk samples a token
    # Image placeholder tokens in this step: (first row in ids, sequence's index in the batch,
    # its image's index, first and end token of the image covered).
    images: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    # M-RoPE prompt chunks: every row's (time, row, column) positions, [3][rows]; None: 1-D positions.
    positions3: list[list[int]] | None = None

    @classmethod
    def of(cls, batch: Batch, block_size: int) -> "StepInputs":
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        tables, starts, lens, ctx_lens, sampling = [], [], [], [], []
        images: list[tuple[int, int, int, int, int]] = []
        rope: list[tuple[int, Sequence, int, int]] = []
        for i, item in enumerate(batch.items):
            seq, n = item.seq, item.num_tokens
            first, table = seq.num_computed_tokens, seq.block_table
            starts.append(len(ids))
            lens.append(n)
            ctx_lens.append(first + n)
            tables.append(table)
            if item.samples:
                sampling.append(i)
            prompt_side = (seq.images and first < seq.images[-1].end) or (
                seq.rope_positions is not None and first < seq.rope_positions.shape[1])
            if n == 1 and not prompt_side:  # a decode: the common case, kept cheap
                ids.append(seq.token_ids[first])
                positions.append(first + seq.rope_delta)
                slots.append(table[first // block_size] * block_size + first % block_size)
                continue
            for j, image in enumerate(seq.images):  # prompt chunks only (n == 1 decodes hold none)
                lo, hi = max(first, image.start), min(first + n, image.end)
                if lo < hi:
                    images.append((len(ids) + lo - first, i, j, lo - image.start, hi - image.start))
            if seq.rope_positions is not None and first < seq.rope_positions.shape[1]:
                rope.append((len(ids), seq, first, n))
            ids.extend(seq.token_ids[first : first + n])
            span = range(first, first + n)
            positions.extend(p + seq.rope_delta for p in span)
            slots.extend(table[p // block_size] * block_size + p % block_size for p in span)
        positions3 = None
        if rope:  # M-RoPE prompt tokens: their own three positions; the others' three are equal
            positions3 = [list(positions) for _ in range(3)]
            for row, seq, first, n in rope:
                known = seq.rope_positions[:, first : first + n].tolist()
                for stream in range(3):
                    positions3[stream][row : row + len(known[stream])] = known[stream]
        return cls(ids, positions, slots, tables, starts, lens, ctx_lens, batch.num_decodes, sampling, images,
                   positions3)


class ModelRunner:
    def __init__(self, model: DecoderLM, cache: KVCache, graph_batch: int = 0, max_model_len: int = 0,
                 workers: WorkerGroup | None = None):
        """graph_batch > 0: decode steps of up to that many sequences replay CUDA graphs,
        captured here once the model is bound to its cache. workers: on tensor-parallel rank 0,
        the other ranks, which get every step's inputs and the tokens sampled."""
        self.model, self.cache = model, cache
        self.device = model.device
        self.workers = workers
        model.bind_cache(cache.layers)
        # The tokens the last step sampled, on the device: placeholder ids in the next step's input
        # (see Sequence) resolve to them there, so a step launches before the host reads them.
        self.last_sampled: torch.Tensor | None = None
        self._host_buffers: list[torch.Tensor | None] = [None, None]  # pinned; two steps in flight at most
        self._next_buffer = 0
        self._image_features: dict[tuple[int, int], torch.Tensor] = {}  # (seq id, image) -> embeddings
        self.graphs: DecodeGraphs | None = None
        if graph_batch > 0:
            self.graphs = DecodeGraphs(model, cache, graph_batch, max_model_len)
            self.graphs.capture()

    def release_graphs(self) -> None:
        """Drops the CUDA graphs (after the device finished with them). A tensor-parallel model
        must, before its NCCL group goes: graphs that captured NCCL's collectives keep its
        communicator busy, and tearing it down under them hangs (pytorch/pytorch#115388)."""
        if self.graphs is not None:
            torch.cuda.synchronize(self.device)
            self.graphs = None

    def _prepare(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor | None]:
        ids, starts, lens, ctx_lens = inputs.ids, inputs.query_starts, inputs.query_lens, inputs.context_lens
        width = max(len(table) for table in inputs.block_tables)
        tables = [table + [0] * (width - len(table)) for table in inputs.block_tables]
        dev = self.device
        meta = AttentionMetadata(
            num_seqs=len(lens),
            num_decodes=inputs.num_decodes,
            query_starts=starts,
            query_lens=lens,
            context_lens=ctx_lens,
            slot_mapping=torch.tensor(inputs.slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.long, device=dev),
            decode_context_lens=torch.tensor(ctx_lens[: inputs.num_decodes], dtype=torch.long, device=dev),
            query_start_loc=torch.tensor(starts + [len(ids)], dtype=torch.int32, device=dev),
            context_lens_t=torch.tensor(ctx_lens, dtype=torch.int32, device=dev),
            max_query_len=max(lens),
        )
        seq_lens = None
        if self.model.needs_seq_lens:
            seq_lens = torch.repeat_interleave(torch.tensor(ctx_lens, device=dev), torch.tensor(lens, device=dev))
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        if min(ids) < 0:
            input_ids = self._resolve(input_ids)
        positions = inputs.positions3 if inputs.positions3 is not None else inputs.positions
        return input_ids, torch.tensor(positions, dtype=torch.long, device=dev), meta, seq_lens

    def _resolve(self, ids: torch.Tensor) -> torch.Tensor:
        """Placeholder ids -> the tokens the previous step sampled (device to device)."""
        return torch.where(ids < 0, self.last_sampled[(-ids - 1).clamp(min=0)], ids)

    @torch.inference_mode()
    def step(self, batch: Batch) -> StepOutput:
        inputs = StepInputs.of(batch, self.cache.block_size)
        if self.workers is not None:
            self.workers.send(inputs)
        logits = self._forward(inputs, self._image_embeddings(batch, inputs))
        if not inputs.sampling:
            return StepOutput()
        return self._sample(logits, [batch.items[i].seq for i in inputs.sampling])

    @torch.inference_mode()
    def follow(self, inputs: StepInputs) -> None:
        """A step on a tensor-parallel rank past 0: its part of the forward (whose all-reduces
        pair with the other ranks'), then the tokens rank 0 sampled, which the next step's
        placeholders stand for."""
        self._forward(inputs)
        if inputs.sampling:
            tokens = torch.empty(len(inputs.sampling), dtype=torch.long, device=self.device)
            self.last_sampled = parallel_state.broadcast(tokens)

    def _image_embeddings(self, batch: Batch, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows of the step's ids, their embeddings) for the image tokens in this step. Each
        image goes through the vision tower once (those a step needs, batched) and its
        embeddings are kept until its last token is prefilled; a sequence that leaves the batch
        meanwhile has them made again if it comes back."""
        if not inputs.images:
            self._image_features.clear()
            return None
        keys = [(batch.items[i].seq.seq_id, j) for _, i, j, _, _ in inputs.images]
        self._image_features = {k: v for k, v in self._image_features.items() if k in keys}
        todo = [(key, batch.items[i].seq.images[j]) for key, (_, i, j, _, _) in zip(keys, inputs.images)
                if key not in self._image_features]
        if todo:
            for (key, image), features in zip(todo, self.model.encode_images([image.pixels for _, image in todo])):
                if features.shape[0] != image.length:
                    raise RequestError(f"the vision tower made {features.shape[0]} embeddings for an image with "
                                       f"{image.length} placeholder tokens")
                self._image_features[key] = features
        rows, values = [], []
        for key, (row, i, j, lo, hi) in zip(keys, inputs.images):
            rows.append(torch.arange(row, row + hi - lo, device=self.device))
            values.append(self._image_features[key][lo:hi])
            if hi == batch.items[i].seq.images[j].length:
                del self._image_features[key]  # all its tokens are in the cache after this step
        return torch.cat(rows), torch.cat(values)

    def _forward(self, inputs: StepInputs, images: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The logits of the sampling rows; on ranks that compute none, the hidden states.
        ``images``: (rows, embeddings) that replace the image tokens' embeddings."""
        num_seqs = len(inputs.query_lens)
        if images is None and self.graphs is not None and inputs.num_decodes == num_seqs <= self.graphs.max_batch:
            resolve = self._resolve if min(inputs.ids) < 0 else None
            return self.graphs.run(inputs.ids, inputs.positions, inputs.slots, inputs.block_tables,
                                   inputs.context_lens, resolve)
        input_ids, positions, meta, seq_lens = self._prepare(inputs)
        hidden = self.model(input_ids, positions, meta, self.cache.layers, seq_lens, images)
        if not inputs.sampling or not self.model.computes_logits:
            return hidden
        last_rows = torch.tensor(
            [meta.query_starts[i] + meta.query_lens[i] - 1 for i in inputs.sampling], device=self.device
        )
        return self.model.compute_logits(hidden[last_rows])

    def _sample(self, logits: torch.Tensor, seqs: list) -> StepOutput:
        """Samples on the device and starts copying the tokens back; returns without waiting."""
        kept = [logits[j].clone() if seq.gen.output_logits else None for j, seq in enumerate(seqs)]
        wanted = [j for j, seq in enumerate(seqs) if seq.gen.logprobs is not None]
        log_probs = torch.log_softmax(logits[wanted].float(), dim=-1) if wanted else None  # before sample() edits logits
        tokens = sample(logits, seqs, self.last_sampled, self.model.ops.sample_race)
        logprobs = None if log_probs is None else StepLogprobs.of(log_probs, tokens, wanted,
                                                                  [seqs[j].gen.logprobs for j in wanted])
        if self.workers is not None:
            parallel_state.broadcast(tokens)
        self.last_sampled = tokens
        if tokens.device.type != "cuda":
            return StepOutput(tokens, kept, logprobs=logprobs)
        host = self._host_buffer(tokens.shape[0])
        host[: tokens.shape[0]].copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return StepOutput(tokens, kept, host, ready, None if self.workers is None else self.workers.wait, logprobs)

    def _host_buffer(self, n: int) -> torch.Tensor:
        i = self._next_buffer
        self._next_buffer ^= 1
        buffer = self._host_buffers[i]
        if buffer is None or buffer.numel() < n:
            buffer = self._host_buffers[i] = torch.empty(max(n, 256), dtype=torch.long, pin_memory=True)
        return buffer
