"""Weight-streaming CPU linear (``y = x @ W.T``) for small-batch decode.

At batch 1..16 a linear layer on CPU is bound by reading the weight from memory.
``csrc/cpu/gemv.c`` streams a weight packed once at load time into 32-row tiles
at close to DRAM bandwidth (AVX-512 BF16 / AVX2 / portable C, picked at run
time) and runs inside torch's own OpenMP pool, so no second thread pool competes
with torch's for the same cores (without OpenMP entry points, e.g. on Windows,
it runs on the calling thread). Past batch ~16 the kernel is compute-bound and
measured on par with oneDNN's GEMM (-5% to +20% time up to 2048 rows), so the
one packed copy also serves prefill.

The library is compiled from source with the system C compiler (``CC``, else
cc/gcc/clang) on first use into the user cache, keyed by a hash of source and
flags. ``LMSTATION_CPU_GEMV_LIB`` points at a prebuilt one instead (see
``csrc/cpu/Makefile``); ``LMSTATION_NO_CPU_GEMV=1`` turns it off. Without it
(no compiler, a failed build, or dtypes other than bf16/fp32) linear falls back
to oneDNN's packed linear, else plain ``F.linear``.

Usage: ``packed = pack_weight(w)`` once (drop ``w`` afterwards: the packed form is
the only copy), then ``linear(x, packed)``. Inference only: no autograd.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["PackedWeight", "available", "backend", "linear", "pack_weight", "unavailable_reason"]

TILE = 32  # output rows per packed tile; must match TILE in gemv.c
_SOURCE = Path(__file__).resolve().parents[3] / "csrc" / "cpu" / "gemv.c"
_CFLAGS = ["-O3", "-std=c11", "-fvisibility=hidden", "-shared"] + ([] if os.name == "nt" else ["-fPIC"])
_ISA_NAMES = {0: "portable", 1: "avx2", 2: "avx512bf16"}
_KERNEL_DTYPES = (torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class _Library:
    """The loaded C library, or why there is none (``cdll`` is None)."""

    cdll: ctypes.CDLL | None
    reason: str = ""
    isa: str = ""


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A weight prepared for :func:`linear`; holds the only copy of it.

    ``kind`` is ``"gemv"`` (tiled layout of gemv.c), ``"onednn"`` (oneDNN-packed
    tensor) or ``"plain"`` (the ``[out, in]`` weight itself).
    """

    data: torch.Tensor
    out_features: int
    in_features: int
    dtype: torch.dtype
    kind: str


def _cache_dir() -> Path:
    home = os.environ.get("LMSTATION_HOME")
    if home:
        return Path(home).expanduser() / "cache" / "kernels"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("LMStation", appauthor=False)) / "kernels"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return cc
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _build(source: Path) -> Path:
    """Compiles ``source`` into the cache once per source hash; returns the library path."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    key = hashlib.sha256(source.read_bytes() + " ".join([cc, *_CFLAGS]).encode()).hexdigest()[:16]
    suffix = ".dll" if os.name == "nt" else ".so"
    target = _cache_dir() / f"lms_gemv-{key}{suffix}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent first runs never see half a file.
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *_CFLAGS, "-o", tmp, str(source)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"{cc} failed: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _omp_entry_points() -> tuple[int, int, int] | None:
    """Addresses of GOMP_parallel / omp_get_thread_num / omp_get_num_threads in torch's runtime.

    Only the runtime torch already runs will do: loading a second one would start
    a second pool on the same cores. On Linux that is an OpenMP library already
    mapped into the process, torch's own (``torch/lib``, ``torch.libs``) first;
    elsewhere the one torch ships in ``torch/lib``, then the global symbols.
    Windows builds of torch ship no GOMP entry points, so the kernel runs on the
    calling thread there.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    torch_dir = str(Path(torch.__file__).parent)
    prefixes = ("libgomp", "libomp", "libiomp")
    if sys.platform.startswith("linux"):
        with open("/proc/self/maps") as f:
            loaded = {line.split()[-1] for line in f if "/" in line}
        found = [p for p in loaded if Path(p).name.startswith(prefixes)]
        candidates: list[str | None] = sorted(found, key=lambda p: (not p.startswith(torch_dir), p))
    else:
        candidates = sorted(str(p) for p in (Path(torch_dir) / "lib").glob("*omp*") if p.name.startswith(prefixes))
    if os.name != "nt":
        candidates.append(None)  # the global namespace
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            fns = (lib.GOMP_parallel, lib.omp_get_thread_num, lib.omp_get_num_threads)
        except (OSError, AttributeError):
            continue
        return tuple(ctypes.cast(f, ctypes.c_void_p).value for f in fns)  # type: ignore[return-value]
    return None


