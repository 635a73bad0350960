"""The quantization's own process: quantize(), then the before/after report, told to the app as
plain messages over a pipe.

A process rather than a thread of the app: importing torch and transformers and loading a model
hold the GIL for hundreds of milliseconds at a time (measured from a thread: 300 ms stalls of the
window's event loop), and a process gives its memory back to the system when it ends. It runs at
a lower priority, so the window and a chat on the app's engine stay quick.

Messages: ("progress", QuantProgress as a dict) and ("measuring", what) while it works, then one
of ("finished", report), ("failed", message) or ("cancelled", None).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import psutil


def _yield_to_the_app() -> None:
    """A lower priority than the window and the app's engine, and OpenMP threads that sleep while they
    wait instead of spinning: spinning threads of a lower-priority process, preempted at barriers,
    made a run 9x slower beside other work (200 s instead of 22 s on 2 cores). Before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    psutil.Process().nice(psutil.BELOW_NORMAL_PRIORITY_CLASS if sys.platform == "win32" else 10)


def _config(options: dict):
    from app.engine.quant import QuantizeConfig

    return QuantizeConfig(**{**options, "model": Path(options["model"]), "out": Path(options["out"]),
                             "calib_data": tuple(Path(p) for p in options.get("calib_data", ()))})


def _work(job: dict, conn: Connection, cancel) -> dict:
    from app.engine.quant import QuantizeCancelled, quantize
    from app.ui.quantize_report import build_report

    config = _config(job["quantize"])
    start = time.monotonic()
    out = quantize(config, lambda p: conn.send(("progress", dataclasses.asdict(p))), cancel)
    elapsed = time.monotonic() - start

    def step(what: str) -> None:
        if cancel.is_set():
            raise QuantizeCancelled("quantization cancelled")
        conn.send(("measuring", what))

    try:
        report = build_report(config.model, out, config.device, job.get("engine", {}), job.get("report", {}), step)
    except QuantizeCancelled:
        shutil.rmtree(out, ignore_errors=True)  # cancelled is cancelled: nothing stays
        raise
    settings = {"group_size": config.group_size, "calib_samples": config.calib_samples,
                "calib_seqlen": config.calib_seqlen, "calib_data": [str(p) for p in config.calib_data]}
    return {**report, "elapsed_s": elapsed, "settings": settings, "quick": bool(job.get("quick"))}


def run_job(job: dict, conn: Connection, cancel) -> None:
    """The process's target. ``cancel`` is a multiprocessing Event the app sets."""
    _yield_to_the_app()
    from transformers.utils import logging as hf_logging

    from app.engine.quant import QuantizeCancelled, QuantizeError

    hf_logging.disable_progress_bar()  # the app shows its own progress
    try:
        conn.send(("finished", _work(job, conn, cancel)))
    except QuantizeCancelled:
        conn.send(("cancelled", None))
    except QuantizeError as exc:
        conn.send(("failed", str(exc)))
    except (BrokenPipeError, EOFError):
        pass  # the app is gone: quantize() removed any partial output; a finished model stays
    except Exception as exc:  # noqa: BLE001 (whatever went wrong, the app hears of it)
        traceback.print_exc()
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
