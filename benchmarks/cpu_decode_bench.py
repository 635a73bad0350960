"""Decode-step time of SmolLM2-135M's 30 decoder layers: torch path vs the fused CPU layer (not a test).

Random bf16 weights in SmolLM2-135M's shapes, every sequence at a 256-token context
in a paged cache of 64-token blocks. Per batch size it prints ms for one decode step
through all 30 layers (embedding, final norm and lm_head excluded: the lm_head adds
~1 ms at batch 1) for
  torch: DecoderLayer.forward with the reference ops and cpu_linear's packed linears
         (what the engine runs on CPU without the fused layer);
  fused: cpu_decode.run per layer, the DecodeStep built inside the timing;
  linears: only the 4 packed linears per layer through cpu_linear: the weight-streaming
         floor, so "fused - linears" is what the rest of the layer costs.
Methods run in interleaved rounds and the best round counts, so a burst of load
from other processes hurts all alike rather than one (memory bandwidth on shared
machines drifts over minutes: compare columns of one run, not runs).

    python benchmarks/cpu_decode_bench.py [--batches 1 16] [--context 256] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.engine.attention_metadata import AttentionMetadata  # noqa: E402
from app.engine.kernels import cpu_decode, cpu_linear, ops_for  # noqa: E402
from app.engine.layers.rotary import RotaryEmbedding  # noqa: E402
from app.engine.models.config import ModelConfig, RopeConfig  # noqa: E402
from app.engine.models.decoder import DecoderLayer  # noqa: E402

SMOLLM2 = ModelConfig(
    architecture="LlamaForCausalLM", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
    num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=8192,
    rope=RopeConfig(theta=100000.0), tie_word_embeddings=True,
)
BLOCK_SIZE = 64
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def make_layers(cfg: ModelConfig, dtype: torch.dtype) -> list[DecoderLayer]:
    """The engine's CPU layers: reference ops, linears packed for cpu_linear."""
    ops = ops_for(torch.device("cpu"))
    layers = []
    for _ in range(cfg.num_layers):
        layer = DecoderLayer(cfg, ops, dtype, torch.device("cpu"))
        for name, p in layer.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02)
        for module in layer.modules():
            if hasattr(module, "pack"):
                module.pack()
        layers.append(layer)
    return layers


def make_step(cfg: ModelConfig, dtype: torch.dtype, batch: int, context: int):
    """Metadata, cos/sin and per-layer caches for `batch` sequences at `context` tokens each."""
    blocks_per_seq = -(-context // BLOCK_SIZE)
    tables = torch.randperm(batch * blocks_per_seq).view(batch, blocks_per_seq)
    positions = torch.full((batch,), context - 1)
    slots = tables[:, -1] * BLOCK_SIZE + (context - 1) % BLOCK_SIZE
    meta = AttentionMetadata(
        num_seqs=batch, num_decodes=batch, query_starts=list(range(batch)), query_lens=[1] * batch,
        context_lens=[context] * batch, slot_mapping=slots, block_tables=tables,
        decode_context_lens=torch.full((batch,), context),
    )
    rotary = RotaryEmbedding(cfg.head_dim, cfg.rope, cfg.max_position_embeddings, context, torch.device("cpu"))
    cos, sin = rotary(positions, None, dtype)
    shape = (batch * blocks_per_seq, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim)
    caches = [(torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)) for _ in range(cfg.num_layers)]
    return meta, cos, sin, caches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10, help="steps per timed round")
    args = ap.parse_args()
    if not cpu_decode.available(DTYPES[args.dtype]):
        sys.exit(f"fused layer unavailable: {cpu_decode.unavailable_reason(DTYPES[args.dtype])}")

    cfg, dtype = SMOLLM2, DTYPES[args.dtype]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels: {cpu_linear.backend()}, "
          f"{args.dtype}, context {args.context}")
    torch.manual_seed(0)
    layers = make_layers(cfg, dtype)
    header = (f"{'batch':>5} | {'torch ms':>9} | {'fused ms':>9} | {'linears ms':>10} | {'speedup':>7} | "
              f"{'fused tok/s':>11}")
    print(header + "\n" + "-" * len(header))
    for batch in args.batches:
        meta, cos, sin, caches = make_step(cfg, dtype, batch, args.context)
        fused_layers = [cpu_decode.DecodeLayer(layer, *cache) for layer, cache in zip(layers, caches)]
        x0 = torch.randn(batch, cfg.hidden_size).to(dtype)

        def torch_step() -> None:
            x, residual = x0, None
            for layer, cache in zip(layers, caches):
                x, residual = layer(x, residual, cos, sin, meta, cache)

        def fused_step() -> None:
            step = cpu_decode.DecodeStep(cos, sin, meta.slot_mapping, meta.block_tables, meta.decode_context_lens)
            x, residual = x0, None
            for layer in fused_layers:
                x, residual = cpu_decode.run(layer, step, x, residual)

        linears = [(m.packed, m.in_features) for layer in layers for m in
                   (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)]
        inputs = {width: torch.randn(batch, width).to(dtype) for _, width in linears}

        def linears_only() -> None:
            for packed, width in linears:
                cpu_linear.linear(inputs[width], packed)

        methods: dict[str, Callable[[], None]] = {"torch": torch_step, "fused": fused_step, "linears": linears_only}
        best = dict.fromkeys(methods, float("inf"))
        with torch.inference_mode():
            for run in methods.values():
                run()
            for _ in range(args.rounds):
                for key, run in methods.items():
                    start = time.perf_counter()
                    for _ in range(args.iters):
                        run()
                    best[key] = min(best[key], (time.perf_counter() - start) / args.iters)
        t, f, w = best["torch"] * 1e3, best["fused"] * 1e3, best["linears"] * 1e3
        print(f"{batch:>5} | {t:9.2f} | {f:9.2f} | {w:10.2f} | {t / f:6.2f}x | {batch / best['fused']:11.0f}", flush=True)


if __name__ == "__main__":
    main()
