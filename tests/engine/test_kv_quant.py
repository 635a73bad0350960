"""int8 / int4 KV cache (kv_quant): the rows against a from-the-spec reader, the engine against HF
with a quantized cache, the memory it saves, and its composition with prefix caching, AWQ
weights and tensor parallelism."""

from __future__ import annotations

import pytest
import torch

from app.engine.config import GenerationConfig
from app.engine.kv_cache import bytes_per_block
from app.engine.kv_quant import (
    CacheFormat, Packing, blocks_of_rows, dequantize_rows, quantize_rows, rotation, rows_of_blocks, store_rows,
)
from app.engine.loader.model_loader import read_config
from tests.tiny_models import make_core

PROMPT = list(range(3, 60))


def sylvester(n: int) -> torch.Tensor:
    """The n x n Hadamard matrix by its definition: entry (i, j) is (-1)^popcount(i & j), / sqrt(n)."""
    i = torch.arange(n)
    signs = torch.tensor([[(-1) ** bin(a & b).count("1") for b in i.tolist()] for a in i.tolist()], dtype=torch.float32)
    return signs / n**0.5


def test_the_turn_is_orthonormal_hadamard() -> None:
    assert torch.allclose(rotation(64, torch.device("cpu")), sylvester(64))
    r = rotation(96, torch.device("cpu"))  # 64 + 32
    assert torch.allclose(r[:64, :64], sylvester(64)) and torch.allclose(r[64:, 64:], sylvester(32))
    assert torch.allclose(r @ r.T, torch.eye(96), atol=1e-6) and r[:64, 64:].abs().sum() == 0


