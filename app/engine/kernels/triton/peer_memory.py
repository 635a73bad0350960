"""Device-side helpers for kernels that talk to other GPUs through peer-mapped memory (the
tensor-parallel sums of app/engine/distributed/peer_all_reduce.py): raw addresses as aligned
pointers, and waits on flags that other GPUs write."""

from __future__ import annotations

import triton
import triton.language as tl

SPIN_LIMIT = 1 << 30  # polls (~1 µs each) before a wait gives up: ~15 minutes, past the group's timeout
FUSED_REGION_BYTES = 64 * 1024  # one rank's part of a fused sum: a hidden state of up to 16K fp32


@triton.jit
def aligned_pointer(address, elem):
    """A buffer address (int64) as a pointer to ``elem``, 256-byte aligned (the buffers and their
    regions are), which lets loads and stores go 16 bytes wide."""
    return tl.multiple_of(address.to(tl.pointer_type(elem)), 256)


@triton.jit
def _reached(seen, target, AT_LEAST: tl.constexpr):
    if AT_LEAST:
        return seen >= target
    return seen == target


@triton.jit
def spin_wait(flag_ptr, target, abort_ptr, SPINS: tl.constexpr, AT_LEAST: tl.constexpr):
    """Waits until the flag another GPU writes holds ``target`` (AT_LEAST: at least it), reading it
    with acquire semantics at system scope, so what the writer stored before it is visible. Gives
    up when the abort flag is set (a peer died) or after SPINS polls (an orphaned process)."""
    spins = 0
    seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="sys")
    while (_reached(seen, target, AT_LEAST) == 0) & (spins < SPINS):
        if tl.load(abort_ptr, volatile=True) != 0:
            spins = SPINS
        spins += 1
        seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="sys")
