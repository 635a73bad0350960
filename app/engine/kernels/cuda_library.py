"""The CUDA kernel library: one shared library built by nvcc from ``csrc/w4a16/*.cu``.

Plain C ABI, loaded with ctypes (no torch C++ extension), so a prebuilt library survives torch
upgrades and bundling. It is compiled on first use into the user cache, keyed by a hash of the
sources, headers, nvcc's version and the flags, so an edited source rebuilds and concurrent first
runs never see half a file. The CUDA runtime is linked statically (nvcc's default); only the
driver (libcuda) is needed at run time. Machine code for sm_80 (A100) and sm_90 (H100/H200), plus
PTX that newer GPUs compile at load.

``LMSTATION_CUDA_KERNELS_LIB`` points at a prebuilt library instead (``make -C csrc/w4a16``);
``LMSTATION_NO_CUDA_KERNELS=1`` turns it off; ``NVCC`` (else ``CUDA_HOME``/``CUDA_PATH``, the
PATH, /usr/local/cuda) picks the compiler. Every kernel here has a Triton or torch counterpart, so
no failure (no GPU, no nvcc, a failed build) raises: :func:`library` reports why instead.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from app.engine.kernels.native_build import bind, build_once, bundled, cache_dir

__all__ = ["ABI_VERSION", "NVCC_FLAGS", "Library", "build", "find_nvcc", "library", "sources"]

SOURCE_DIR = Path(__file__).resolve().parents[3] / "csrc" / "w4a16"
ABI_VERSION = 6  # LMS_W4A16_ABI_VERSION in w4a16.h
GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",  # PTX: newer GPUs compile it at load
]
NVCC_FLAGS = ["-O3", "-std=c++17", "-shared", *GENCODE] + (
    [] if os.name == "nt" else ["-Xcompiler=-fPIC", "-Xcompiler=-fvisibility=hidden"]
)

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
# Exported functions: (argument types, result type). Pointers travel as plain ints.
_SIGNATURES: dict[str, tuple[list, type]] = {
    "lms_w4a16_abi_version": ([], _int),
    "lms_w4a16_workspace_bytes": ([_i64, _i64, _i64, _i64, _int, ctypes.POINTER(_i64)], _int),
    "lms_w4a16_gemv": ([_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _int, _int, _ptr, _ptr, _i64, _int,
                        _ptr], _int),
    "lms_w4a16_gemm_workspace_bytes": ([_i64, _i64, _i64, _i64, _int, _int, ctypes.POINTER(_i64)], _int),
    "lms_w4a16_gemm": ([_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _int, _ptr, _i64, _int, _int, _ptr],
                       _int),
    "lms_w4a16_error_string": ([_int], ctypes.c_char_p),
}


@dataclass(frozen=True)
class Library:
    """The loaded library, or why there is none (``cdll`` is None)."""

    cdll: ctypes.CDLL | None
    reason: str = ""


def find_nvcc() -> str | None:
    """NVCC, else nvcc under CUDA_HOME / CUDA_PATH, on the PATH, or in /usr/local/cuda."""
    if os.environ.get("NVCC"):
        return os.environ["NVCC"]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def sources(source_dir: Path = SOURCE_DIR) -> list[Path]:
    return sorted(source_dir.glob("*.cu"))


def build(target_dir: Path, source_dir: Path = SOURCE_DIR, nvcc: str | None = None) -> Path:
    """Compiles the ``*.cu`` files of ``source_dir`` into one library in ``target_dir``, once per
    hash of sources, headers, compiler version and flags; returns its path. Raises on failure."""
    files = sources(source_dir)
    if not files:
        raise FileNotFoundError(f"no CUDA sources in {source_dir}")
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set NVCC or CUDA_HOME, or install the CUDA toolkit)")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout

    def failed(proc) -> str:
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines() or ["?"]
        return f"nvcc failed: {errors[0].strip()}"

    return build_once(target_dir, "lms_cuda", [version, *NVCC_FLAGS],
                      [*files, *source_dir.glob("*.h"), *source_dir.glob("*.cuh")],
                      lambda out: [nvcc, *NVCC_FLAGS, "-o", out, *map(str, files)], 600, failed)


def _load(path: str) -> ctypes.CDLL:
    lib = bind(ctypes.CDLL(path), _SIGNATURES)
    found = lib.lms_w4a16_abi_version()
    if found != ABI_VERSION:
        raise RuntimeError(f"{path} has ABI version {found}, this code needs {ABI_VERSION}")
    return lib


@cache
def library() -> Library:
    """Loads (building if needed) the library once per process; never raises."""
    if os.environ.get("LMSTATION_NO_CUDA_KERNELS"):
        return Library(None, "disabled by LMSTATION_NO_CUDA_KERNELS")
    prebuilt = os.environ.get("LMSTATION_CUDA_KERNELS_LIB") or bundled("lms_cuda")
    if not prebuilt and not torch.cuda.is_available():
        return Library(None, "no CUDA device")
    try:
        return Library(_load(prebuilt or str(build(cache_dir()))))
    except Exception as exc:  # a broken toolchain must never take the engine down
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"CUDA kernels unavailable, using Triton/torch ({reason})", RuntimeWarning, stacklevel=2)
        return Library(None, reason)