def read_by_the_spec(rows: torch.Tensor, dim: int, bits: int, unit_bits: int) -> torch.Tensor:
    """The integers of uint8 rows as the layout describes them: W little-endian units of U bits,
    field f of unit u (bits f*b ..) holding element f * W + u."""
    width = dim * bits // unit_bits
    out = torch.zeros(*rows.shape[:-1], dim, dtype=torch.long)
    for u in range(width):
        unit = sum(rows[..., u * unit_bits // 8 + i].long() << (8 * i) for i in range(unit_bits // 8))
        for f in range(unit_bits // bits):
            out[..., f * width + u] = (unit >> (f * bits)) & ((1 << bits) - 1)
    return out


@pytest.mark.parametrize("bits,dim,unit_bits", [(8, 128, 32), (8, 64, 16), (8, 16, 8), (4, 256, 32), (4, 128, 16),
                                                (4, 64, 8), (4, 96, 8)])
def test_rows_follow_the_layout(bits, dim, unit_bits) -> None:
    """Each row: the integers of y = x R packed in planes, then fp16 scale and minimum; y ≈ q *
    scale + min within half a step of its range, and x = y R."""
    assert Packing.of(dim, bits).unit_bits == unit_bits
    x = torch.randn(7, 3, dim, generator=torch.Generator().manual_seed(bits)) * 3 + 1
    rows = quantize_rows(x, bits)
    width = dim * bits // 8
    assert rows.dtype == torch.uint8 and rows.shape == (7, 3, width + 4)
    scale = rows[..., width : width + 2].contiguous().view(torch.float16).float()
    low = rows[..., width + 2 :].contiguous().view(torch.float16).float()
    spec = read_by_the_spec(rows, dim, bits, unit_bits).float() * scale + low
    assert torch.allclose(dequantize_rows(rows, dim, torch.float32, turned=True), spec)
    assert torch.allclose(dequantize_rows(rows, dim, torch.float32), spec @ rotation(dim, torch.device("cpu")),
                          atol=1e-5)
    y = x @ rotation(dim, torch.device("cpu"))
    step = (y.amax(-1, keepdim=True) - y.amin(-1, keepdim=True)) / ((1 << bits) - 1)
    assert ((spec - y).abs() <= step * 0.5 + 1e-2 * step + 1e-3).all()


def test_a_block_holds_its_integers_then_its_pairs() -> None:
    """In a quantized cache block: the integers of (slot 0, head 0), (0, 1), ... each 16-byte
    aligned, then the (scale, minimum) pairs in the same order; store_rows writes there and
    rows_of_blocks reads the rows back."""
    blocks, block_size, heads, dim = 3, 4, 3, 64
    rows = quantize_rows(torch.randn(5, heads, dim, generator=torch.Generator().manual_seed(5)), 8)
    cache = torch.zeros(blocks, block_size, heads, dim + 4, dtype=torch.uint8)
    slots = torch.tensor([0, 5, 6, 11, 2])
    store_rows(cache, slots, rows)
    flat = cache.view(blocks, -1)
    for row, slot in zip(rows, slots.tolist()):
        block, offset = divmod(slot, block_size)
        for h in range(heads):
            at = (offset * heads + h) * dim
            assert at % 16 == 0 and torch.equal(flat[block, at : at + dim], row[h, :dim])
            pair = block_size * heads * dim + (offset * heads + h) * 4
            assert torch.equal(flat[block, pair : pair + 4], row[h, dim:])
        assert torch.equal(rows_of_blocks(cache)[block, offset], row)
    assert torch.equal(rows_of_blocks(blocks_of_rows(rows_of_blocks(cache))), rows_of_blocks(cache))


def test_the_gpu_kernels_refuse_planes_narrower_than_16() -> None:
    """The Triton kernels' dots take planes of 16 elements at least: int4 rows of head size 16
    would have 8. The torch reference takes them (the tiny test models' head size is 16)."""
    from app.engine.kernels import REFERENCE_OPS, _triton_ops, with_cache_format

    int4, int8 = CacheFormat.of("int4", torch.bfloat16), CacheFormat.of("int8", torch.bfloat16)
    with pytest.raises(ValueError, match="int4 KV cache for head sizes of 32 or more; this model's is 16"):
        with_cache_format(_triton_ops(), int4, torch.bfloat16, 16)
    assert "int4 KV cache" in with_cache_format(_triton_ops(), int4, torch.bfloat16, 32).name
    assert "int8 KV cache" in with_cache_format(_triton_ops(), int8, torch.bfloat16, 16).name
    assert "int4 KV cache" in with_cache_format(REFERENCE_OPS, int4, torch.bfloat16, 16).name


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_engine_with_a_quantized_cache_stays_near_hf(variant, tiny_model_factory) -> None:
    """Chunked prefill and 16 decode steps read the quantized rows: int8 stays within a few % of
    the logits' spread of HF's (fp32), int4 within a third, and int4 errs more than int8."""
    folder, hf = tiny_model_factory(variant)
    errors = {}
    for kv in ("int8", "int4"):
        core = make_core(folder, kv_cache_dtype=kv, block_size=8, num_cache_blocks=64, prefill_chunk_size=16)
        assert core.loaded.cache.layers[0][0].dtype == torch.uint8 and f"{kv} KV cache" in core.loaded.kernels
        deltas = []
        core.add_request(PROMPT, GenerationConfig(temperature=0, max_new_tokens=16, ignore_eos=True,
                                                  output_logits=True), deltas.append)
        while core.has_work():
            core.step()
        ours = torch.stack(deltas[-1].logits)
        tokens = [t for d in deltas for t in d.token_ids]
        with torch.no_grad():
            ref = hf(torch.tensor([PROMPT + tokens])).logits[0, len(PROMPT) - 1 : -1]
        errors[kv] = ((ours - ref).abs(), ref.std().item())
    (err8, std), (err4, _) = errors["int8"], errors["int4"]
    assert 0 < err8.mean() <= 0.03 * std and err8.max() <= 0.2 * std
    assert err8.mean() < err4.mean() <= 0.3 * std


def test_the_same_memory_holds_2x_and_3_5x_the_tokens(tmp_path) -> None:
    """Llama-3-8B's shape (head size 128): int8 rows take 132 bytes for bf16's 256, int4 68."""
    from app.engine.bench_shapes import write_shape_folder

    cfg = read_config(write_shape_folder("llama-3-8b", tmp_path / "shape"))
    bf16 = bytes_per_block(cfg, 64, CacheFormat.of("auto", torch.bfloat16))
    assert bf16 / bytes_per_block(cfg, 64, CacheFormat.of("int8", torch.bfloat16)) >= 1.9
    assert bf16 / bytes_per_block(cfg, 64, CacheFormat.of("int4", torch.bfloat16)) >= 3.5


def test_a_bf16_cache_under_an_fp32_model(tiny_model_factory) -> None:
    folder, hf = tiny_model_factory("llama")
    core = make_core(folder, kv_cache_dtype="bfloat16", block_size=8, num_cache_blocks=64, prefill_chunk_size=16)
    assert core.loaded.cache.layers[0][0].dtype == torch.bfloat16
    deltas = []
    core.add_request(PROMPT, GenerationConfig(temperature=0, max_new_tokens=4, ignore_eos=True, output_logits=True),
                     deltas.append)
    while core.has_work():
        core.step()
    tokens = [t for d in deltas for t in d.token_ids]
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT + tokens])).logits[0, len(PROMPT) - 1 : -1]
    assert (torch.stack(deltas[-1].logits) - ref).abs().mean() <= 0.03 * ref.std()


