"""``lmstation chat``: a streamed terminal chat with history, or one answer with --prompt."""

from __future__ import annotations

import argparse
import sys

from app.engine import Engine, EngineConfig, EngineError, GenerationConfig
from app.library import ModelNotFound, resolve_model

HELP = "Commands: /reset clears the history, /system TEXT sets the system prompt, /exit quits. Ctrl-C stops a reply."


def _stream(engine: Engine, messages: list[dict], gen: GenerationConfig) -> tuple[str, str | None]:
    """Prints the reply as it arrives; returns (text, error). Ctrl-C cancels the reply."""
    handle = engine.submit(messages=messages, gen=gen)
    parts: list[str] = []
    try:
        for delta in handle:
            if delta.text:
                parts.append(delta.text)
                print(delta.text, end="", flush=True)
    except KeyboardInterrupt:
        handle.cancel()
        for _ in handle:  # drain until the engine confirms the cancellation
            pass
        print(" [stopped]", end="")
    print()
    final = handle.final
    return "".join(parts), final.error if final else None


def run_chat(args: argparse.Namespace) -> int:
    try:
        model_dir = resolve_model(args.model)
    except (ModelNotFound, FileNotFoundError, ValueError) as exc:  # ValueError: a GGUF that cannot be imported
        print(f"error: {exc}", file=sys.stderr)
        return 1
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p if args.temperature > 0 else 1.0, seed=args.seed)
    with Engine() as engine:
        print(f"Loading {model_dir.name}...", file=sys.stderr, flush=True)
        try:
            stats = engine.load(EngineConfig(model=model_dir, device=args.device, dtype=args.dtype,
                                     kv_cache_dtype=args.kv_cache_dtype)).result()
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Ready on {stats['device']} ({stats['dtype']}): KV cache {stats['cache_tokens']:,} tokens, "
              f"context {stats['max_model_len']:,} tokens.",
              file=sys.stderr, flush=True)
        system = [{"role": "system", "content": args.system}] if args.system else []
        if args.prompt is not None:
            _, error = _stream(engine, system + [{"role": "user", "content": args.prompt}], gen)
            if error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            return 0
        return _interactive(engine, system, gen)


def _interactive(engine: Engine, system: list[dict], gen: GenerationConfig) -> int:
    print(HELP, file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history.clear()
            continue
        if line.startswith("/system"):
            text = line.removeprefix("/system").strip()
            system = [{"role": "system", "content": text}] if text else []
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        reply, error = _stream(engine, system + history, gen)
        if error:
            print(f"error: {error}", file=sys.stderr)
            history.pop()
        else:
            history.append({"role": "assistant", "content": reply})
