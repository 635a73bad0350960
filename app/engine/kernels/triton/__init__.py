"""Triton kernels for the GPU path (also run on CPU tensors under TRITON_INTERPRET=1, for tests).

Each module holds one idea; all take bf16, fp16 or fp32 inputs, compute in fp32 and never
synchronise with the host. `available()` says whether they can run here. Import the kernels only
after checking it (importing needs triton).
"""

from __future__ import annotations

import importlib.util
import os

import torch


def available() -> bool:
    """Triton is importable and there is a CUDA device to run on (or the interpreter is on)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    return torch.cuda.is_available()


if importlib.util.find_spec("triton") is not None:
    from app.engine.kernels.triton.activation import silu_mul
    from app.engine.kernels.triton.kv_cache import write_kv
    from app.engine.kernels.triton.norm import add_rms_norm, rms_norm
    from app.engine.kernels.triton.rotary import apply_rotary, apply_rotary_qk


__all__ = [
    "available", "rms_norm", "add_rms_norm", "apply_rotary", "apply_rotary_qk", "silu_mul", "write_kv",
]