def test_prefix_cache_reuses_quantized_blocks(tiny_model_factory) -> None:
    """The same prompt twice: the second finds its blocks cached (stats), and its logits stay within
    int8's error of the first's (the first attended to its prompt's exact keys, the second reads
    the cached prefix's quantized rows)."""
    folder, _ = tiny_model_factory("llama")
    core = make_core(folder, kv_cache_dtype="int8", block_size=8, num_cache_blocks=64, prefill_chunk_size=16)
    finals = []
    for _ in range(2):
        deltas = []
        core.add_request(PROMPT, GenerationConfig(temperature=0, max_new_tokens=4, ignore_eos=True,
                                                  output_logits=True), deltas.append)
        while core.has_work():
            core.step()
        finals.append(deltas[-1])
    assert finals[0].stats.cached_prompt_tokens == 0 and finals[1].stats.cached_prompt_tokens >= 48
    first, second = torch.stack(finals[0].logits), torch.stack(finals[1].logits)
    assert (first - second).abs().max() <= 0.05 * first.std()


def test_with_awq_weights(tiny_model_factory, tmp_path) -> None:
    from tests.engine.test_awq_checkpoints import write_awq

    source, hf = tiny_model_factory("qwen2")
    write_awq(source, hf, tmp_path / "awq")
    logits = {}
    for kv in ("auto", "int8"):
        core = make_core(tmp_path / "awq", kv_cache_dtype=kv, block_size=8, num_cache_blocks=64, prefill_chunk_size=16)
        deltas = []
        core.add_request(PROMPT, GenerationConfig(temperature=0, max_new_tokens=1, ignore_eos=True,
                                                  output_logits=True), deltas.append)
        while core.has_work():
            core.step()
        logits[kv] = deltas[-1].logits[0]
    spread = logits["auto"].std()
    assert 0 < (logits["int8"] - logits["auto"]).abs().mean() <= 0.03 * spread


def test_the_command_line_offers_the_engines_choices() -> None:
    from app.cli import KV_CACHE_DTYPES as offered
    from app.engine.config import KV_CACHE_DTYPES

    assert offered == KV_CACHE_DTYPES


def test_engine_perplexity_orders_the_formats(starter_model) -> None:
    """lmstation eval-ppl --kv-cache-dtype: our engine chunk by chunk; the unquantized cache gives
    transformers' own perplexity, int8 all but the same, int4 more (two short windows here: the
    figures over the default 40 x 512 tokens are in docs/benchmarks.md)."""
    from app.engine.quant.perplexity import engine_perplexity, evaluate_perplexity

    args = dict(device="cpu", windows=2, seqlen=128)
    hf = evaluate_perplexity(starter_model, **args).perplexity
    ours = {kv: engine_perplexity(starter_model, kv, chunk=32, **args).perplexity for kv in ("auto", "int8", "int4")}
    assert abs(ours["auto"] / hf - 1) < 1e-3
    assert abs(ours["int8"] / ours["auto"] - 1) < 0.01 and ours["int4"] / ours["auto"] - 1 < 0.2
    assert abs(ours["int8"] / ours["auto"] - 1) < abs(ours["int4"] / ours["auto"] - 1)
