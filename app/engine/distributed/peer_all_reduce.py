"""One-shot all-reduce (and all-gather) through GPU buffers mapped into every rank (CUDA IPC),
for small tensors.

A decode step of an 8B model split over 2 GPUs sums 64 tensors of a few KB; NCCL's ring takes
15-20 µs for each, a third of the step. Here every rank writes its part into each peer's buffer
over NVLink or PCIe (writes are posted: no round trip), then a flag after it, waits for the
peers' flags in its own buffer and sums what they wrote there: one kernel of a few µs.

Layout of each rank's buffer: [flags: MAX_PROGRAMS x world int32][slot 0][slot 1], each slot
holding one region per rank (what that rank sent). Program p of a call uses slot (epoch & 1),
where epoch counts program p's calls. Alternating slots makes reuse safe without a second
barrier: a rank writes a peer's slot s again two calls later, after the call between, which the
peer enters only once it has read slot s (its flag for that call says so).

Every rank sums the copies in rank order, so all ranks hold bit-identical results (their
replicated residual streams must not drift apart). A spinning wait ends when the flags come,
when ``abort()`` is called (a peer died), or after SPIN_LIMIT polls (an orphaned rank).
"""

from __future__ import annotations

import pickle

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from app.engine.kernels.triton._common import gdc_launch_dependents, gdc_wait, pdl_launch

MAX_BYTES = 512 * 1024  # larger sums (prefill) go to NCCL, whose bandwidth wins there
BLOCK_BYTES = 4096  # each program sums this many bytes of the tensor
MAX_PROGRAMS = MAX_BYTES // BLOCK_BYTES
SPIN_LIMIT = 1 << 30  # polls (~1 µs each) before a wait gives up: ~15 minutes, past TIMEOUT


@triton.jit
def _aligned(address, elem):
    """A buffer address as a pointer, 256-byte aligned (lets loads and stores go 16 bytes wide)."""
    return tl.multiple_of(address.to(tl.pointer_type(elem)), 256)


