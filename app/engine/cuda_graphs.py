"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step of a small model is hundreds of tiny kernel launches; replaying them as one
graph removes the launch cost, which is the wall at batch 1. Every input lives in a static
buffer; a step copies the batch in (padding rows write nowhere and read one cached token),
replays the bucket's graph and reads the logits out. Only tensors feed the kernels, so the
batch may change completely from one step to the next.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from app.engine.attention_metadata import AttentionMetadata
from app.engine.config import EngineConfig
from app.engine.kv_cache import KVCache
from app.engine.models.decoder import DecoderLM

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def max_graph_batch(model: DecoderLM, config: EngineConfig) -> int:
    """The largest decode batch replayed from CUDA graphs (0: none). A model split over ranks
    needs NCCL's collectives, which graphs capture (gloo's, on Windows GPUs, they do not)."""
    if model.device.type != "cuda" or not config.cuda_graphs or not model.ops.graph_safe:
        return 0
    if model.shard.world > 1 and not dist.is_nccl_available():
        return 0
    return min(config.max_num_seqs, BUCKETS[-1])


class DecodeGraphs:
    def __init__(self, model: DecoderLM, cache: KVCache, max_batch: int, max_model_len: int):
        self.model, self.cache = model, cache
        self.buckets = [b for b in BUCKETS if b < max_batch] + [max_batch]
        self.max_batch = max_batch
        self.max_blocks = -(-max_model_len // cache.block_size)
        dev = model.device
        # Host staging (pinned): one copy per step moves the whole batch description. Two, used in
        # turn: a step is filled while the device may not yet have copied the previous one's.
        size = 4 * max_batch + max_batch * self.max_blocks
        self._hosts = [torch.zeros(size, dtype=torch.int64).pin_memory() for _ in range(2)]
        self._turn = 0
        self._device = torch.zeros(size, dtype=torch.int64, device=dev)
        d = self._device
        self.ids, self.positions = d[:max_batch], d[max_batch : 2 * max_batch]
        self.slots, self.lens = d[2 * max_batch : 3 * max_batch], d[3 * max_batch : 4 * max_batch]
        self.tables = d[4 * max_batch :].view(max_batch, self.max_blocks)
        self.lens_i32 = torch.ones(max_batch, dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_seqs=bs, num_decodes=bs, query_starts=list(range(bs)), query_lens=[1] * bs,
            context_lens=[self.max_blocks * self.cache.block_size] * bs,  # an upper bound; kernels read the tensors
            slot_mapping=self.slots[:bs], block_tables=self.tables[:bs], decode_context_lens=self.lens[:bs],
            query_start_loc=self.query_start_loc[: bs + 1], context_lens_t=self.lens_i32[:bs], max_query_len=1,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        """Logits; on tensor-parallel ranks that compute none, the hidden states."""
        seq_lens = self.lens[:bs] if self.model.needs_seq_lens else None
        hidden = self.model(self.ids[:bs], self.positions[:bs], self._meta(bs), self.cache.layers, seq_lens)
        return self.model.compute_logits(hidden) if self.model.computes_logits else hidden

    @torch.inference_mode()
    def capture(self) -> None:
        """Largest bucket first, all sharing one memory pool. Warm-up runs first, so kernels
        are compiled and tuned before capture. Tensor-parallel ranks capture together: each
        graph holds the layers' all-reduces, in the same order on every rank. Other threads may
        use the device meanwhile (thread_local), e.g. NCCL's watchdog querying its events."""
        self._fill([0] * self.max_batch, [0] * self.max_batch, [-1] * self.max_batch, [[0]] * self.max_batch,
                   [1] * self.max_batch)
        pool = None
        # Our own capture stream: torch's default one lives on whichever GPU was current when a
        # first graph was captured, and entering it would make that GPU current again.
        stream = torch.cuda.Stream(self.model.device)
        for bs in reversed(self.buckets):
            self._forward(bs)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                logits = self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = (graph, logits)
        torch.cuda.synchronize()

    def _fill(self, ids, positions, slots, tables, lens) -> None:
        """Writes the batch into the staging buffer and moves the used part in one copy. Rows
        past the batch keep stale block ids: valid blocks, and padding reads only one token."""
        n, mb = len(ids), self.max_batch
        staging = self._hosts[self._turn]
        self._turn ^= 1
        host = staging.numpy()
        host[0:n], host[mb : mb + n] = ids, positions
        host[n:mb] = 0  # padding rows read token 0: a stale id could be a placeholder (negative)
        host[2 * mb : 3 * mb] = -1  # padding rows write nowhere
        host[2 * mb : 2 * mb + n] = slots
        host[3 * mb : 4 * mb] = 1  # and attend to a single cached token
        host[3 * mb : 3 * mb + n] = lens
        table_view = host[4 * mb :].reshape(mb, self.max_blocks)
        for row, table in enumerate(tables):
            table_view[row, : len(table)] = table
        used = 4 * mb + n * self.max_blocks
        self._device[:used].copy_(staging[:used], non_blocking=True)
        self.lens_i32.copy_(self.lens)

    def run(self, ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]],
            lens: list[int], resolve: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [len(ids), vocab] for one decode step of len(ids) <= max_batch sequences.
        resolve: turns placeholder ids into tokens on the device (see ModelRunner)."""
        n = len(ids)
        bs = next(b for b in self.buckets if b >= n)
        self._fill(ids, positions, slots, tables, lens)
        if resolve is not None:
            self.ids[:n] = resolve(self.ids[:n])
        graph, logits = self.graphs[bs]
        graph.replay()
        return logits[:n]


