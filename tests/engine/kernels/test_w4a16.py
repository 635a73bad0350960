"""W4A16 (AWQ 4-bit weights): the packing against the format's spec, the torch reference, the Triton
kernels and the CUDA GEMV against the reference.

Without a CUDA device the Triton kernels run under Triton's interpreter on CPU tensors (small
shapes); with one, the same tests run on the GPU, plus the @pytest.mark.gpu tests at Llama-3-8B's
shapes and the CUDA library. Errors are norm-wise, ||out - ref|| / ||ref||, on random inputs that
are never zero.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere below

from app.engine.kernels import cuda_library  # noqa: E402
from app.engine.kernels.w4a16_reference import (  # noqa: E402
    AWQ_ORDER, check_shapes, dequantize, pack, pack_int4, unpack, unpack_int4, w4a16_matmul_reference,
)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TOLERANCE = 1e-2
DTYPES = [torch.float16, torch.bfloat16]
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
# The test extra installs Triton on Linux only; CI is Linux.
needs_triton = pytest.mark.skipif(sys.platform != "linux", reason="Triton is installed on Linux only")
LLAMA_8B = [(4096, 4096), (4096, 14336), (4096, 6144), (14336, 4096)]  # (K, N): o, gate/up, qkv, down


def spec_unpack(packed: torch.Tensor) -> torch.Tensor:
    """The format's definition, one nibble at a time: nibble i of word [r, j] is column
    8j + AWQ_ORDER[i] of row r."""
    rows, words = packed.shape
    out = torch.empty(rows, words * 8, dtype=torch.int64)
    for r in range(rows):
        for j in range(words):
            word = int(packed[r, j]) & 0xFFFFFFFF
            for i in range(8):
                out[r, 8 * j + AWQ_ORDER[i]] = (word >> (4 * i)) & 0xF
    return out


def random_awq(k: int, n: int, group: int, seed: int, device: torch.device = DEVICE):
    """(q, z, s, qweight, qzeros, scales): random 4-bit values and zero points, scales of AWQ's
    size (about 0.01 to 0.03, positive)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // group, n), generator=gen)
    s = (torch.rand(k // group, n, generator=gen) * 0.02 + 0.01).half()
    qweight, qzeros, scales = pack(q, z, s)
    return q, z, s, qweight.to(device), qzeros.to(device), scales.to(device)


def nonzero(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random values with |v| >= 0.1, so no term silently drops out."""
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return (t + torch.where(t >= 0, 0.1, -0.1)).to(dtype).to(DEVICE)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and out.dtype == ref.dtype and torch.isfinite(out).all()
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


# --- format and reference ---------------------------------------------------------------------------


def test_one_word_by_hand():
    """Columns 1..8 of one row: nibble i holds column AWQ_ORDER[i], i.e. 1 3 5 7 2 4 6 8 from the
    lowest nibble up, so the word reads 0x86427531 in hex."""
    word = pack_int4(torch.arange(1, 9).view(1, 8) % 16)
    assert word.dtype == torch.int32 and int(word) & 0xFFFFFFFF == 0x86427531
    assert unpack_int4(word).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]


@pytest.mark.parametrize("rows,cols", [(1, 8), (5, 64), (16, 200)])
def test_pack_agrees_with_the_spec(rows, cols):
    values = torch.randint(0, 16, (rows, cols), generator=torch.Generator().manual_seed(rows * cols))
    values[0, :8] = 15  # sign bit of the first word set: packing wraps to int32
    packed = pack_int4(values)
    assert packed.shape == (rows, cols // 8) and packed.dtype == torch.int32
    assert torch.equal(spec_unpack(packed), values)
    assert torch.equal(unpack_int4(packed).long(), values)
    assert torch.equal(pack_int4(unpack_int4(packed)), packed)


def test_unpack_agrees_with_the_spec_on_any_words():
    words = torch.randint(-(2**31), 2**31 - 1, (7, 9), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpack_int4(words).long(), spec_unpack(words))


@pytest.mark.parametrize("group", [32, 64, 128])
def test_dequantize_is_exact(group):
    k, n = 256, 48
    q, z, s, qweight, qzeros, scales = random_awq(k, n, group, seed=group, device=torch.device("cpu"))
    got_q, got_z = unpack(qweight, qzeros)
    assert torch.equal(got_q.long(), q) and torch.equal(got_z.long(), z)
    expected = (q - z.repeat_interleave(group, 0)).double() * s.double().repeat_interleave(group, 0)
    w = dequantize(qweight, qzeros, scales, group)
    assert w.dtype == torch.float32 and torch.equal(w.double(), expected)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float32], ids=str)
def test_reference_matmul(dtype):
    k, n, group = 256, 64, 64
    q, z, s, qweight, qzeros, scales = random_awq(k, n, group, seed=3, device=torch.device("cpu"))
    x = nonzero(2, 3, k, dtype=dtype, seed=4).cpu()
    w = (q - z.repeat_interleave(group, 0)).double() * s.double().repeat_interleave(group, 0)
    y = w4a16_matmul_reference(x, qweight, qzeros, scales, group)
    assert y.shape == (2, 3, n) and y.dtype == dtype
    ref = (x.double() @ w).to(dtype)
    assert rel_error(y, ref) <= (1e-6 if dtype == torch.float32 else 4e-3)


def test_check_shapes():
    _, _, _, qweight, qzeros, scales = random_awq(128, 32, 32, seed=5, device=torch.device("cpu"))
    assert check_shapes(qweight, qzeros, scales, 32) == (128, 32)
    with pytest.raises(ValueError, match="multiple of group_size"):
        check_shapes(qweight, qzeros, scales, 48)
    with pytest.raises(ValueError, match="qzeros must be"):
        check_shapes(qweight, qzeros, scales, 64)
    with pytest.raises(ValueError, match="int32"):
        check_shapes(qweight.float(), qzeros, scales, 32)


# --- Triton ------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_triton_w4a16(dtype, group, m):
    from app.engine.kernels.triton.w4a16 import w4a16_matmul

    k, n = 256, 192  # 192: the second 128-column tile is half empty
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=group + m)
    x = nonzero(m, k, dtype=dtype, seed=m)
    ref = w4a16_matmul_reference(x, qweight, qzeros, scales, group)
    err = rel_error(w4a16_matmul(x, qweight, qzeros, scales, group), ref)
    assert err <= TOLERANCE, f"relative error {err:.2e}"


@needs_triton
@pytest.mark.parametrize("m", [1, 2, 40])
@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_triton_w4a16_split_k(m, split_k):
    """Fixed K slices (the sum of partials) for the GEMV and two GEMM tiles, x with two leading
    dims, and `out`."""
    from app.engine.kernels.triton.w4a16 import launch_plan, w4a16_matmul

    k, n, group, dtype = 384, 64, 32, torch.bfloat16
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=7)
    x = nonzero(m, 1, k, dtype=dtype, seed=8)
    plan = launch_plan(m, n, k, group, DEVICE, split_k)
    assert plan.grid[2] == split_k and plan.gemv == (m == 1)
    out = torch.empty(m, n, dtype=dtype, device=DEVICE)
    y = w4a16_matmul(x, qweight, qzeros, scales, group, out=out, split_k=split_k)
    assert y.shape == (m, 1, n) and y.data_ptr() == out.data_ptr()
    err = rel_error(y, w4a16_matmul_reference(x, qweight, qzeros, scales, group))
    assert err <= TOLERANCE, f"relative error {err:.2e}"


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [3, 40])
def test_triton_w4a16_widened_by_load(dtype, m, monkeypatch):
    """The GEMM's other way to give each word its 8 columns (one load per column)."""
    from app.engine.kernels.triton import w4a16

    monkeypatch.setattr(w4a16, "CONFIGS", {limit: dataclasses.replace(c, widen_by_load=True)
                                           for limit, c in w4a16.CONFIGS.items()})
    k, n, group = 256, 192, 64
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=m)
    x = nonzero(m, k, dtype=dtype, seed=m)
    err = rel_error(w4a16.w4a16_matmul(x, qweight, qzeros, scales, group),
                    w4a16_matmul_reference(x, qweight, qzeros, scales, group))
    assert err <= TOLERANCE, f"relative error {err:.2e}"


@needs_triton
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float32], ids=str)
def test_triton_dequantize_is_the_reference(dtype):
    """The expansion that large batches multiply through cuBLAS: exactly the reference's weight,
    rounded once to the activation dtype (ragged tiles in both dimensions)."""
    from app.engine.kernels.triton.w4a16 import dequantize as triton_dequantize

    k, n, group = 96, 200, 32
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=11)
    ours = triton_dequantize(qweight, qzeros, scales, group, dtype)
    assert ours.shape == (k, n) and ours.dtype == dtype
    assert torch.equal(ours, dequantize(qweight, qzeros, scales, group).to(dtype))


