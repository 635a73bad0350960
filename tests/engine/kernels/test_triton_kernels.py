"""Triton kernels against the torch reference ops (app/engine/kernels/reference.py).

Without a CUDA device the kernels run under Triton's interpreter on CPU tensors (slow: small
shapes); with one, the same tests run on the GPU, plus the larger @pytest.mark.gpu shapes.
Errors are norm-wise, ||out - ref|| / ||ref||, on random inputs that are never zero.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere below

pytest.importorskip("triton")

from app.engine.kernels import reference  # noqa: E402
from app.engine.kernels import triton as tk  # noqa: E402

if not tk.available():
    pytest.skip("triton cannot run here (no CUDA device, interpreter off)", allow_module_level=True)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-4}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def nonzero(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Random values with |v| >= 0.1 (times scale), so no term silently drops out."""
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return ((t + torch.where(t >= 0, 0.1, -0.1)) * scale).to(dtype).to(DEVICE)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and torch.isfinite(out).all()
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == ref.dtype
    err = rel_error(out, ref)
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e} > {TOLERANCE[dtype]:.0e}"


# --- norms, rotary, activation, cache writes -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [64, 80])
def test_rms_norm(dtype, hidden):
    x = nonzero(7, hidden, dtype=dtype, seed=1)
    w = nonzero(hidden, dtype=dtype, seed=2)
    check(tk.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_per_head_on_a_qkv_view(dtype):
    """Qwen3's q/k norm: [T, heads, head_dim] views of the fused qkv output, normalised per head."""
    tokens, heads, kv_heads, dim = 5, 4, 2, 32
    qkv = nonzero(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, seed=3)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    w = nonzero(dim, dtype=dtype, seed=4)
    assert not q.is_contiguous()
    check(tk.rms_norm(q, w, 1e-6), reference.rms_norm(q, w, 1e-6), dtype)
    check(tk.rms_norm(k, w, 1e-6), reference.rms_norm(k, w, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_rms_norm(dtype):
    x = nonzero(9, 64, dtype=dtype, seed=5)
    res = nonzero(9, 64, dtype=dtype, seed=6, scale=3.0)
    w = nonzero(64, dtype=dtype, seed=7)
    out, new_res = tk.add_rms_norm(x, res, w, 1e-5)
    ref_out, ref_res = reference.add_rms_norm(x, res, w, 1e-5)
    check(out, ref_out, dtype)
    check(new_res, ref_res, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [32, 64])
def test_rotary_on_qkv_views(dtype, dim):
    tokens, heads, kv_heads = 6, 4, 2
    qkv = nonzero(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, seed=8)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    angles = torch.rand(tokens, dim // 2, generator=torch.Generator().manual_seed(9)) * 6.0
    cos, sin = angles.cos().to(dtype).to(DEVICE), angles.sin().to(dtype).to(DEVICE)
    ref_q, ref_k = reference.apply_rotary(q, cos, sin), reference.apply_rotary(k, cos, sin)
    check(tk.apply_rotary(q, cos, sin), ref_q, dtype)
    out_q, out_k = tk.apply_rotary_qk(q, k, cos, sin)
    check(out_q, ref_q, dtype)
    check(out_k, ref_k, dtype)
    before = qkv.clone()
    tk.apply_rotary_qk(q, k, cos, sin, inplace=True)  # rotates inside qkv, v untouched
    check(q, ref_q, dtype)
    check(k, ref_k, dtype)
    assert torch.equal(qkv[:, (heads + kv_heads) * dim :], before[:, (heads + kv_heads) * dim :])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [48, 64])
def test_silu_mul(dtype, inter):
    gate_up = nonzero(5, 2 * inter, dtype=dtype, seed=10, scale=2.0)
    check(tk.silu_mul(gate_up), reference.silu_mul(gate_up), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [16, 64])
def test_write_kv_skips_padding(dtype, block_size):
    tokens, kv_heads, dim, num_blocks = 7, 2, 32, 4
    qkv = nonzero(tokens, 4 * kv_heads * dim, dtype=dtype, seed=11)
    k = qkv[:, 2 * kv_heads * dim : 3 * kv_heads * dim].view(tokens, kv_heads, dim)
    v = qkv[:, 3 * kv_heads * dim :].view(tokens, kv_heads, dim)
    perm = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(12))
    slots = perm[:tokens].clone()
    slots[[2, 5]] = -1  # CUDA-graph padding
    slots = slots.to(DEVICE)
    k_cache = nonzero(num_blocks, block_size, kv_heads, dim, dtype=dtype, seed=13)
    v_cache = nonzero(num_blocks, block_size, kv_heads, dim, dtype=dtype, seed=14)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    real = slots >= 0
    reference.write_kv(k[real], v[real], ref_k, ref_v, slots[real])
    tk.write_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


# --- larger shapes, GPU only -----------------------------------------------------------------------


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norms_large(dtype):
    x = nonzero(333, 8192, dtype=dtype, seed=60)
    res = nonzero(333, 8192, dtype=dtype, seed=61)
    w = nonzero(8192, dtype=dtype, seed=62)
    out, new_res = tk.add_rms_norm(x, res, w, 1e-6)
    ref_out, ref_res = reference.add_rms_norm(x, res, w, 1e-6)
    check(out, ref_out, dtype)
    check(new_res, ref_res, dtype)
    qk = nonzero(333, 40, 128, dtype=dtype, seed=63)
    check(tk.rms_norm(qk, w[:128], 1e-6), reference.rms_norm(qk, w[:128], 1e-6), dtype)
