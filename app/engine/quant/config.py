"""What a quantization run is asked to do, what it reports while running, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.engine.errors import EngineError

METHODS = ("awq", "rtn")


class QuantizeError(EngineError):
    """Quantization refused or failed, with a message the user can act on; nothing was written."""


class QuantizeCancelled(QuantizeError):
    """The caller's cancel event was set; the partial output was removed."""


@dataclass(frozen=True)
class QuantizeConfig:
    model: Path  # a Hugging Face model folder (fp16, bf16 or fp32)
    out: Path  # must not exist yet
    method: str = "awq"  # "awq", or "rtn": plain round-to-nearest, the baseline AWQ is measured against
    group_size: int = 128
    calib_samples: int = 128
    calib_seqlen: int = 512
    calib_data: tuple[Path, ...] = ()  # .txt / .jsonl files; empty: the text that ships with Python
    device: str = "auto"  # "auto": cuda if available, else cpu
    scale_grid: int = 20  # exponents tried by the scale search, evenly in [0, 1) (plus s = 1, plain RTN)
    clip_grid: int = 20  # clipping factors 1, 1 - 1/clip_grid, ... while above 1 - clip_max_shrink
    clip_max_shrink: float = 0.5
    # Samples (evenly spaced) whose block outputs the scale search compares: each of its grid points
    # reruns the attention or MLP, so all 128 would cost a CPU an hour on even the starter model.
    search_samples: int = 16


@dataclass(frozen=True)
class QuantProgress:
    layer: int  # 0-based index of the decoder layer being worked on; == layers when past the last
    layers: int
    stage: str  # "loading", "calibrating", "scales", "clipping", "quantizing", "writing", "done"
    elapsed_s: float
    eta_s: float | None  # None until one layer has finished