@needs_triton
@pytest.mark.parametrize("m", [1, 40, 300])
def test_the_kernel_choice_by_batch_size(m):
    """Ops.w4a16 on the Triton ops: the GEMV (or the CUDA one) at 1 row, the GEMM at 40, the
    expanded weight through a plain matmul from DEQUANTIZE_ROWS; each against the reference, and
    the same for Ops.w4a16_silu_mul."""
    from app.engine import kernels

    assert 40 < kernels.DEQUANTIZE_ROWS <= 300
    k, n, group, dtype = 128, 64, 64, torch.bfloat16
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=m)
    x = nonzero(m, k, dtype=dtype, seed=m + 1)
    ops = kernels._triton_ops()
    y = ops.w4a16(x, qweight, qzeros, scales, group)
    err = rel_error(y, w4a16_matmul_reference(x, qweight, qzeros, scales, group))
    assert err <= TOLERANCE, f"relative error {err:.2e}"
    gate_up = nonzero(m, 2 * k, dtype=dtype, seed=m + 2)  # SwiGLU's down projection
    y = ops.w4a16_silu_mul(gate_up, qweight, qzeros, scales, group)
    err = rel_error(y, w4a16_matmul_reference(ops.silu_mul(gate_up), qweight, qzeros, scales, group))
    assert err <= TOLERANCE, f"silu-mul: relative error {err:.2e}"


