"""Triton kernels for the GPU path (also run on CPU tensors under TRITON_INTERPRET=1, for tests).

Each module holds one idea; all take bf16, fp16 or fp32 inputs, compute in fp32 and never
synchronise with the host. `available()` says whether they can run here. Import the kernels only
after checking it (importing needs triton).
"""

from __future__ import annotations

import importlib.util
import os

import torch


def available() -> bool:
    """Triton is importable and there is a CUDA device to run on (or the interpreter is on)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    return torch.cuda.is_available()


if importlib.util.find_spec("triton") is not None:
    from app.engine.kernels.triton.activation import silu_mul
    from app.engine.kernels.triton.decode_attention import paged_decode_attention
    from app.engine.kernels.triton.kv_cache import write_kv
    from app.engine.kernels.triton.norm import add_rms_norm, rms_norm
    from app.engine.kernels.triton.prefill_attention import paged_prefill_attention
    from app.engine.kernels.triton.rotary import apply_rotary, apply_rotary_qk
    from app.engine.kernels.triton.sampling import race as sample_race

    def paged_attention(q, k, v, k_cache, v_cache, meta, scale, sliding_window=None):
        """Ops.paged_attention on the Triton kernels: the decodes (first num_decodes rows, one token
        each) through the split-K decode kernel, the prefill chunks through the prefill kernel.
        Needs meta.query_start_loc and meta.context_lens_t (device tensors)."""
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            paged_decode_attention(
                q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.context_lens_t[:nd], scale,
                sliding_window, max_context_len=max(meta.context_lens[:nd]), out=out[:nd],
            )
        if meta.num_seqs > nd:
            paged_prefill_attention(
                q, k_cache, v_cache, meta.block_tables[nd:], meta.query_start_loc[nd:],
                meta.context_lens_t[nd:], max(meta.query_lens[nd:]), scale, sliding_window, out=out,
                k_new=k, v_new=v,
            )
        return out


__all__ = [
    "available", "rms_norm", "add_rms_norm", "apply_rotary", "apply_rotary_qk", "silu_mul", "write_kv",
    "paged_decode_attention", "paged_prefill_attention", "paged_attention", "sample_race",
]
