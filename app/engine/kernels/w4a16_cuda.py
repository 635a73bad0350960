"""Torch front end of the CUDA W4A16 kernels (csrc/w4a16): the GEMV for decode batches of
1..MAX_M rows, the tensor-core GEMM for larger ones. The library is built or loaded by
:mod:`app.engine.kernels.cuda_library`; :func:`available` says whether it is there and
:func:`unavailable_reason` why not.

Each kernel needs a workspace (split-K partials; the GEMV's must start zero-filled: a zero slot
is a partial not yet arrived), one per kernel and device here, shared by its calls: calls must
come from one stream at a time, and the first call of a shape should run outside CUDA-graph
capture (a warm-up step), so that a larger workspace is not allocated inside a graph."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from app.engine.kernels import cuda_library
from app.engine.kernels.w4a16_reference import check_shapes

__all__ = ["MAX_M", "TILE_COLUMNS", "Norm", "RotaryKV", "available", "gemm_takes", "unavailable_reason", "w4a16_gemm",
           "w4a16_gemv", "workspace_bytes"]

MAX_M = 8  # LMS_W4A16_MAX_M: the GEMV's rows; the GEMM takes more
GEMM_K_STEP = 64  # the GEMM's rows of K a step: K must be a multiple
TILE_COLUMNS = 256  # the GEMV's output columns a block finishes: RotaryKV's head_dim must divide it
_DTYPE_FLAGS = {torch.float16: 0, torch.bfloat16: 1}
DTYPES = tuple(_DTYPE_FLAGS)  # the activations it takes
# Workspaces per (device, kernel), zero-filled at birth (the GEMV leaves its slots at zero; the
# GEMM's partials must never land on them, hence one each). A larger shape adds a larger one; the
# smaller ones stay allocated, because a captured CUDA graph may still point at them.
_WORKSPACES: dict[tuple[int, str], list[torch.Tensor]] = {}


def available() -> bool:
    return cuda_library.library().cdll is not None


def unavailable_reason() -> str:
    return cuda_library.library().reason


def _lib() -> ctypes.CDLL:
    lib = cuda_library.library()
    if lib.cdll is None:
        raise RuntimeError(f"the CUDA W4A16 kernel is unavailable: {lib.reason}")
    return lib.cdll


def _check(lib: ctypes.CDLL, rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what}: {lib.lms_w4a16_error_string(rc).decode()} (code {rc})")


@dataclass(frozen=True)
class Norm:
    """The RMSNorm before a projection, done by the GEMV as it stages x: the product takes
    RMSNorm(x + residual) * weight (rounded as the separate ops round), and x + residual goes to
    residual_out. Without a residual, RMSNorm(x) * weight."""

    weight: torch.Tensor  # [K], x's dtype
    eps: float
    residual: torch.Tensor | None = None  # [M, K]
    residual_out: torch.Tensor | None = None  # [M, K], written whole


@dataclass(frozen=True)
class RotaryKV:
    """The qkv projection of a decode step, finished by the GEMV: q and k heads rotated ("rotate
    half" layout) by each row's cos/sin, q returned, k and v stored at each row's cache slot."""

    q_heads: int
    kv_heads: int
    head_dim: int  # even, divides TILE_COLUMNS
    cos: torch.Tensor  # [M, head_dim // 2], x's dtype
    sin: torch.Tensor
    slots: torch.Tensor  # [M] int64; a negative slot writes nothing
    k_cache: torch.Tensor  # [..., kv_heads, head_dim] contiguous rows of x's dtype
    v_cache: torch.Tensor


class _Fusion(ctypes.Structure):
    """lms_w4a16_fusion (w4a16.h)."""

    _fields_ = [("norm_weight", ctypes.c_void_p), ("residual", ctypes.c_void_p), ("residual_out", ctypes.c_void_p),
                ("eps", ctypes.c_float), ("bias", ctypes.c_void_p), ("q_heads", ctypes.c_int),
                ("kv_heads", ctypes.c_int), ("head_dim", ctypes.c_int), ("cos", ctypes.c_void_p),
                ("sin", ctypes.c_void_p), ("slots", ctypes.c_void_p), ("k_cache", ctypes.c_void_p),
                ("v_cache", ctypes.c_void_p), ("x_f32", ctypes.c_int), ("accumulate", ctypes.c_void_p)]


def _fusion(x: torch.Tensor, dtype: torch.dtype, m: int, n: int, k: int, norm: Norm | None,
            bias: torch.Tensor | None, rotary_kv: RotaryKV | None, accumulate: torch.Tensor | None) -> _Fusion | None:
    """The C struct for a call's fusions, after checking the tensors' dtype, device and layout (the
    library checks the shapes it is told and the alignments). dtype: the product's (x's, or the
    norm weight's where x is the fp32 residual stream)."""
    if norm is None and bias is None and rotary_kv is None and accumulate is None:
        return None

    def ptr(t: torch.Tensor | None, what: str, numel: int | None = None, dtype: torch.dtype = dtype) -> int | None:
        if t is None:
            return None
        if t.dtype != dtype or t.device != x.device or not t.is_contiguous() or (numel is not None and t.numel() != numel):
            size = "" if numel is None else f" of {numel} values"
            raise ValueError(f"{what} must be a contiguous {dtype} tensor{size} on {x.device}")
        return t.data_ptr()

    f = _Fusion()
    if norm is not None:
        if (norm.residual is None) != (norm.residual_out is None):
            raise ValueError("a norm's residual and residual_out come together")
        f.norm_weight, f.eps = ptr(norm.weight, "the norm weight", k), norm.eps
        f.residual, f.residual_out = ptr(norm.residual, "residual", m * k), ptr(norm.residual_out, "residual_out", m * k)
    f.x_f32 = int(x.dtype == torch.float32)
    f.accumulate = ptr(accumulate, "accumulate", m * n, torch.float32)
    f.bias = ptr(bias, "bias", n)
    if rotary_kv is not None:
        r = rotary_kv
        f.q_heads, f.kv_heads, f.head_dim = r.q_heads, r.kv_heads, r.head_dim
        f.cos, f.sin = ptr(r.cos, "cos", m * (r.head_dim // 2)), ptr(r.sin, "sin", m * (r.head_dim // 2))
        f.slots = ptr(r.slots, "slots", m, torch.int64)
        if r.k_cache.shape[-2:] != (r.kv_heads, r.head_dim) or r.v_cache.shape != r.k_cache.shape:
            raise ValueError(f"the caches must end in ({r.kv_heads}, {r.head_dim}) kv heads x head_dim")
        f.k_cache, f.v_cache = ptr(r.k_cache, "k_cache"), ptr(r.v_cache, "v_cache")
    return f


def workspace_bytes(m: int, n: int, k: int, group_size: int, splits: int = 0, *, gemm_block_rows: int | None = None
                    ) -> int:
    """Workspace the GEMV (or, given gemm_block_rows, the GEMM) needs for this shape on the current
    CUDA device."""
    lib = _lib()
    out = ctypes.c_int64(0)
    if gemm_block_rows is None:
        rc = lib.lms_w4a16_workspace_bytes(m, n, k, group_size, splits, ctypes.byref(out))
    else:
        rc = lib.lms_w4a16_gemm_workspace_bytes(m, n, k, group_size, splits, gemm_block_rows, ctypes.byref(out))
    _check(lib, rc, "workspace_bytes")
    return out.value


def _workspace(device: torch.device, nbytes: int, kernel: str) -> torch.Tensor:
    held = _WORKSPACES.setdefault((device.index, kernel), [])
    if not held or held[-1].numel() < nbytes:
        held.append(torch.zeros(max(nbytes, 1 << 20), dtype=torch.uint8, device=device))
    return held[-1]


def _checked(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
             gate_up: bool = False, dtype: torch.dtype | None = None) -> tuple[int, int, torch.Tensor]:
    """(K, N, x as contiguous rows) after checking the operands; with gate_up, x is [..., 2K].
    dtype: the product's, where it is not x's (x the fp32 residual stream)."""
    k, n = check_shapes(qweight, qzeros, scales, group_size)
    if x.shape[-1] != (2 * k if gate_up else k):
        raise ValueError(f"x has {x.shape[-1]} features, the weight {k}" + (" (x is gate | up)" if gate_up else ""))
    if (dtype or x.dtype) not in _DTYPE_FLAGS or scales.dtype != torch.float16:
        raise ValueError(f"x must be float16 or bfloat16 (float32 only with a norm and no residual) and scales "
                         f"float16, got {x.dtype} and {scales.dtype}")
    tensors = (qweight, qzeros, scales)
    if x.device.type != "cuda" or any(t.device != x.device for t in tensors):
        raise ValueError("x, qweight, qzeros and scales must be on one CUDA device")
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("qweight, qzeros and scales must be contiguous")
    return k, n, x.reshape(-1, x.shape[-1]).contiguous()


def _output(x2: torch.Tensor, n: int, out: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = dtype or x2.dtype
    y = torch.empty((x2.shape[0], n), dtype=dtype, device=x2.device) if out is None else out.view(x2.shape[0], n)
    if not y.is_contiguous() or y.dtype != dtype:
        raise ValueError(f"out must be contiguous and of the product's dtype, {dtype}")
    return y


def w4a16_gemv(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
    *, out: torch.Tensor | None = None, splits: int = 0, silu_mul: bool = False, norm: Norm | None = None,
    bias: torch.Tensor | None = None, rotary_kv: RotaryKV | None = None, accumulate: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W for x [..., K] with at most MAX_M rows (fp16 or bf16, on a CUDA device) and an
    AWQ weight (qweight int32 [K, N // 8], qzeros int32 [K // G, N // 8], scales fp16 [K // G, N],
    contiguous, on x's device). Returns [..., N] in x's dtype, queued on the current stream;
    `out` (contiguous) is written when given. splits: K slices per column tile, 0 = automatic.
    silu_mul: x is [..., 2K], gate | up, and the product takes silu(gate) * up (SwiGLU's down
    projection, without a separate activation kernel). The fusions of a decode step (see Norm,
    RotaryKV): norm before the product, + bias after it; with rotary_kv the result is q,
    [..., q_heads * head_dim], and k and v go to the cache.

    The residual stream kept in fp32 (one device's decode step): with a norm (and no residual),
    x may be fp32, the hidden state itself, and the product runs in the norm weight's dtype; with
    accumulate (fp32 [..., N], not with rotary_kv) the product and bias are added to it in place
    by every K slice's atomic adds (no split-K hand-over; the last bits vary from run to run), and
    accumulate is returned."""
    stream_x = x.dtype == torch.float32 and norm is not None and norm.residual is None
    dtype = norm.weight.dtype if stream_x else x.dtype
    k, n, x2 = _checked(x, qweight, qzeros, scales, group_size, gate_up=silu_mul, dtype=dtype)
    m = x2.shape[0]
    if not 1 <= m <= MAX_M:
        raise ValueError(f"the CUDA W4A16 GEMV takes 1..{MAX_M} rows, got {m}")
    if accumulate is not None and (rotary_kv is not None or out is not None):
        raise ValueError("accumulate is the output: it takes neither rotary_kv nor out")
    fusion = _fusion(x2, dtype, m, n, k, norm, bias, rotary_kv, accumulate)
    n_out = n if rotary_kv is None else rotary_kv.q_heads * rotary_kv.head_dim
    y = accumulate.view(m, n) if accumulate is not None else _output(x2, n_out, out, dtype)
    lib = _lib()
    with torch.cuda.device(x.device):
        ws = _workspace(x.device, workspace_bytes(m, n, k, group_size, splits), "gemv")
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = lib.lms_w4a16_gemv(
            x2.data_ptr(), qweight.data_ptr(), qzeros.data_ptr(), scales.data_ptr(), y.data_ptr(),
            m, n, k, group_size, _DTYPE_FLAGS[dtype], int(silu_mul),
            None if fusion is None else ctypes.byref(fusion), ws.data_ptr(), ws.numel(), splits, stream,
        )
    _check(lib, rc, "lms_w4a16_gemv")
    return y.view(*x.shape[:-1], n_out)


def gemm_takes(k: int, group_size: int) -> bool:
    """Whether the tensor-core GEMM takes a weight of K rows and this group size."""
    return k % GEMM_K_STEP == 0 and group_size % 32 == 0


def w4a16_gemm(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
    *, out: torch.Tensor | None = None, splits: int = 0, block_rows: int = 0,
) -> torch.Tensor:
    """y = x @ W on tensor cores, for batches past the GEMV's (any number of rows; the operands as
    for w4a16_gemv; K % 64 == 0 and group_size % 32 == 0, see gemm_takes). splits: K slices,
    block_rows: rows of x a block takes (16, 32 or 64); 0 = automatic, for both. Ordered on one
    stream with the other calls (they share the workspace)."""
    k, n, x2 = _checked(x, qweight, qzeros, scales, group_size)
    if not gemm_takes(k, group_size):
        raise ValueError(f"the CUDA W4A16 GEMM needs K % {GEMM_K_STEP} == 0 and group_size % 32 == 0, "
                         f"got K {k}, group_size {group_size}")
    m = x2.shape[0]
    y = _output(x2, n, out)
    if m == 0:
        return y.view(*x.shape[:-1], n)
    lib = _lib()
    with torch.cuda.device(x.device):
        ws = _workspace(x.device, workspace_bytes(m, n, k, group_size, splits, gemm_block_rows=block_rows), "gemm")
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = lib.lms_w4a16_gemm(
            x2.data_ptr(), qweight.data_ptr(), qzeros.data_ptr(), scales.data_ptr(), y.data_ptr(),
            m, n, k, group_size, _DTYPE_FLAGS[x.dtype], ws.data_ptr(), ws.numel(), splits, block_rows, stream,
        )
    _check(lib, rc, "lms_w4a16_gemm")
    return y.view(*x.shape[:-1], n)