# --- CUDA library --------------------------------------------------------------------------------------


def test_cuda_library_compiles(tmp_path):
    """The CUDA sources build with nvcc for sm_80 and sm_90 (no GPU needed) and export the ABI."""
    nvcc = cuda_library.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: install the CUDA toolkit or set NVCC / CUDA_HOME to test the CUDA build")
    path = cuda_library.build(tmp_path, nvcc=nvcc)
    assert path.parent == tmp_path and path.stat().st_size > 0
    assert cuda_library.build(tmp_path, nvcc=nvcc) == path  # cached by source hash
    lib = ctypes.CDLL(str(path))
    assert lib.lms_w4a16_abi_version() == cuda_library.ABI_VERSION
    lib.lms_w4a16_error_string.restype = ctypes.c_char_p
    assert b"shape" in lib.lms_w4a16_error_string(-1)


def test_cuda_library_reports_why_it_is_off(monkeypatch):
    monkeypatch.setenv("LMSTATION_NO_CUDA_KERNELS", "1")
    cuda_library.library.cache_clear()
    try:
        lib = cuda_library.library()
        assert lib.cdll is None and "LMSTATION_NO_CUDA_KERNELS" in lib.reason
    finally:
        cuda_library.library.cache_clear()


# --- GPU: real shapes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_weights():
    """Llama-3-8B's linear shapes, group size 128, made on the GPU (packing runs there too)."""
    made = {}
    for i, (k, n) in enumerate(LLAMA_8B):
        gen = torch.Generator(device="cuda").manual_seed(i)
        q = torch.randint(0, 16, (k, n), generator=gen, device="cuda")
        z = torch.randint(0, 16, (k // 128, n), generator=gen, device="cuda")
        s = torch.rand(k // 128, n, generator=gen, device="cuda") * 0.02 + 0.01
        made[k, n] = pack(q, z, s)
    return made


def _llama_case(weights, k, n, m, dtype, seed):
    qweight, qzeros, scales = weights[k, n]
    x = (torch.randn(m, k, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)) + 0.1).to(dtype)
    return x, qweight, qzeros, scales, w4a16_matmul_reference(x, qweight, qzeros, scales, 128)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 4, 8, 64])
