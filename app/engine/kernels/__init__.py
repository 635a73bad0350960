"""Kernel selection: the one place that decides which implementation of each op runs.

The torch reference ops run everywhere (CPU, tests); device-specific kernels replace them
field by field where they exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from app.engine.kernels import reference


@dataclass(frozen=True)
class Ops:
    rms_norm: Callable
    add_rms_norm: Callable
    silu_mul: Callable
    apply_rotary: Callable
    write_kv: Callable
    paged_attention: Callable
    name: str = "torch-reference"


REFERENCE_OPS = Ops(
    rms_norm=reference.rms_norm,
    add_rms_norm=reference.add_rms_norm,
    silu_mul=reference.silu_mul,
    apply_rotary=reference.apply_rotary,
    write_kv=reference.write_kv,
    paged_attention=reference.paged_attention,
)


def ops_for(device: torch.device) -> Ops:
    """The ops for a device. Only the torch reference exists so far; the GPU path adds Triton."""
    return REFERENCE_OPS
