"""cpu_decode's fused layer against DecoderLayer.forward with the torch reference ops."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch

from app.engine.attention_metadata import AttentionMetadata
from app.engine.kernels import REFERENCE_OPS, cpu_decode, cpu_library, ops_for
from app.engine.layers.rotary import RotaryEmbedding
from app.engine.models.config import ModelConfig, RopeConfig
from app.engine.models.decoder import DecoderLayer

TOLERANCE = {torch.bfloat16: 1e-2, torch.float32: 1e-4}
BLOCK_SIZE = 16
CONTEXT_LENS = [200, 1, 64, 17]  # one row each, deliberately unsorted

BASE = ModelConfig(
    architecture="test", vocab_size=32, hidden_size=128, intermediate_size=160, num_layers=1, num_heads=4,
    num_kv_heads=4, head_dim=64, rms_norm_eps=1e-6, max_position_embeddings=4096, rope=RopeConfig(),
)
CONFIGS = {
    "gqa1": BASE,
    "gqa3": replace(BASE, hidden_size=192, num_heads=9, num_kv_heads=3),
    "gqa4-d128": replace(BASE, hidden_size=256, num_heads=8, num_kv_heads=2, head_dim=128),
    "odd-hidden": replace(BASE, hidden_size=72, intermediate_size=99, num_heads=3, num_kv_heads=1),
    "biases": replace(BASE, num_kv_heads=2, qkv_bias=True, o_bias=True, mlp_bias=True),
    "qk-norm": replace(BASE, num_kv_heads=2, qk_norm=True, rms_norm_eps=1e-5),
    "window": replace(BASE, num_kv_heads=1, sliding_window=24),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def nonzero(*shape: int, gen: torch.Generator, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Random values with |v| >= 0.1 * scale, so no term silently drops out."""
    t = torch.randn(*shape, generator=gen)
    return ((t + torch.where(t >= 0, 0.1, -0.1)) * scale).to(dtype)


