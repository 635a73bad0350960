"""Runs one scheduled step: flat batch tensors in, one sampled token per finishing chunk out.

A runner owns the model and its KV cache on one device. It knows nothing about requests or
text; a future tensor-parallel rank runs the same steps on its shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app.engine.attention_metadata import AttentionMetadata
from app.engine.cuda_graphs import DecodeGraphs
from app.engine.kv_cache import KVCache
from app.engine.models.decoder import DecoderLM
from app.engine.sampling import sample
from app.engine.scheduler import Batch


@dataclass
class StepOutput:
    """A launched step's samples (one token per batch item that samples, in batch order). The
    device may still be computing them: tokens() waits for them and reads them back."""

    device_tokens: torch.Tensor | None = None
    logits: list[torch.Tensor | None] = field(default_factory=list)  # where a request asked for them
    host: torch.Tensor | None = None  # pinned copy target, with the event that marks it filled
    ready: torch.cuda.Event | None = None

    def tokens(self) -> list[int]:
        if self.device_tokens is None:
            return []
        if self.ready is None:
            return self.device_tokens.tolist()
        self.ready.synchronize()
        return self.host[: self.device_tokens.shape[0]].tolist()


class ModelRunner:
    def __init__(self, model: DecoderLM, cache: KVCache, graph_batch: int = 0, max_model_len: int = 0):
        """graph_batch > 0: decode steps of up to that many sequences replay CUDA graphs,
        captured here once the model is bound to its cache."""
        self.model, self.cache = model, cache
        self.device = model.device
        model.bind_cache(cache.layers)
        # The tokens the last step sampled, on the device: placeholder ids in the next step's input
        # (see Sequence) resolve to them there, so a step launches before the host reads them.
        self.last_sampled: torch.Tensor | None = None
        self._host_buffers: list[torch.Tensor | None] = [None, None]  # pinned; two steps in flight at most
        self._next_buffer = 0
        self.graphs: DecodeGraphs | None = None
        if graph_batch > 0:
            self.graphs = DecodeGraphs(model, cache, graph_batch, max_model_len)
            self.graphs.capture()

    def _prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor | None]:
        block_size = self.cache.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts, lens, ctx_lens = [], [], []
        for item in batch.items:
            seq, n = item.seq, item.num_tokens
            first = seq.num_computed_tokens
            starts.append(len(ids))
            lens.append(n)
            ctx_lens.append(first + n)
            ids.extend(seq.token_ids[first : first + n])
            span = range(first, first + n)
            positions.extend(span)
            table = seq.block_table
            slots.extend(table[p // block_size] * block_size + p % block_size for p in span)
        width = max(len(item.seq.block_table) for item in batch.items)
        tables = [item.seq.block_table + [0] * (width - len(item.seq.block_table)) for item in batch.items]
        dev = self.device
        meta = AttentionMetadata(
            num_seqs=len(batch.items),
            num_decodes=batch.num_decodes,
            query_starts=starts,
            query_lens=lens,
            context_lens=ctx_lens,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.long, device=dev),
            decode_context_lens=torch.tensor(ctx_lens[: batch.num_decodes], dtype=torch.long, device=dev),
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
        return input_ids, torch.tensor(positions, dtype=torch.long, device=dev), meta, seq_lens

    def _resolve(self, ids: torch.Tensor) -> torch.Tensor:
        """Placeholder ids -> the tokens the previous step sampled (device to device)."""
        return torch.where(ids < 0, self.last_sampled[(-ids - 1).clamp(min=0)], ids)

    @torch.inference_mode()
    def step(self, batch: Batch) -> StepOutput:
        if self.graphs is not None and batch.num_decodes == len(batch.items) <= self.graphs.max_batch:
            return self._graph_step(batch)
        input_ids, positions, meta, seq_lens = self._prepare(batch)
        hidden = self.model(input_ids, positions, meta, self.cache.layers, seq_lens)
        sampling = [i for i, item in enumerate(batch.items) if item.samples]
        if not sampling:
            return StepOutput()
        last_rows = torch.tensor(
            [meta.query_starts[i] + meta.query_lens[i] - 1 for i in sampling], device=self.device
        )
        logits = self.model.compute_logits(hidden[last_rows])
        return self._sample(logits, [batch.items[i].seq for i in sampling])

    def _graph_step(self, batch: Batch) -> StepOutput:
        """A decode-only step through the captured graphs."""
        block_size = self.cache.block_size
        ids, positions, slots, tables, lens = [], [], [], [], []
        for item in batch.items:
            seq = item.seq
            pos = seq.num_computed_tokens
            ids.append(seq.token_ids[pos])
            positions.append(pos)
            slots.append(seq.block_table[pos // block_size] * block_size + pos % block_size)
            tables.append(seq.block_table)
            lens.append(pos + 1)
        logits = self.graphs.run(ids, positions, slots, tables, lens, self._resolve if min(ids) < 0 else None)
        return self._sample(logits, [item.seq for item in batch.items])

    def _sample(self, logits: torch.Tensor, seqs: list) -> StepOutput:
        """Samples on the device and starts copying the tokens back; returns without waiting."""
        kept = [logits[j].clone() if seq.gen.output_logits else None for j, seq in enumerate(seqs)]
        tokens = sample(logits, seqs, self.last_sampled, self.model.ops.sample_race)
        self.last_sampled = tokens
        if tokens.device.type != "cuda":
            return StepOutput(tokens, kept)
        host = self._host_buffer(tokens.shape[0])
        host[: tokens.shape[0]].copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return StepOutput(tokens, kept, host, ready)

    def _host_buffer(self, n: int) -> torch.Tensor:
        i = self._next_buffer
        self._next_buffer ^= 1
        buffer = self._host_buffers[i]
        if buffer is None or buffer.numel() < n:
            buffer = self._host_buffers[i] = torch.empty(max(n, 256), dtype=torch.long, pin_memory=True)
        return buffer
