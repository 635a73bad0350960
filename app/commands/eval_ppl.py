"""``lmstation eval-ppl MODEL``: perplexity on held-out text, printed as one number (details on stderr)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.engine.quant import QuantizeError, evaluate_perplexity
from app.library import ModelNotFound, resolve_model


def run_eval_ppl(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stdout and stderr stay readable
    start = time.monotonic()
    try:
        model = resolve_model(args.model)
        result = evaluate_perplexity(model, Path(args.data).expanduser() if args.data else None, args.device,
                                     windows=args.windows, seqlen=args.seqlen)
    except (ModelNotFound, OSError, ValueError, QuantizeError) as exc:  # OSError: unreadable weights
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{model.name}: {result.windows} windows x {args.seqlen} tokens ({result.tokens} predicted), "
          f"{time.monotonic() - start:.1f} s", file=sys.stderr)
    print(f"{result.perplexity:.4f}")
    return 0
