"""Torch front end of the CUDA W4A16 kernels (csrc/w4a16): the GEMV for decode batches of
1..MAX_M rows, the tensor-core GEMM for larger ones. The library is built or loaded by
:mod:`app.engine.kernels.cuda_library`; :func:`available` says whether it is there and
:func:`unavailable_reason` why not.

Each kernel needs a workspace (split-K partials; the GEMV's also holds counters and must start
zero-filled), one per kernel and device here, shared by its calls: calls must come from one
stream at a time, and the first call of a shape should run outside CUDA-graph capture (a warm-up
step), so that a larger workspace is not allocated inside a graph."""

from __future__ import annotations

import ctypes

import torch

from app.engine.kernels import cuda_library
from app.engine.kernels.w4a16_reference import check_shapes

__all__ = ["MAX_M", "available", "gemm_takes", "unavailable_reason", "w4a16_gemm", "w4a16_gemv", "workspace_bytes"]

MAX_M = 8  # LMS_W4A16_MAX_M: the GEMV's rows; the GEMM takes more
GEMM_K_STEP = 64  # the GEMM's rows of K a step: K must be a multiple
_DTYPE_FLAGS = {torch.float16: 0, torch.bfloat16: 1}
DTYPES = tuple(_DTYPE_FLAGS)  # the activations it takes
# Workspaces per (device, kernel), zero-filled at birth (the GEMV leaves its counters at zero; the
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
             gate_up: bool = False) -> tuple[int, int, torch.Tensor]:
    """(K, N, x as contiguous rows) after checking the operands; with gate_up, x is [..., 2K]."""
    k, n = check_shapes(qweight, qzeros, scales, group_size)
    if x.shape[-1] != (2 * k if gate_up else k):
        raise ValueError(f"x has {x.shape[-1]} features, the weight {k}" + (" (x is gate | up)" if gate_up else ""))
    if x.dtype not in _DTYPE_FLAGS or scales.dtype != torch.float16:
        raise ValueError(f"x must be float16 or bfloat16 and scales float16, got {x.dtype} and {scales.dtype}")
    tensors = (qweight, qzeros, scales)
    if x.device.type != "cuda" or any(t.device != x.device for t in tensors):
        raise ValueError("x, qweight, qzeros and scales must be on one CUDA device")
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("qweight, qzeros and scales must be contiguous")
    return k, n, x.reshape(-1, x.shape[-1]).contiguous()


def _output(x2: torch.Tensor, n: int, out: torch.Tensor | None) -> torch.Tensor:
    y = torch.empty((x2.shape[0], n), dtype=x2.dtype, device=x2.device) if out is None else out.view(x2.shape[0], n)
    if not y.is_contiguous() or y.dtype != x2.dtype:
        raise ValueError("out must be contiguous and of x's dtype")
    return y


def w4a16_gemv(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
    *, out: torch.Tensor | None = None, splits: int = 0, silu_mul: bool = False,
) -> torch.Tensor:
    """y = x @ W for x [..., K] with at most MAX_M rows (fp16 or bf16, on a CUDA device) and an
    AWQ weight (qweight int32 [K, N // 8], qzeros int32 [K // G, N // 8], scales fp16 [K // G, N],
    contiguous, on x's device). Returns [..., N] in x's dtype, queued on the current stream;
    `out` (contiguous) is written when given. splits: K slices per column tile, 0 = automatic.
    silu_mul: x is [..., 2K], gate | up, and the product takes silu(gate) * up (SwiGLU's down
    projection, without a separate activation kernel)."""
    k, n, x2 = _checked(x, qweight, qzeros, scales, group_size, gate_up=silu_mul)
    m = x2.shape[0]
    if not 1 <= m <= MAX_M:
        raise ValueError(f"the CUDA W4A16 GEMV takes 1..{MAX_M} rows, got {m}")
    y = _output(x2, n, out)
    lib = _lib()
    with torch.cuda.device(x.device):
        ws = _workspace(x.device, workspace_bytes(m, n, k, group_size, splits), "gemv")
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = lib.lms_w4a16_gemv(
            x2.data_ptr(), qweight.data_ptr(), qzeros.data_ptr(), scales.data_ptr(), y.data_ptr(),
            m, n, k, group_size, _DTYPE_FLAGS[x.dtype], int(silu_mul), ws.data_ptr(), ws.numel(), splits, stream,
        )
    _check(lib, rc, "lms_w4a16_gemv")
    return y.view(*x.shape[:-1], n)


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
