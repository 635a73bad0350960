"""``lmstation eval-ppl MODEL``: perplexity on held-out text, printed as one number (details on stderr)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.engine.quant import QuantizeError, evaluate_perplexity
from app.engine.quant.perplexity import engine_perplexity
from app.library import ModelNotFound, resolve_model


def run_eval_ppl(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stdout and stderr stay readable
    start = time.monotonic()
    try:
        model = resolve_model(args.model)
        data = Path(args.data).expanduser() if args.data else None
        if args.kv_cache_dtype is None:  # transformers' own forward (weights' quality)
            result = evaluate_perplexity(model, data, args.device, windows=args.windows, seqlen=args.seqlen)
        else:  # our engine, chunk by chunk over a KV cache of that dtype (the cache's quality)
            result = engine_perplexity(model, args.kv_cache_dtype, data, args.device, windows=args.windows,
                                       seqlen=args.seqlen, chunk=args.chunk)
    except (ModelNotFound, OSError, ValueError, QuantizeError) as exc:  # OSError: unreadable weights
        print(f"error: {exc}", file=sys.stderr)
        return 1
    how = "" if args.kv_cache_dtype is None else f", our engine with a {args.kv_cache_dtype} KV cache in {args.chunk}-token chunks"
    print(f"{model.name}{how}: {result.windows} windows x {args.seqlen} tokens ({result.tokens} predicted), "
          f"{time.monotonic() - start:.1f} s", file=sys.stderr)
    print(f"{result.perplexity:.4f}")
    return 0
