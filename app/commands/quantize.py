"""``lmstation quantize MODEL --out DIR``: a 4-bit AWQ checkpoint, with per-layer progress and an ETA.
Ctrl-C stops it and leaves nothing behind."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.engine.quant import QuantizeConfig, QuantizeError, QuantProgress, quantize
from app.library import ModelNotFound, resolve_model


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class _ProgressLine:
    """One status line redrawn in place on a terminal; one line per finished layer otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_layer = -1
        self.drawn = False  # a status line is on the terminal, not yet ended

    def end(self) -> None:
        if self.drawn:
            print(file=sys.stderr)
            self.drawn = False

    def __call__(self, p: QuantProgress) -> None:
        text = (f"layer {min(p.layer + 1, p.layers)}/{p.layers} {p.stage:<11} "
                f"{_clock(p.elapsed_s)} elapsed, {_clock(p.eta_s)} left")
        if self.tty:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
            self.drawn = True
        elif p.layer != self.last_layer or p.stage in ("writing", "done"):
            print(text, file=sys.stderr, flush=True)
        self.last_layer = p.layer


def run_quantize(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress only
    try:
        model = resolve_model(args.model)
    except (ModelNotFound, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = QuantizeConfig(
        model=model, out=Path(args.out).expanduser(), method=args.method, group_size=args.group_size,
        calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
        calib_data=tuple(Path(p).expanduser() for p in args.calib_data or ()), device=args.device,
    )
    line = _ProgressLine()
    start = time.monotonic()
    try:
        out = quantize(config, progress=line)
    except (QuantizeError, OSError) as exc:  # OSError: transformers could not read the model's files
        line.end()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        line.end()
        print("stopped; nothing was written", file=sys.stderr)
        return 130
    line.end()
    print(f"{args.method.upper()} int4 (group {args.group_size}) of {model.name} is in {out} "
          f"({_clock(time.monotonic() - start)})")
    return 0