@cache
def _library() -> _Library:
    """Loads (building if needed) the C library once per process; never raises."""
    if os.environ.get("LMSTATION_NO_CPU_GEMV"):
        return _Library(None, "disabled by LMSTATION_NO_CPU_GEMV")
    try:
        prebuilt = os.environ.get("LMSTATION_CPU_GEMV_LIB")
        if prebuilt:
            path = Path(prebuilt)
        elif _SOURCE.exists():
            path = _build(_SOURCE)
        else:
            raise FileNotFoundError(f"kernel source missing: {_SOURCE}")
        lib = ctypes.CDLL(str(path))
        i64, vp = ctypes.c_int64, ctypes.c_void_p
        for fn in (lib.lms_gemv_bf16, lib.lms_gemv_f32):
            fn.argtypes = [vp, i64, i64, i64, vp, i64, vp, i64, ctypes.c_int]
            fn.restype = None
        lib.lms_gemv_set_isa.argtypes = [ctypes.c_int]
        lib.lms_gemv_set_isa.restype = ctypes.c_int
        lib.lms_gemv_set_omp.argtypes = [vp, vp, vp]
        lib.lms_gemv_set_omp.restype = None
        lib.lms_gemv_set_omp(*(_omp_entry_points() or (None, None, None)))
        isa = lib.lms_gemv_set_isa(-1)
    except Exception as exc:  # a broken toolchain must never take the engine down
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"CPU GEMV kernel unavailable, using torch ({reason})", RuntimeWarning, stacklevel=2)
        return _Library(None, reason)
    return _Library(lib, isa=_ISA_NAMES.get(isa, str(isa)))


def available() -> bool:
    """Whether the C kernel is loaded (building it on first call)."""
    return _library().cdll is not None


def unavailable_reason() -> str:
    """Why the C kernel is not in use; empty when it is."""
    return _library().reason


def backend() -> str:
    """Instruction set the kernel runs (``avx512bf16``, ``avx2``, ``portable``) or ``torch``."""
    return _library().isa or "torch"


def _pack_tiles(w: torch.Tensor) -> torch.Tensor:
    """[out, in] -> gemv.c's tiled layout: bf16 [tiles, in/2, 32, 2], fp32 [tiles, in, 32]."""
    out, inp = w.shape
    tiles = -(-out // TILE)
    bf16 = w.dtype == torch.bfloat16
    cols = inp + (inp % 2 if bf16 else 0)
    if (tiles * TILE, cols) != (out, inp):
        w = F.pad(w, (0, cols - inp, 0, tiles * TILE - out))
    if bf16:
        return w.reshape(tiles, TILE, cols // 2, 2).permute(0, 2, 1, 3).contiguous()
    return w.reshape(tiles, TILE, cols).permute(0, 2, 1).contiguous()


def _onednn_pack(w: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's own packed layout: 1.4-3x faster than F.linear at batch 1-16.

    Packed for batch 16: at batch 1 that is as fast as a batch-1 packing in bf16
    and ~30% faster in fp32.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 16)
        torch.ops.mkldnn._linear_pointwise(w.new_ones(1, w.shape[1]), packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return None
    return packed


def pack_weight(w: torch.Tensor) -> PackedWeight:
    """Prepares a 2-D ``[out, in]`` CPU weight once, at load time."""
    if w.dim() != 2 or w.device.type != "cpu":
        raise ValueError(f"expected a 2-D CPU weight, got shape {tuple(w.shape)} on {w.device}")
    w = w.detach()
    out, inp = w.shape
    if w.dtype in _KERNEL_DTYPES and available():
        return PackedWeight(_pack_tiles(w), out, inp, w.dtype, "gemv")
    packed = _onednn_pack(w.contiguous())
    if packed is not None:
        return PackedWeight(packed, out, inp, w.dtype, "onednn")
    return PackedWeight(w.contiguous(), out, inp, w.dtype, "plain")


def linear(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """``x @ W.T`` for ``x`` of shape ``[..., in]``; the result has ``x``'s dtype."""
    # Decode calls this ~100 times per token, so the common case (2-D x of the
    # weight's dtype) skips every reshape and cast: each costs about a microsecond.
    if x.shape[-1] != packed.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight takes {packed.in_features}")
    if x.dtype != packed.dtype:
        return linear(x.to(packed.dtype), packed).to(x.dtype)
    if x.dim() != 2:
        return linear(x.reshape(-1, packed.in_features), packed).reshape(*x.shape[:-1], packed.out_features)
    if packed.kind == "gemv":
        return _gemv(x, packed)
    if packed.kind == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x, packed.data, None, "none", [], "")
    return F.linear(x, packed.data)


def _gemv(x: torch.Tensor, p: PackedWeight) -> torch.Tensor:
    if not x.is_cpu:  # the C code would read it as host memory
        raise ValueError(f"x is on {x.device}, the weight on the CPU")
    nb = x.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty(nb, p.out_features, dtype=p.dtype)
    if nb == 0:
        return y
    lib = _library().cdll
    fn = lib.lms_gemv_bf16 if p.dtype == torch.bfloat16 else lib.lms_gemv_f32
    fn(x.data_ptr(), x.stride(0), nb, p.in_features, p.data.data_ptr(), p.out_features, y.data_ptr(),
       p.out_features, torch.get_num_threads())
    return y
