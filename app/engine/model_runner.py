"""Runs one scheduled step: flat batch tensors in, one sampled token per finishing chunk out.

A runner owns the model and its KV cache on one device. It knows nothing about requests or
text; a future tensor-parallel rank runs the same steps on its shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.attention_metadata import AttentionMetadata
from app.engine.cuda_graphs import DecodeGraphs
from app.engine.kv_cache import KVCache
from app.engine.models.decoder import DecoderLM
from app.engine.sampling import sample
from app.engine.scheduler import Batch


@dataclass
class StepOutput:
    sampled: list[int]  # one token per item of the batch that samples, in batch order
    logits: list[torch.Tensor | None]  # the same rows' logits where the request asked for them


class ModelRunner:
    def __init__(self, model: DecoderLM, cache: KVCache, graph_batch: int = 0, max_model_len: int = 0):
        """graph_batch > 0: decode steps of up to that many sequences replay CUDA graphs,
        captured here once the model is bound to its cache."""
        self.model, self.cache = model, cache
        self.device = model.device
        model.bind_cache(cache.layers)
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
        return (
            torch.tensor(ids, dtype=torch.long, device=dev),
            torch.tensor(positions, dtype=torch.long, device=dev),
            meta,
            seq_lens,
        )

    @torch.inference_mode()
    def step(self, batch: Batch) -> StepOutput:
        if self.graphs is not None and batch.num_decodes == len(batch.items) <= self.graphs.max_batch:
            return self._graph_step(batch)
        input_ids, positions, meta, seq_lens = self._prepare(batch)
        hidden = self.model(input_ids, positions, meta, self.cache.layers, seq_lens)
        sampling = [i for i, item in enumerate(batch.items) if item.samples]
        if not sampling:
            return StepOutput([], [])
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
        logits = self.graphs.run(ids, positions, slots, tables, lens)
        return self._sample(logits, [item.seq for item in batch.items])

    @staticmethod
    def _sample(logits: torch.Tensor, seqs: list) -> StepOutput:
        kept = [logits[j].clone() if seq.gen.output_logits else None for j, seq in enumerate(seqs)]
        return StepOutput(sample(logits, seqs), kept)
