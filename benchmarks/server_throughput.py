"""The same seeded workload served in-process and through the OpenAI-compatible server (the
official openai client, all requests in flight at once), in one run: output tokens per second of
each, and their ratio. Prompts are random token ids decoded to text, lengths ShareGPT-like, each
reply exactly its length (greedy, end-of-sequence ignored).

Usage: python benchmarks/server_throughput.py [MODEL] [--requests 64] [--device auto]
       [--max-input 512] [--max-output 128]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

from app.engine import Engine, EngineConfig, GenerationConfig
from app.engine.bench import sharegpt_like_lengths
from app.library import resolve_model
from app.server import ServerConfig, ServerThread


def workload(tokenizer, args) -> list[tuple[str, int]]:
    """(prompt text, reply length) per request."""
    g = torch.Generator().manual_seed(0)
    out = []
    for prompt_len, reply_len in sharegpt_like_lengths(args.requests, seed=0):
        ids = torch.randint(1000, tokenizer.vocab_size - 1000, (min(prompt_len, args.max_input),), generator=g)
        out.append((tokenizer.decode(ids.tolist()), min(reply_len, args.max_output)))
    return out


def in_process(engine: Engine, requests: list[tuple[str, int]]) -> tuple[float, int]:
    started = time.perf_counter()
    handles = [engine.submit(prompt, gen=GenerationConfig(temperature=0, max_new_tokens=n, ignore_eos=True))
               for prompt, n in requests]
    tokens = sum(len(h.result().token_ids) for h in handles)
    return time.perf_counter() - started, tokens


def through_openai(base_url: str, model: str, requests: list[tuple[str, int]]) -> tuple[float, int]:
    """(seconds, reply tokens) for the requests sent at once with the openai client to base_url."""
    from openai import AsyncOpenAI

    async def run() -> int:
        client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=3600)
        replies = await asyncio.gather(*(client.completions.create(
            model=model, prompt=prompt, max_tokens=n, temperature=0, extra_body={"ignore_eos": True})
            for prompt, n in requests))
        await client.close()
        return sum(r.usage.completion_tokens for r in replies)

    started = time.perf_counter()
    tokens = asyncio.run(run())
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-input", type=int, default=512)
    parser.add_argument("--max-output", type=int, default=128)
    args = parser.parse_args()
    model_dir = resolve_model(args.model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with Engine() as engine:
        # No prefix cache: the second run would find the first one's prompts cached.
        stats = engine.load(EngineConfig(model=model_dir, device=args.device, max_num_seqs=args.requests,
                                         enable_prefix_caching=False)).result()
        requests = workload(tokenizer, args)
        in_process(engine, requests[:4])  # warm-up
        server = ServerThread(engine, ServerConfig(port=0, max_requests=max(256, args.requests)))
        server.start()
        try:
            local_s, local_tokens = in_process(engine, requests)
            served_s, served_tokens = through_openai(server.base_url, model_dir.name, requests)
        finally:
            server.stop()
    local, served = local_tokens / local_s, served_tokens / served_s
    print(f"{model_dir.name} on {stats['device']} ({stats['dtype']}), {args.requests} requests, "
          f"{local_tokens} output tokens")
    print(f"in-process:     {local:8.1f} output tok/s ({local_s:.2f} s)")
    print(f"through server: {served:8.1f} output tok/s ({served_s:.2f} s, {served_tokens} tokens)")
    print(f"server / in-process: {served / local:.1%}")


if __name__ == "__main__":
    main()