@triton.jit
def _one_shot_kernel(x_ptr, out_ptr, n, addresses_ptr, counters_ptr, abort_ptr, rank,
                     WORLD: tl.constexpr, FLAGS_BYTES: tl.constexpr, SLOT_BYTES: tl.constexpr,
                     SPINS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr, GATHER: tl.constexpr = False):
    """GATHER: out [WORLD, n] receives every rank's x (rank order) instead of their sum."""
    if PDL:  # the next kernel may launch now and stream its weights while this one waits for peers
        gdc_launch_dependents()
        gdc_wait()
    pid = tl.program_id(0)
    elem = x_ptr.dtype.element_ty
    epoch = tl.load(counters_ptr + pid) + 1  # this program's own counter: no other reads it
    tl.store(counters_ptr + pid, epoch)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n

    slot = FLAGS_BYTES + (epoch & 1).to(tl.int64) * WORLD * SLOT_BYTES
    x = tl.load(x_ptr + offs, mask=mask)
    for peer in tl.static_range(WORLD):
        if peer != rank:
            region = tl.load(addresses_ptr + peer) + slot + rank * SLOT_BYTES
            tl.store(_aligned(region, elem) + offs, x, mask=mask)
    tl.debug_barrier()  # every thread's writes are out before the flags say so (release is cumulative)
    for peer in tl.static_range(WORLD):
        if peer != rank:
            flags = tl.load(addresses_ptr + peer).to(tl.pointer_type(tl.int32))
            tl.atomic_xchg(flags + pid * WORLD + rank, epoch, sem="release", scope="sys")

    mine = tl.load(addresses_ptr + rank)
    my_flags = mine.to(tl.pointer_type(tl.int32))
    for peer in tl.static_range(WORLD):
        if peer != rank:
            spins = 0
            seen = tl.atomic_add(my_flags + pid * WORLD + peer, 0, sem="acquire", scope="sys")
            while (seen != epoch) & (spins < SPINS):
                if tl.load(abort_ptr, volatile=True) != 0:
                    spins = SPINS
                spins += 1
                seen = tl.atomic_add(my_flags + pid * WORLD + peer, 0, sem="acquire", scope="sys")
    tl.debug_barrier()

    if GATHER:
        for peer in tl.static_range(WORLD):
            part = x
            if peer != rank:
                region = _aligned(mine + slot + peer * SLOT_BYTES, elem)
                part = tl.load(region + offs, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + peer * n + offs, part, mask=mask)
    else:
        acc = tl.zeros([BLOCK], tl.float32)
        for peer in tl.static_range(WORLD):  # in rank order on every rank: the same sums everywhere
            if peer == rank:
                acc += x.to(tl.float32)
            else:
                region = _aligned(mine + slot + peer * SLOT_BYTES, elem)
                acc += tl.load(region + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
        tl.store(out_ptr + offs, acc.to(elem), mask=mask)


class PeerAllReduce:
    """This rank's buffer, its peers' buffers opened here, and the sum over them."""

    def __init__(self, store: dist.Store, rank: int, world: int, device: torch.device):
        self.rank, self.world = rank, world
        self.flags_bytes = -(-MAX_PROGRAMS * world * 4 // 256) * 256
        self.buffer = torch.zeros(self.flags_bytes + 2 * world * MAX_BYTES, dtype=torch.uint8, device=device)
        handle = b""  # the peers wait for this key: an empty one tells them sharing failed here
        try:
            handle = pickle.dumps(self.buffer.untyped_storage()._share_cuda_())
        finally:
            store.set(f"peer-all-reduce/{rank}", handle)
        self._peers = []  # the peers' storages, opened here: kept while their addresses are used
        addresses = []
        for r in range(world):
            if r == rank:
                addresses.append(self.buffer.data_ptr())
                continue
            handle = store.get(f"peer-all-reduce/{r}")
            if not handle:
                raise RuntimeError(f"rank {r} could not share its buffer")
            # Opened on this rank's own device (the handle names the owner's): the mapping then
            # enables this device's access to the owner's memory, which its kernels need.
            _, *rest = pickle.loads(handle)
            storage = torch.UntypedStorage._new_shared_cuda(device.index, *rest)
            self._peers.append(storage)
            addresses.append(storage.data_ptr())
        self.addresses = torch.tensor(addresses, dtype=torch.int64, device=device)
        self.counters = torch.zeros(MAX_PROGRAMS, dtype=torch.int32, device=device)
        self.abort_flag = torch.zeros(1, dtype=torch.int32, device=device)
        self._abort_stream = torch.cuda.Stream(device)
        self._pdl = pdl_launch(device)

    def fits(self, x: torch.Tensor) -> bool:
        return x.numel() * x.element_size() <= MAX_BYTES and x.is_contiguous() and x.dtype.is_floating_point

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's x."""
        return self._run(x, torch.empty_like(x), gather=False)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's x, stacked in rank order: [world, *x.shape] (the split vocabulary's logits
        each step: one kernel where NCCL's all-gather takes about as long as a layer's kernels)."""
        return self._run(x, torch.empty((self.world, *x.shape), dtype=x.dtype, device=x.device), gather=True)

    def _run(self, x: torch.Tensor, out: torch.Tensor, gather: bool) -> torch.Tensor:
        block = BLOCK_BYTES // x.element_size()
        grid = (triton.cdiv(x.numel(), block),)
        _one_shot_kernel[grid](x, out, x.numel(), self.addresses, self.counters, self.abort_flag, self.rank,
                               WORLD=self.world, FLAGS_BYTES=self.flags_bytes, SLOT_BYTES=MAX_BYTES,
                               SPINS=SPIN_LIMIT, BLOCK=block, GATHER=gather, num_warps=4, **self._pdl)
        return out

    def abort(self) -> None:
        """Ends waits for peers that will never come (from any thread; works while a wait spins)."""
        with torch.cuda.stream(self._abort_stream):
            self.abort_flag.fill_(1)
