"""Reading HF safetensors checkpoints (single file or sharded), one tensor at a time."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from app.engine.distributed.sharding import Index
from app.engine.errors import ModelLoadError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked to exist."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"{index} is not a valid safetensors index: {exc}") from exc
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    elif (model_dir / SINGLE_FILE).is_file():
        files = [model_dir / SINGLE_FILE]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"no .safetensors weights in {model_dir}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"weight files listed in the index are missing: {', '.join(missing)}")
    return files


def validate_file(path: Path) -> None:
    """Checks the header parses and the data it promises is all there (catches truncated downloads)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path.name} is not a valid safetensors file ({exc})") from exc
    if 8 + header_len + end > size:
        raise ModelLoadError(
            f"{path.name} is truncated: {size} bytes on disk, {8 + header_len + end} expected (re-download it)"
        )


# A tensor's name and shape -> the part of it to read: () all of it, None none of it.
Selector = Callable[[str, list[int]], Index | None]


def iter_weights(files: list[Path], select: Selector | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) across all files; only one tensor is materialised at a time.
    ``select``: the part of each tensor to read (a tensor-parallel rank's), so that a rank never
    reads more of the checkpoint than it holds."""
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if select is None:
                        yield name, f.get_tensor(name)
                        continue
                    part = f.get_slice(name)
                    index = select(name, part.get_shape())
                    if index is not None:
                        yield name, part[index] if index else f.get_tensor(name)
        except (OSError, RuntimeError) as exc:  # safetensors raises SafetensorError (a RuntimeError subclass)
            raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc


def count_tensors(files: list[Path]) -> int:
    """How many tensors the files hold (their headers only), for load progress."""
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            total += len(f.keys())
    return total


def reporting(weights: Iterator[tuple[str, torch.Tensor]], total: int,
              progress: Callable[[float], None]) -> Iterator[tuple[str, torch.Tensor]]:
    """Passes the weights through, telling ``progress`` the share read so far (each whole percent)."""
    shown = -1
    for done, item in enumerate(weights, 1):
        yield item
        percent = 100 * done // max(total, 1)
        if percent != shown:
            shown = percent
            progress(min(1.0, percent / 100))
