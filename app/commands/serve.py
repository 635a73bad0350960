"""``lmstation serve``: the OpenAI-compatible server on a model, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import threading

from app.engine import Engine, EngineConfig, EngineError
from app.library import ModelNotFound, resolve_model
from app.server import ServerConfig, ServerThread
from app.server.config import ServerConfigError


def run_serve(args: argparse.Namespace) -> int:
    config = ServerConfig(host=args.host, port=args.port, api_key=args.api_key,
                          cors_origins=tuple(args.cors_origin or ()))
    try:
        config.validate()  # before minutes of loading
        model_dir = resolve_model(args.model)
    except (ServerConfigError, ModelNotFound, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with Engine() as engine:
        print(f"Loading {model_dir.name}...", file=sys.stderr, flush=True)
        try:
            engine.load(EngineConfig(model=model_dir, device=args.device, dtype=args.dtype,
                                     kv_cache_dtype=args.kv_cache_dtype)).result()
            server = ServerThread(engine, config)
            server.start()
        except (EngineError, ServerConfigError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Serving {model_dir.name} at {server.base_url} (model name '{model_dir.name}'); Ctrl-C stops.",
              file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0
