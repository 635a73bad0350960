"""The CPU kernel library: one shared library built from every ``csrc/cpu/*.c``.

The CPU kernels (``cpu_linear``'s GEMV, ``cpu_decode``'s fused decoder layer)
share one library so that they share the instruction-set choice and torch's
OpenMP pool. It is compiled with the system C compiler (``CC``, else
cc/gcc/clang) on first use into the user cache, keyed by a hash of sources and
flags, so an edited source rebuilds and concurrent first runs never see half a
file. ``LMSTATION_CPU_KERNELS_LIB`` points at a prebuilt one instead (see
``csrc/cpu/Makefile``); ``LMSTATION_NO_CPU_KERNELS=1`` turns it off. Every user
has a torch fallback, so no failure here (no compiler, a failed build) raises:
:func:`library` reports why instead.

The kernels own no threads: they run inside torch's own OpenMP pool, whose
entry points are handed to the library once at load (see ``csrc/cpu/gemv.c``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from app.engine.kernels.native_build import bind, build_once, bundled, cache_dir

__all__ = ["Library", "library"]

SOURCE_DIR = Path(__file__).resolve().parents[3] / "csrc" / "cpu"
# -fno-trapping-math lets the compiler vectorize float compares (the portable kernels' clamps);
# results stay IEEE-exact, and nothing here reads floating-point exception flags.
_CFLAGS = ["-O3", "-std=c11", "-fno-trapping-math", "-fvisibility=hidden", "-shared"] + (
    [] if os.name == "nt" else ["-fPIC"]
)
_LIBS = ["-lm"]
_ISA_NAMES = {0: "portable", 1: "avx2", 2: "avx512bf16"}

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
# Exported functions: (argument types, result type). Pointers travel as plain ints.
_SIGNATURES: dict[str, tuple[list, type | None]] = {
    "lms_max_isa": ([], _int),
    "lms_set_isa": ([_int], _int),
    "lms_set_omp": ([_ptr, _ptr, _ptr], None),
    "lms_gemv_bf16": ([_ptr, _i64, _i64, _i64, _ptr, _i64, _ptr, _i64, _int], None),
    "lms_gemv_f32": ([_ptr, _i64, _i64, _i64, _ptr, _i64, _ptr, _i64, _int], None),
    "lms_decode_layer": ([_ptr] * 6, _int),
}


@dataclass(frozen=True)
class Library:
    """The loaded C library, or why there is none (``cdll`` is None)."""

    cdll: ctypes.CDLL | None
    reason: str = ""
    isa: str = ""  # instruction set in use: avx512bf16, avx2 or portable


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return cc
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _build(source_dir: Path) -> Path:
    """Compiles the ``*.c`` files of ``source_dir`` into one library in the cache, once per
    hash of sources, headers and command; returns its path."""
    sources = sorted(source_dir.glob("*.c"))
    if not sources:
        raise FileNotFoundError(f"no kernel sources in {source_dir}")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")

    def failed(proc) -> str:
        return f"{cc} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"

    return build_once(cache_dir(), "lms_cpu", [" ".join([cc, *_CFLAGS, *_LIBS])],
                      [*sources, *source_dir.glob("*.h")],
                      lambda out: [cc, *_CFLAGS, "-o", out, *map(str, sources), *_LIBS], 180, failed)


def _omp_entry_points() -> tuple[int, int, int] | None:
    """Addresses of GOMP_parallel / omp_get_thread_num / omp_get_num_threads in torch's runtime.

    Only the runtime torch already runs will do: loading a second one would start
    a second pool on the same cores. On Linux that is an OpenMP library already
    mapped into the process, torch's own (``torch/lib``, ``torch.libs``) first;
    elsewhere the one torch ships in ``torch/lib``, then the global symbols.
    Windows builds of torch ship no GOMP entry points, so the kernels run on the
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
def library() -> Library:
    """Loads (building if needed) the library once per process; never raises."""
    if os.environ.get("LMSTATION_NO_CPU_KERNELS"):
        return Library(None, "disabled by LMSTATION_NO_CPU_KERNELS")
    try:
        prebuilt = os.environ.get("LMSTATION_CPU_KERNELS_LIB") or bundled("lms_cpu")
        lib = bind(ctypes.CDLL(prebuilt or str(_build(SOURCE_DIR))), _SIGNATURES)
        lib.lms_set_omp(*(_omp_entry_points() or (None, None, None)))
        isa = lib.lms_set_isa(-1)
    except Exception as exc:  # a broken toolchain must never take the engine down
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"CPU kernels unavailable, using torch ({reason})", RuntimeWarning, stacklevel=2)
        return Library(None, reason)
    return Library(lib, isa=_ISA_NAMES.get(isa, str(isa)))
