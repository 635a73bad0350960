"""Builds the native kernel libraries for a bundle into DIR under fixed names (lms_cpu.so/.dll,
and lms_cuda.so/.dll where nvcc is found), which the bundled app loads instead of compiling.
Usage: python packaging/build_kernels.py DIR"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's app, whatever is installed


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".dll" if os.name == "nt" else ".so"
    from app.engine.kernels import cpu_library, cuda_library

    try:
        shutil.copy(cpu_library._build(cpu_library.SOURCE_DIR), out / f"lms_cpu{suffix}")
        print(f"CPU kernels: {out / f'lms_cpu{suffix}'}")
    except Exception as exc:  # no C compiler: the bundle falls back to torch on the CPU
        print(f"CPU kernels not built ({exc}); the bundle will use torch's")
    import torch

    if torch.version.cuda is None:  # a CPU torch: the bundle never runs CUDA kernels
        print("CUDA kernels not built (this torch is a CPU build)")
    elif cuda_library.find_nvcc():
        shutil.copy(cuda_library.build(out / "cache"), out / f"lms_cuda{suffix}")
        shutil.rmtree(out / "cache", ignore_errors=True)
        print(f"CUDA kernels: {out / f'lms_cuda{suffix}'}")
    else:
        print("CUDA kernels not built (no nvcc)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
