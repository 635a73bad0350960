"""The Triton attention kernels over int8 / int4 KV caches (app/engine/kv_quant.py) against the
torch reference, which dequantizes the same rows: decodes and prefill chunks in one batch, under
Triton's interpreter without a GPU (small shapes), on the GPU with one."""

from __future__ import annotations

import pytest
import torch

from tests.engine.kernels.test_triton_kernels import (  # noqa: F401 (sets TRITON_INTERPRET first)
    DEVICE, check, make_cache, mixed_meta, new_tokens, nonzero, reference, tk,
)
from app.engine.kv_quant import quantize_rows  # noqa: E402


def quantized(cache: torch.Tensor, bits: int) -> torch.Tensor:
    return quantize_rows(cache, bits)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("window", [None, 24], ids=["full", "window24"])
def test_mixed_batch_over_a_quantized_cache(bits, dtype, window) -> None:
    heads, kv_heads, dim, block_size = 8, 2, 64, 16
    decode_lens, chunks = [17, 1, 50], [(70, 6), (33, 33)]
    k_float, v_float, table = make_cache(decode_lens + [c for c, _ in chunks], kv_heads, dim, block_size, dtype, 70)
    k_cache, v_cache = quantized(k_float, bits), quantized(v_float, bits)
    assert k_cache.dtype == torch.uint8 and k_cache.shape[-1] == dim * bits // 8 + 4
    meta = mixed_meta(decode_lens, chunks, table)
    q = nonzero(sum(meta.query_lens), heads, dim, dtype=dtype, seed=73)
    k, v = new_tokens(k_float, table, meta), new_tokens(v_float, table, meta)
    ref = reference.paged_attention(q, k, v, k_cache, v_cache, meta, dim**-0.5, window)
    out = tk.paged_attention(q, k, v, k_cache, v_cache, meta, dim**-0.5, window)
    check(out, ref, dtype)
    # and what the quantization itself costs, against the float cache: bounded, and int4 more than int8
    exact = reference.paged_attention(q, k, v, k_float, v_float, meta, dim**-0.5, window)
    drift = ((out.float() - exact.float()).norm() / exact.float().norm()).item()
    assert 0 < drift < (0.02 if bits == 8 else 0.15)