@pytest.mark.parametrize("k,n", LLAMA_8B)
def test_triton_w4a16_llama_shapes(llama_weights, k, n, m, dtype):
    from app.engine.kernels.triton.w4a16 import w4a16_matmul

    x, qweight, qzeros, scales, ref = _llama_case(llama_weights, k, n, m, dtype, seed=m)
    err = rel_error(w4a16_matmul(x, qweight, qzeros, scales, 128), ref)
    assert err <= TOLERANCE, f"relative error {err:.2e}"


# The CUDA kernel makes each weight in fp16 and sums its products in fp16 over 8-16 rows of K
# before fp32 takes over (measured about 5e-4 here): well inside the 1e-2 every kernel must meet,
# and far below what a misplaced column or group (errors near 1) would give.
CUDA_TOLERANCE = 3e-3


def _cuda_kernel():
    from app.engine.kernels import w4a16_cuda

    if not w4a16_cuda.available():
        pytest.fail(f"CUDA library unavailable on a CUDA machine: {w4a16_cuda.unavailable_reason()}")
    return w4a16_cuda


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 4, 8, 9, 16, 33, 64, 128])
@pytest.mark.parametrize("k,n", LLAMA_8B)
def test_cuda_w4a16_llama_shapes(llama_weights, k, n, m, dtype):
    """The GEMV (up to MAX_M rows) and the tensor-core GEMM (past it) at Llama-3-8B's shapes."""
    w4a16_cuda = _cuda_kernel()
    kernel = w4a16_cuda.w4a16_gemv if m <= w4a16_cuda.MAX_M else w4a16_cuda.w4a16_gemm
    x, qweight, qzeros, scales, ref = _llama_case(llama_weights, k, n, m, dtype, seed=m)
    y = torch.full_like(ref, float("nan"))  # every element must be written
    kernel(x, qweight, qzeros, scales, 128, out=y)
    err = rel_error(y, ref)
    assert err <= CUDA_TOLERANCE, f"relative error {err:.2e}"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,k,n,group", [(1, 14336, 4096, 128), (3, 512, 200, 32), (8, 1024, 4104, 64)])
def test_cuda_w4a16_silu_mul(m, k, n, group, dtype):
    """SwiGLU's down projection from gate | up in one launch: silu(gate) * up @ W."""
    w4a16_cuda = _cuda_kernel()
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=k + n)
    gate_up = nonzero(m, 2 * k, dtype=dtype, seed=m)
    gate, up = gate_up.float().chunk(2, dim=-1)
    ref = w4a16_matmul_reference(torch.nn.functional.silu(gate) * up, qweight, qzeros, scales, group).to(dtype)
    err = rel_error(w4a16_cuda.w4a16_gemv(gate_up, qweight, qzeros, scales, group, silu_mul=True), ref)
    assert err <= CUDA_TOLERANCE, f"relative error {err:.2e}"
    with pytest.raises(ValueError, match="gate | up"):
        w4a16_cuda.w4a16_gemv(gate_up[:, :k], qweight, qzeros, scales, group, silu_mul=True)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("splits", [0, 1, 3, 64])
