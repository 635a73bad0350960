"""The Triton attention kernels over int8 / int4 KV caches (app/engine/kv_quant.py) against the
torch reference, which dequantizes the same rows: decodes and prefill chunks in one batch, under
Triton's interpreter without a GPU (small shapes), on the GPU with one."""

from __future__ import annotations

import pytest
import torch

from tests.engine.kernels.test_triton_kernels import (  # noqa: F401 (sets TRITON_INTERPRET first)
    DEVICE, check, gpu, make_cache, mixed_meta, new_tokens, nonzero, reference, tk,
)
from app.engine.kv_quant import blocks_of_rows, quantize_rows  # noqa: E402


def quantized(cache: torch.Tensor, bits: int) -> torch.Tensor:
    """A float cache [blocks, block_size, kv_heads, dim] as a quantized one."""
    return blocks_of_rows(quantize_rows(cache, bits))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("kv_heads,dim", [(2, 64), (8, 128), (3, 96)])
def test_the_write_kernel_quantizes_as_the_reference(bits, dtype, kv_heads, dim) -> None:
    """The KV-write kernel's rows equal the reference's byte for byte (same turn, same rounding of
    scale, minimum and integers), padding slots are skipped, other rows are left alone; with an
    outlier channel and a constant row."""
    tokens, block_size, num_blocks = 9, 16, 4
    k = nonzero(tokens, kv_heads, dim, dtype=dtype, seed=31, scale=3.0)
    v = nonzero(tokens, kv_heads, dim, dtype=dtype, seed=32)
    k[:, :, 5] *= 40  # a key channel far larger than the rest
    v[3, 0] = 0.75  # a constant row: its range is 0
    width = dim * bits // 8 + 4
    generator = torch.Generator().manual_seed(33)
    k_cache = torch.randint(0, 256, (num_blocks, block_size, kv_heads, width), dtype=torch.uint8,
                            generator=generator).to(DEVICE)
    v_cache = torch.randint(0, 256, k_cache.shape, dtype=torch.uint8, generator=generator).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:tokens]
    slots[[1, 6]] = -1  # CUDA-graph padding
    slots = slots.to(DEVICE)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    real = slots >= 0
    reference.write_kv(k[real], v[real], ref_k, ref_v, slots[real])
    tk.write_kv(k, v, k_cache, v_cache, slots)
    assert not torch.equal(ref_k, k_cache.new_zeros(k_cache.shape))
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("window", [None, 24], ids=["full", "window24"])
def test_mixed_batch_over_a_quantized_cache(bits, dtype, window) -> None:
    mixed_batch(bits, dtype, window, 64)


@pytest.mark.parametrize("bits,dim", [(8, 16), (4, 32), (4, 256)])
def test_every_packing_of_the_planes(bits, dim) -> None:
    """One plane of bytes (int8, head size 16), two of nibbles in bytes (int4, 32) and eight in
    32-bit units (int4, 256); head size 64 (four planes) is the test above."""
    mixed_batch(bits, torch.bfloat16, None, dim)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 4])
def test_a_real_shape_on_the_gpu(bits) -> None:
    """Llama-3-8B's attention (32 heads over 8, head size 128, blocks of 64) over 4k contexts:
    decodes over 4096, 1 and 3000 keys, prefill chunks of 512 after 1488 and of 1000 after 3096."""
    mixed_batch(bits, torch.bfloat16, None, 128, heads=32, kv_heads=8, block_size=64,
                decode_lens=[4096, 1, 3000], chunks=[(2000, 512), (4096, 1000)])


def mixed_batch(bits: int, dtype: torch.dtype, window: int | None, dim: int, heads: int = 8, kv_heads: int = 2,
                block_size: int = 16, decode_lens: tuple = (17, 1, 50), chunks: tuple = ((70, 6), (33, 33))) -> None:
    decode_lens, chunks = list(decode_lens), list(chunks)
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
    # (random rows: int4's step is 1/15 of a row's range; 0.16 at the real shape)
    exact = reference.paged_attention(q, k, v, k_float, v_float, meta, dim**-0.5, window)
    drift = ((out.float() - exact.float()).norm() / exact.float().norm()).item()
    assert 0 < drift < (0.02 if bits == 8 else 0.2)