def make_layer(cfg: ModelConfig, dtype: torch.dtype, seed: int, packed: bool = False) -> DecoderLayer:
    """Random weights; ``packed``: the engine's CPU layer (cpu_linear ops, weights packed)."""
    layer = DecoderLayer(cfg, ops_for(torch.device("cpu")) if packed else REFERENCE_OPS, dtype, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    for name, p in layer.named_parameters():
        fan_in = p.shape[-1] if p.dim() == 2 and "norm" not in name else 1
        p.copy_(nonzero(*p.shape, gen=gen, dtype=dtype, scale=fan_in**-0.5))
    if packed:
        for module in layer.modules():
            if hasattr(module, "pack"):
                module.pack()
    return layer


@dataclass
class Batch:
    """A decode step over a paged cache with random contents and shuffled, scattered blocks."""

    meta: AttentionMetadata
    cos: torch.Tensor
    sin: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor

    def step(self) -> cpu_decode.DecodeStep:
        m = self.meta
        return cpu_decode.DecodeStep(self.cos, self.sin, m.slot_mapping, m.block_tables, m.decode_context_lens)


def make_batch(cfg: ModelConfig, dtype: torch.dtype, lens: list[int], seed: int) -> Batch:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    needed = [-(-n // BLOCK_SIZE) for n in lens]
    width = max(needed) + 2  # padded like the engine's tables
    blocks = list(range(sum(needed) + 5))
    rng.shuffle(blocks)
    tables = torch.zeros(len(lens), width, dtype=torch.int64)
    for i, count in enumerate(needed):
        tables[i, :count] = torch.tensor([blocks.pop() for _ in range(count)])
    positions = torch.tensor(lens) - 1
    slots = tables[torch.arange(len(lens)), positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    meta = AttentionMetadata(
        num_seqs=len(lens), num_decodes=len(lens), query_starts=list(range(len(lens))), query_lens=[1] * len(lens),
        context_lens=list(lens), slot_mapping=slots, block_tables=tables, decode_context_lens=torch.tensor(lens),
    )
    rotary = RotaryEmbedding(cfg.head_dim, cfg.rope, cfg.max_position_embeddings, max(lens), dtype, torch.device("cpu"))
    cos, sin = rotary(positions, None, dtype)
    shape = (sum(needed) + 5, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim)
    return Batch(meta, cos, sin, nonzero(*shape, gen=gen, dtype=dtype), nonzero(*shape, gen=gen, dtype=dtype))


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def isa_levels() -> list[int]:
    if not cpu_decode.available():
        return []
    return list(range(cpu_library.library().cdll.lms_max_isa() + 1))


@pytest.fixture(params=isa_levels() or [None], ids=lambda level: f"isa{level}")
def isa(request: pytest.FixtureRequest) -> Iterator[int]:
    """Forces each instruction set in turn, restoring the best one afterwards."""
    if request.param is None:
        pytest.skip(f"C kernels unavailable: {cpu_decode.unavailable_reason()}")
    lib = cpu_library.library().cdll
    lib.lms_set_isa(request.param)
    yield request.param
    lib.lms_set_isa(-1)


def check_against_reference(cfg: ModelConfig, dtype: torch.dtype, lens: list[int], seed: int,
                            packed: bool = False) -> None:
    layer = make_layer(cfg, dtype, seed, packed)
    batch = make_batch(cfg, dtype, lens, seed)
    fused = cpu_decode.DecodeLayer(layer, batch.k_cache, batch.v_cache)
    if packed:  # the engine's packed weights are shared, not copied
        assert fused._args.w_qkv == layer.self_attn.qkv_proj.packed.data.data_ptr()
    ref_cache = (batch.k_cache.clone(), batch.v_cache.clone())
    gen = torch.Generator().manual_seed(seed + 1)
    x = nonzero(len(lens), cfg.hidden_size, gen=gen, dtype=dtype)
    for residual in (None, nonzero(len(lens), cfg.hidden_size, gen=gen, dtype=dtype)):  # first layer, then later ones
        with torch.inference_mode():
            want = layer(x, residual, batch.cos, batch.sin, batch.meta, ref_cache)
        got = cpu_decode.run(fused, batch.step(), x, residual)
        for g, w, name in zip(got, want, ("out", "residual")):
            assert g.shape == w.shape and g.dtype == dtype, name
            assert rel_error(g, w) <= TOLERANCE[dtype], (name, residual is None, rel_error(g, w))
        # the new keys/values agree with the reference's; every other slot is untouched
        slots = batch.meta.slot_mapping
        for mine, ref in zip((batch.k_cache, batch.v_cache), ref_cache):
            flat_mine, flat_ref = mine.flatten(0, 1), ref.flatten(0, 1)
            assert rel_error(flat_mine[slots], flat_ref[slots]) <= TOLERANCE[dtype]
            keep = torch.ones(flat_mine.shape[0], dtype=torch.bool)
            keep[slots] = False
            assert torch.equal(flat_mine[keep], flat_ref[keep])
        ref_cache[0].copy_(batch.k_cache)  # same cache for the next round
        ref_cache[1].copy_(batch.v_cache)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", CONFIGS)
def test_matches_reference_layer(isa: int, name: str, dtype: torch.dtype) -> None:
    check_against_reference(CONFIGS[name], dtype, CONTEXT_LENS, seed=len(name))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_batch_16_smollm_shape(dtype: torch.dtype) -> None:
    """SmolLM2-135M's layer shape at batch 16: more rows than one register chunk of the GEMV."""
    if not cpu_decode.available():
        pytest.skip(cpu_decode.unavailable_reason())
    cfg = replace(BASE, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3)
    lens = random.Random(0).choices(range(1, 300), k=16)
    check_against_reference(cfg, dtype, lens, seed=16)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_engine_packed_layer(dtype: torch.dtype) -> None:
    """A layer as the engine loads it on CPU: against its own (packed-linear) torch path."""
    if not cpu_decode.available():
        pytest.skip(cpu_decode.unavailable_reason())
    check_against_reference(CONFIGS["biases"], dtype, CONTEXT_LENS, seed=5, packed=True)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_threads_agree_with_single_thread(dtype: torch.dtype) -> None:
    if not cpu_decode.available():
        pytest.skip(cpu_decode.unavailable_reason())
    cfg = CONFIGS["gqa3"]
    layer = make_layer(cfg, dtype, 1)
    batch = make_batch(cfg, dtype, [300, 200, 5], 1)
    fused = cpu_decode.DecodeLayer(layer, batch.k_cache, batch.v_cache)
    x = nonzero(3, cfg.hidden_size, gen=torch.Generator().manual_seed(2), dtype=dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = cpu_decode.run(fused, batch.step(), x, None)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(cpu_decode.run(fused, batch.step(), x, None), single):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_arguments_raise_and_change_nothing() -> None:
    if not cpu_decode.available():
        pytest.skip(cpu_decode.unavailable_reason())
    cfg, dtype = CONFIGS["gqa1"], torch.float32
    batch = make_batch(cfg, dtype, [5, 40], 3)
    fused = cpu_decode.DecodeLayer(make_layer(cfg, dtype, 3), batch.k_cache, batch.v_cache)
    x = nonzero(2, cfg.hidden_size, gen=torch.Generator().manual_seed(3), dtype=dtype)
    m = batch.meta
    before = batch.k_cache.clone()
    blocks = batch.k_cache.shape[0]
    bad_steps = {
        "slot": (m.slot_mapping + blocks * BLOCK_SIZE, m.block_tables, m.decode_context_lens),
        "context": (m.slot_mapping, m.block_tables, torch.tensor([5, 0])),
        "beyond table": (m.slot_mapping, m.block_tables, torch.tensor([5, m.block_tables.shape[1] * BLOCK_SIZE + 1])),
        "block": (m.slot_mapping, m.block_tables.clone().fill_(blocks), m.decode_context_lens),
    }
    for what, (slots, tables, lens) in bad_steps.items():
        with pytest.raises(ValueError):
            cpu_decode.run(fused, cpu_decode.DecodeStep(batch.cos, batch.sin, slots, tables, lens), x, None)
        assert torch.equal(batch.k_cache, before), what
    with pytest.raises(ValueError):  # bf16 step for an fp32 layer
        step = cpu_decode.DecodeStep(batch.cos.bfloat16(), batch.sin.bfloat16(), m.slot_mapping, m.block_tables,
                                     m.decode_context_lens)
        cpu_decode.run(fused, step, x, None)
    with pytest.raises(ValueError):
        cpu_decode.run(fused, batch.step(), x[:1], None)
    with pytest.raises(ValueError):
        cpu_decode.DecodeStep(batch.cos, batch.sin, m.slot_mapping.int(), m.block_tables, m.decode_context_lens)
    with pytest.raises(ValueError):
        cpu_decode.DecodeLayer(make_layer(cfg, dtype, 3), batch.k_cache[..., :32], batch.v_cache[..., :32])


def test_empty_step() -> None:
    if not cpu_decode.available():
        pytest.skip(cpu_decode.unavailable_reason())
    cfg, dtype = CONFIGS["gqa1"], torch.bfloat16
    batch = make_batch(cfg, dtype, [3], 4)
    fused = cpu_decode.DecodeLayer(make_layer(cfg, dtype, 4), batch.k_cache, batch.v_cache)
    none = torch.zeros(0, dtype=torch.int64)
    step = cpu_decode.DecodeStep(batch.cos[:0], batch.sin[:0], none, batch.meta.block_tables[:0], none)
    out, residual = cpu_decode.run(fused, step, torch.zeros(0, cfg.hidden_size, dtype=dtype), None)
    assert out.shape == residual.shape == (0, cfg.hidden_size)


def test_unavailable_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_library, "library", lambda: cpu_library.Library(None, "forced off by the test"))
    assert not cpu_decode.available() and not cpu_decode.available(torch.bfloat16)
    assert cpu_decode.unavailable_reason() == "forced off by the test"
    with pytest.raises(RuntimeError, match="forced off"):
        cpu_decode.DecodeLayer(make_layer(BASE, torch.float32, 0), torch.zeros(1, 16, 4, 64), torch.zeros(1, 16, 4, 64))
    monkeypatch.undo()
    if cpu_decode.available():
        assert cpu_decode.available(torch.float32) and not cpu_decode.available(torch.float16)
        assert cpu_decode.unavailable_reason(torch.bfloat16) == ""
        assert "float16" in cpu_decode.unavailable_reason(torch.float16)