@pytest.mark.parametrize(
    "m,k,n,group", [(1, 4096, 4096, 128), (3, 512, 200, 32), (8, 1024, 4104, 64), (5, 640, 88, 128)]
)
def test_cuda_w4a16_splits_and_ragged_tiles(m, k, n, group, splits):
    """Fixed K splits (one block per tile, several, more than allowed) and column tiles cut short;
    repeated calls give identical results (the split-K slots are back at zero after each launch)."""
    w4a16_cuda = _cuda_kernel()
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=m + k)
    for dtype in DTYPES:
        x = nonzero(m, k, dtype=dtype, seed=n)
        ref = w4a16_matmul_reference(x, qweight, qzeros, scales, group)
        first = w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, group, splits=splits)
        again = w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, group, splits=splits)
        assert torch.equal(first, again)
        err = rel_error(first, ref)
        assert err <= CUDA_TOLERANCE, f"relative error {err:.2e}"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("splits", [0, 1, 3, 64])
@pytest.mark.parametrize("m,k,n,group", [(20, 512, 200, 32), (70, 1024, 4104, 64), (9, 640, 88, 128)])
@pytest.mark.parametrize("block_rows", [0, 16, 64])
def test_cuda_w4a16_gemm_splits_and_ragged_tiles(m, k, n, group, splits, block_rows):
    """Fixed K splits (none, several, more than there are steps) and block heights, row and column
    tiles cut short, groups of 32 (two a step); repeated calls give identical results (slices
    summed in order)."""
    w4a16_cuda = _cuda_kernel()
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=m + k)
    for dtype in DTYPES:
        x = nonzero(m, k, dtype=dtype, seed=n)
        ref = w4a16_matmul_reference(x, qweight, qzeros, scales, group)
        first = w4a16_cuda.w4a16_gemm(x, qweight, qzeros, scales, group, splits=splits, block_rows=block_rows)
        again = w4a16_cuda.w4a16_gemm(x, qweight, qzeros, scales, group, splits=splits, block_rows=block_rows)
        assert torch.equal(first, again)
        err = rel_error(first, ref)
        assert err <= CUDA_TOLERANCE, f"relative error {err:.2e}"


@gpu
@pytest.mark.gpu
def test_cuda_w4a16_gemm_refuses_shapes_it_does_not_take():
    w4a16_cuda = _cuda_kernel()
    _, _, _, qweight, qzeros, scales = random_awq(96, 64, 32, seed=3)  # K % 64 != 0
    with pytest.raises(ValueError, match="K % 64"):
        w4a16_cuda.w4a16_gemm(nonzero(16, 96, dtype=torch.float16, seed=1), qweight, qzeros, scales, 32)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3])
def test_cuda_w4a16_exact_zero_partials_arrive_and_the_workspace_is_left_zero(m):
    """A slice's partial is its own arrival flag (zero: not yet), so a partial that is exactly
    zero must still arrive: here half the columns have every weight at its zero point (q == z), so
    each of their slices sums to 0.0; with a +0 stored the summing block would wait forever. After
    the calls every slot of the workspace is zero again, ready for the next launch."""
    w4a16_cuda = _cuda_kernel()
    k, n, group = 4096, 1024, 128
    q, z, s, *_ = random_awq(k, n, group, seed=11)
    q[:, ::2] = z.repeat_interleave(group, dim=0)[:, ::2]
    qweight, qzeros, scales = (t.to(DEVICE) for t in pack(q, z, s))
    x = nonzero(m, k, dtype=torch.float16, seed=12)
    ref = w4a16_matmul_reference(x, qweight, qzeros, scales, group)
    assert (ref[:, ::2] == 0).all() and (ref[:, 1::2] != 0).all()
    y = w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, group, splits=16)
    torch.cuda.synchronize()
    assert (y[:, ::2] == 0).all()
    assert rel_error(y, ref) <= CUDA_TOLERANCE
    for workspace in w4a16_cuda._WORKSPACES[(x.device.index, "gemv")]:
        assert not workspace.any(), "the GEMV left split-K slots set"


