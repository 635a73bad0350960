"""The before/after report of a quantization: perplexity on held-out text, size on disk, decode
speed, and the same questions answered greedily by both models.

Runs in the quantization's worker process (app/ui/quantize_job.py), one model at a time, so at
most one extra copy of a model is in memory beside the app's own engine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
           "Explain what a CPU does in one sentence.")
DEFAULTS = {"ppl_windows": 40, "ppl_seqlen": 512,  # as ``lmstation eval-ppl``, so the numbers compare
            "decode_tokens": 64, "answer_tokens": 64}
SPEED_PROMPT = "Once upon a time"
# A small KV cache of its own: the app's engine may hold most of the device already.
REPORT_ENGINE = {"block_size": 16, "num_cache_blocks": 128}

Step = Callable[[str], None]  # says what is measured next; raises QuantizeCancelled once cancelled


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _perplexity(folder: Path, device: str, settings: dict) -> float:
    from app.engine.quant import evaluate_perplexity

    return evaluate_perplexity(folder, device=device, windows=settings["ppl_windows"],
                               seqlen=settings["ppl_seqlen"]).perplexity


def _speed_and_answers(folder: Path, engine: dict, settings: dict) -> tuple[float, list[str], str]:
    """Decode tokens per second of one conversation (what a chat feels like), the answers, and
    the device that ran them."""
    from app.engine import pipeline

    with pipeline(folder, **{**engine, **REPORT_ENGINE}) as pipe:
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]
        answers = pipe(chats, temperature=0.0, max_new_tokens=settings["answer_tokens"])
        timed = pipe(SPEED_PROMPT, temperature=0.0, max_new_tokens=settings["decode_tokens"], ignore_eos=True)
        device = pipe.engine.stats().get("device", "")
    return timed.stats.decode_tokens_per_s or 0.0, [a.text.strip() for a in answers], device


def build_report(source: Path, out: Path, device: str, engine: dict, settings: dict, step: Step) -> dict:
    """Both models measured the same way; ``report["error"]`` says what could not be measured (the
    new model stays: it is complete, only its report is not)."""
    from app.engine.errors import EngineError
    from app.engine.quant import QuantizeCancelled

    settings = {**DEFAULTS, **settings}
    report: dict = {"source": str(source), "out": str(out), "prompts": list(PROMPTS), "error": "",
                    "ppl_text": f"{settings['ppl_windows']} windows of {settings['ppl_seqlen']} tokens of held-out text",
                    "before": {"size_bytes": folder_bytes(source)}, "after": {"size_bytes": folder_bytes(out)}}
    sides = (("before", source, "the original"), ("after", out, "the 4-bit model"))
    try:
        for side, folder, what in sides:
            step(f"Measuring the perplexity of {what}")
            report[side]["perplexity"] = _perplexity(folder, device, settings)
        for side, folder, what in sides:
            step(f"Timing {what} and asking it the three questions")
            report[side]["tokens_per_s"], report[side]["answers"], report["speed_device"] = (
                _speed_and_answers(folder, engine, settings))
    except QuantizeCancelled:
        raise
    except (EngineError, OSError, RuntimeError, ValueError) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    return report
