"""``lmstation``: one entry point for the terminal commands."""

from __future__ import annotations

import argparse
import multiprocessing
import sys

from app.commands.cluster import add_cluster_parser

# The choices only (no torch): the same tuple EngineConfig checks
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "float32", "int8", "int4")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model folder or library name (default: the starter model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                   help="how the KV cache stores keys and values (int8/int4: 2x/3.8x the tokens)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmstation", description="LM Station: local LLMs, fast.")
    parser.add_argument("--self-test", action="store_true",
                        help="open the app offscreen, load the starter model, answer a question, print a report, exit")
    parser.add_argument("--report", help="with --self-test: where the report (JSON) goes")
    sub = parser.add_subparsers(dest="command")

    chat = sub.add_parser("chat", help="chat in the terminal, or answer one --prompt and exit (no command: the window)")
    _add_model_args(chat)
    chat.add_argument("--prompt", help="answer this prompt and exit")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=512)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--seed", type=int)

    bench = sub.add_parser("bench", help="measure prefill and decode speed")
    _add_model_args(bench)
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--input-len", type=int, default=128)
    bench.add_argument("--output-len", type=int, default=128)
    bench.add_argument("--baseline", choices=["hf"], help="also run HF transformers on the same inputs")
    bench.add_argument("--shape", help="a real model shape with random weights instead of MODEL (llama-3-8b, llama-3-8b-awq, smollm2-135m)")
    bench.add_argument("--workload", type=int, metavar="N", help="also serve N requests of ShareGPT-like lengths")
    bench.add_argument("--ttft", type=int, metavar="LEN", help="also time the first token of a LEN-token prompt")
    bench.add_argument("--limits", action="store_true", help="also measure copy bandwidth and GEMM rate")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")

    download = sub.add_parser("download", help="download a model from Hugging Face or ModelScope into the library")
    download.add_argument("repo", help="repository id, e.g. Qwen/Qwen2.5-0.5B-Instruct")
    download.add_argument("--source", choices=["hf", "modelscope"], default="hf")
    download.add_argument("--revision", help="branch, tag or commit (default: the main branch)")
    download.add_argument("--endpoint", help="a hub mirror's URL (default: $HF_ENDPOINT or $MODELSCOPE_ENDPOINT, "
                          "else the hub)")
    download.add_argument("--out", help="destination folder (default: the library, $LMSTATION_HOME/models/ORG--NAME)")
    download.add_argument("--variant", help="the quantization variant to take, e.g. Q4_K_M or fp16")
    download.add_argument("--format", action="append", help="a weight format to take instead of the preferred one "
                          "(safetensors, else bin, else gguf); repeatable")
    download.add_argument("--all", action="store_true", help="every file of the repository")

    quant = sub.add_parser("quantize", help="write a 4-bit AWQ checkpoint of a model (Hugging Face AWQ format)")
    quant.add_argument("model", nargs="?", help="model folder or library name (default: the starter model)")
    quant.add_argument("--out", required=True, help="the new checkpoint's folder (must not exist)")
    quant.add_argument("--method", choices=["awq", "rtn"], default="awq",
                       help="awq (activation-aware scales and clipping) or rtn (plain round-to-nearest, a baseline)")
    quant.add_argument("--group-size", type=int, default=128, help="input channels per quantization group")
    quant.add_argument("--calib-samples", type=int, default=128)
    quant.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration sample")
    quant.add_argument("--calib-data", nargs="+", metavar="FILE",
                       help=".txt or .jsonl (\"text\" field) files (default: text that ships with Python)")
    quant.add_argument("--device", default="auto", help="auto | cpu | cuda")

    serve = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/chat/completions ...) on a model")
    _add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond this machine: needs --api-key)")
    serve.add_argument("--port", type=int, default=23333)
    serve.add_argument("--api-key", help="clients must send 'Authorization: Bearer KEY'")
    serve.add_argument("--cors-origin", action="append", help="a browser origin allowed to call it; repeatable")

    ppl = sub.add_parser("eval-ppl", help="perplexity on held-out text (an fp16/bf16/fp32 or AWQ model)")
    ppl.add_argument("model", nargs="?", help="model folder or library name (default: the starter model)")
    ppl.add_argument("--data", help="a .txt or .jsonl file (default: the held-out part of Python's own text)")
    ppl.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ppl.add_argument("--windows", type=int, default=40, help="windows of --seqlen tokens, evenly spread")
    ppl.add_argument("--seqlen", type=int, default=512)
    ppl.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES,
                     help="run through LM Station's engine with this KV cache (default: transformers' forward)")
    ppl.add_argument("--chunk", type=int, default=64, help="with --kv-cache-dtype: tokens prefilled per step")

    add_cluster_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # In a frozen app (PyInstaller) the processes spawned for tensor-parallel ranks and for
    # quantization start this executable again: this hands them to multiprocessing.
    multiprocessing.freeze_support()
    args = build_parser().parse_args(argv)
    try:
        if args.self_test:
            from pathlib import Path

            from app.selftest import run_self_test

            return run_self_test(Path(args.report) if args.report else None)
        if args.command is None:
            from app.ui.app import run_app

            return run_app()
        if args.command == "chat":
            from app.commands.chat import run_chat

            return run_chat(args)
        if args.command == "bench":
            from app.commands.bench import run_bench

            return run_bench(args)
        if args.command == "download":
            from app.commands.download import run_download

            return run_download(args)
        if args.command == "quantize":
            from app.commands.quantize import run_quantize

            return run_quantize(args)
        if args.command == "serve":
            from app.commands.serve import run_serve

            return run_serve(args)
        if args.command == "eval-ppl":
            from app.commands.eval_ppl import run_eval_ppl

            return run_eval_ppl(args)
        if args.command == "cluster":
            from app.commands.cluster import run_cluster

            return run_cluster(args)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