@gpu
@pytest.mark.gpu
def test_cuda_w4a16_shapes_share_the_workspace():
    """Shapes with few and many column tiles (16 to 112), split, one after another on one
    workspace: each shape finds the slots it uses at zero (none arrives early from another)."""
    w4a16_cuda = _cuda_kernel()
    weights = {n: random_awq(256, n, 64, seed=n)[3:] for n in (4096, 6144, 28672)}
    for i, n in enumerate([4096, 6144, 28672, 4096, 28672, 6144]):
        x = nonzero(1 + i % 2, 256, dtype=torch.bfloat16, seed=i)
        ref = w4a16_matmul_reference(x, *weights[n], 64)
        err = rel_error(w4a16_cuda.w4a16_gemv(x, *weights[n], 64, splits=4), ref)
        assert err <= CUDA_TOLERANCE, f"N = {n}: relative error {err:.2e}"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 48])
def test_cuda_w4a16_in_a_cuda_graph(llama_weights, m):
    w4a16_cuda = _cuda_kernel()
    kernel = w4a16_cuda.w4a16_gemv if m <= w4a16_cuda.MAX_M else w4a16_cuda.w4a16_gemm
    x, qweight, qzeros, scales, ref = _llama_case(llama_weights, 4096, 4096, m, torch.bfloat16, seed=9)
    y = torch.empty_like(ref)
    kernel(x, qweight, qzeros, scales, 128, out=y)  # allocates the workspace
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel(x, qweight, qzeros, scales, 128, out=y)
    y.fill_(float("nan"))
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert rel_error(y, ref) <= CUDA_TOLERANCE


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,k,n,group,splits", [(1, 4096, 6144, 128, 0), (3, 512, 200, 32, 1), (8, 1024, 4104, 64, 5)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_cuda_w4a16_norm_prologue_and_bias(m, k, n, group, splits, dtype, with_residual):
    """RMSNorm(x + residual) * weight staged by the GEMV, + bias after it: as the separate ops
    compute it; x + residual stored whole (every element, by the blocks of the first tile)."""
    from app.engine.kernels import reference

    w4a16_cuda = _cuda_kernel()
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=k + m)
    x, residual = nonzero(m, k, dtype=dtype, seed=1), nonzero(m, k, dtype=dtype, seed=2)
    weight, bias = nonzero(k, dtype=dtype, seed=3), nonzero(n, dtype=dtype, seed=4)
    if with_residual:
        normed, summed = reference.add_rms_norm(x, residual, weight, 1e-5)
        residual_out = torch.full_like(x, float("nan"))
        norm = w4a16_cuda.Norm(weight, 1e-5, residual, residual_out)
    else:
        normed, norm = reference.rms_norm(x, weight, 1e-5), w4a16_cuda.Norm(weight, 1e-5)
    ref = w4a16_matmul_reference(normed, qweight, qzeros, scales, group) + bias
    y = w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, group, splits=splits, norm=norm, bias=bias)
    err = rel_error(y, ref)
    assert err <= CUDA_TOLERANCE, f"relative error {err:.2e}"
    if with_residual:
        assert torch.equal(residual_out, summed)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,k,n,group,splits", [(1, 4096, 4096, 128, 0), (3, 512, 200, 32, 1), (8, 1024, 4104, 64, 5)])
def test_cuda_w4a16_residual_stream_in_fp32(m, k, n, group, splits, dtype):
    """The residual stream kept in fp32: the norm reads it as x (the product in the norm weight's
    dtype), and accumulate adds x @ W + bias into it in place (every K slice's atomic adds), for
    plain x and for silu(gate) * up; a second call adds as much again."""
    w4a16_cuda = _cuda_kernel()
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=k + n + m)
    hidden = nonzero(m, k, dtype=torch.float32, seed=11) * 3
    weight, bias = nonzero(k, dtype=dtype, seed=12), nonzero(n, dtype=dtype, seed=13)
    normed = (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype) * weight
    ref = w4a16_matmul_reference(normed, qweight, qzeros, scales, group) + bias
    y = w4a16_cuda.w4a16_gemv(hidden, qweight, qzeros, scales, group, splits=splits,
                              norm=w4a16_cuda.Norm(weight, 1e-5), bias=bias)
    assert y.dtype == dtype
    err = rel_error(y, ref)
    assert err <= CUDA_TOLERANCE, f"norm of the fp32 stream: relative error {err:.2e}"

    x = nonzero(m, k, dtype=dtype, seed=14)
    gate_up = nonzero(m, 2 * k, dtype=dtype, seed=15)
    gate, up = gate_up.float().chunk(2, dim=-1)
    for operand, silu_mul, acts in ((x, False, x.float()), (gate_up, True, torch.nn.functional.silu(gate) * up)):
        product = w4a16_matmul_reference(acts, qweight, qzeros, scales, group).float() + bias.float()
        stream = nonzero(m, n, dtype=torch.float32, seed=16)
        before = stream.clone()
        out = w4a16_cuda.w4a16_gemv(operand, qweight, qzeros, scales, group, splits=splits, silu_mul=silu_mul,
                                    bias=bias, accumulate=stream)
        assert out.data_ptr() == stream.data_ptr()
        err = rel_error(stream - before, product)
        assert err <= CUDA_TOLERANCE, f"accumulate (silu_mul={silu_mul}): relative error {err:.2e}"
        w4a16_cuda.w4a16_gemv(operand, qweight, qzeros, scales, group, splits=splits, silu_mul=silu_mul,
                              bias=bias, accumulate=stream)
        err = rel_error(stream - before, 2 * product)
        assert err <= CUDA_TOLERANCE, f"accumulate twice (silu_mul={silu_mul}): relative error {err:.2e}"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,heads,kv_heads,head_dim,k,splits", [
    (1, 32, 8, 128, 4096, 0),  # Llama-3-8B
    (1, 9, 3, 64, 576, 0),     # SmolLM2-135M
    (3, 4, 2, 16, 128, 1),     # tiny, several heads a tile, one block a tile
    (2, 2, 1, 256, 256, 3),    # one head a tile
])
def test_cuda_w4a16_rotary_kv_epilogue(m, heads, kv_heads, head_dim, k, splits, dtype):
    """The qkv projection of a decode step finished by the GEMV: q and k rotated, q returned, k and
    v at each row's cache slot; a negative slot (CUDA-graph padding) writes nothing. (bf16 rounds
    three times on the way: the output, + bias, the rotation.)"""
    from app.engine.kernels import reference

    w4a16_cuda = _cuda_kernel()
    n, group = (heads + 2 * kv_heads) * head_dim, 32
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=n)
    x, bias = nonzero(m, k, dtype=dtype, seed=5), nonzero(n, dtype=dtype, seed=6)
    angles = torch.rand(m, head_dim // 2, generator=torch.Generator().manual_seed(7)) * 6.28
    cos, sin = angles.cos().to(dtype).to(DEVICE), angles.sin().to(dtype).to(DEVICE)
    blocks, block_size = 4, 16
    k_cache = torch.full((blocks, block_size, kv_heads, head_dim), 7.0, dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    slots = torch.tensor([5, 40, 63][:m - 1] + [-1 if m > 1 else 17], dtype=torch.int64, device=DEVICE)

    qkv = w4a16_matmul_reference(x, qweight, qzeros, scales, group) + bias
    q, key, value = qkv.view(m, heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
    q_ref, k_ref = reference.apply_rotary_qk(q.float(), key.float(), cos.float(), sin.float())
    rotary = w4a16_cuda.RotaryKV(heads, kv_heads, head_dim, cos, sin, slots, k_cache, v_cache)
    y = w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, group, splits=splits, bias=bias, rotary_kv=rotary)
    assert y.shape == (m, heads * head_dim)
    bound = CUDA_TOLERANCE if dtype == torch.float16 else TOLERANCE
    err = rel_error(y, q_ref.to(dtype).view(m, -1))
    assert err <= bound, f"q: relative error {err:.2e}"
    written = slots >= 0
    for cache, ref in ((k_cache, k_ref.to(dtype)), (v_cache, value)):
        rows = cache.view(-1, kv_heads, head_dim)
        err = rel_error(rows[slots[written]], ref[written])
        assert err <= bound, f"cache: relative error {err:.2e}"
        untouched = torch.ones(rows.shape[0], dtype=torch.bool, device=DEVICE)
        untouched[slots[written]] = False
        assert (rows[untouched] == 7.0).all()


@gpu
@pytest.mark.gpu
def test_cuda_w4a16_fusions_refuse_what_they_do_not_take():
    w4a16_cuda = _cuda_kernel()
    _, _, _, qweight, qzeros, scales = random_awq(256, 320, 32, seed=1)
    x = nonzero(1, 256, dtype=torch.float16, seed=1)
    cache = torch.zeros(4, 1, 40, dtype=torch.float16, device=DEVICE)
    cos = torch.zeros(1, 20, dtype=torch.float16, device=DEVICE)
    slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    rotary = w4a16_cuda.RotaryKV(6, 1, 40, cos, cos, slots, cache, cache)  # 40 does not divide 256
    with pytest.raises(RuntimeError, match="bad fusion"):
        w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, 32, rotary_kv=rotary)
    norm = w4a16_cuda.Norm(torch.ones(256, dtype=torch.float16, device=DEVICE), 1e-5)
    with pytest.raises(RuntimeError, match="bad fusion"):  # a norm and silu-mul together
        w4a16_cuda.w4a16_gemv(torch.cat([x, x], 1), qweight, qzeros, scales, 32, silu_mul=True, norm=norm)
    with pytest.raises(ValueError, match="norm weight"):
        w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, 32, norm=w4a16_cuda.Norm(norm.weight.float(), 1e-5))
    unaligned = torch.cat([x, x], 1).view(-1)[1:257].view(1, 256)  # 2 bytes past a 16-byte boundary
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        w4a16_cuda.w4a16_gemv(unaligned, qweight, qzeros, scales, 32, norm=norm)
    stream = torch.zeros(1, 320, dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="float16 or bfloat16"):  # fp32 x is the stream: for a norm only
        w4a16_cuda.w4a16_gemv(x.float(), qweight, qzeros, scales, 32, accumulate=stream)
    with pytest.raises(ValueError, match="accumulate is the output"):
        w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, 32, rotary_kv=rotary, accumulate=stream)
    with pytest.raises(ValueError, match="accumulate must be"):
        w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, 32, accumulate=stream.half())


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("magnitude", [1e3, 1e5])
def test_cuda_w4a16_gemv_takes_large_activations(m, magnitude):
    """Activations far past what a chunk's fp16 sums of x * (q - z) hold (and, at 1e5, past fp16
    itself): x is staged scaled down by a power of two and the result scaled back."""
    w4a16_cuda = _cuda_kernel()
    k, n, group = 1024, 512, 128
    _, _, _, qweight, qzeros, scales = random_awq(k, n, group, seed=m)
    x = (nonzero(m, k, dtype=torch.float32, seed=m) * magnitude).to(torch.bfloat16)
    ref = w4a16_matmul_reference(x, qweight, qzeros, scales, group)
    err = rel_error(w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, group), ref)
    assert err <= CUDA_TOLERANCE, f"relative error {err:.2e}"
