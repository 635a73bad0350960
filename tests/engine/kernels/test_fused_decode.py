"""The fused decode layer (kernels/triton/fused_decode.py) against the same layer on the torch
reference ops: its output, its residual and the keys/values it writes into the paged cache.

Under TRITON_INTERPRET=1 on CPU (small shapes), and on the GPU for real.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if sys.platform != "linux":  # the test extra installs Triton on Linux only; CI is Linux
    pytest.skip("Triton is installed on Linux only", allow_module_level=True)

from app.engine.attention_metadata import AttentionMetadata  # noqa: E402
from app.engine.config import EngineConfig  # noqa: E402
from app.engine.kernels import triton as tk  # noqa: E402
from app.engine.loader.model_loader import load  # noqa: E402

assert tk.available()  # a CUDA device, or the interpreter switched on above


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {"bfloat16": 1e-2, "float16": 1e-2, "float32": 1e-4}
BLOCK = 16


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and torch.isfinite(out).all()
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _loaded(folder, dtype: str, kernels: str):
    config = EngineConfig(model=folder, device=DEVICE, dtype=dtype, kernels=kernels, block_size=BLOCK,
                          num_cache_blocks=24)
    return load(config, folder)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("variant", ["llama-bias", "qwen3"])  # biases; q/k norm with tied embeddings
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_layer_matches_reference(variant, dtype, with_residual, tiny_model_factory):
    rows = 1
    folder, _ = tiny_model_factory(variant)
    # The reference computes in fp32 on exactly our (rounded) weights, caches and inputs: the
    # error measured is ours alone, not the reference's own bf16 rounding.
    ours, ref = _loaded(folder, dtype, "triton"), _loaded(folder, "float32", "torch")
    torch_dtype = ours.dtype
    # Weights scaled as in trained models (the tiny checkpoints' std 0.2 makes attention so
    # sharp that any bf16 rounding flips it), norm weights around 1.
    g = torch.Generator().manual_seed(rows)
    with torch.no_grad():
        for (name, p_ours), p_ref in zip(ours.model.named_parameters(), ref.model.parameters()):
            noise = torch.randn(p_ours.shape, generator=g)
            p_ours.copy_(1 + 0.2 * noise if name.endswith("norm.weight") else 0.05 * noise)
            p_ref.copy_(p_ours)
    cfg = ours.config
    # Random, never-zero caches (the same in both), contexts of 1..70 tokens over shuffled blocks.
    for (k_ours, v_ours), (k_ref, v_ref) in zip(ours.cache.layers, ref.cache.layers):
        for a, b in ((k_ours, k_ref), (v_ours, v_ref)):
            fill = (torch.rand(a.shape, generator=g) + 0.1) * torch.where(torch.rand(a.shape, generator=g) < 0.5, -1, 1)
            a.copy_(fill.to(torch_dtype))
            b.copy_(a.float())
    lens = torch.randint(1, 70, (rows,), generator=g)
    lens[0] = 70
    tables = torch.stack([torch.randperm(24, generator=g)[:5] for _ in range(rows)])
    positions = lens - 1
    slots = tables[torch.arange(rows), positions // BLOCK] * BLOCK + positions % BLOCK
    dev = ours.device
    x = (torch.randn(rows, cfg.hidden_size, generator=g) + 0.1).to(torch_dtype).to(dev)
    residual = (torch.randn(rows, cfg.hidden_size, generator=g) + 0.1).to(torch_dtype).to(dev) if with_residual else None
    cos, sin = ours.model.rotary(positions.to(dev), None, torch_dtype)
    tables, lens, slots = tables.to(dev), lens.to(dev), slots.to(dev)

    ours.model.bind_cache(ours.cache.layers)
    assert ours.model.fused_layers is not None
    step = ours.model.ops.decode_step(cos, sin, slots, tables, lens)
    out, new_residual = ours.model.fused_layers[0](step, x, residual)

    real = slots >= 0
    meta = AttentionMetadata(
        num_seqs=int(real.sum()), num_decodes=int(real.sum()), query_starts=list(range(int(real.sum()))),
        query_lens=[1] * int(real.sum()), context_lens=lens[real].tolist(), slot_mapping=slots[real],
        block_tables=tables[real], decode_context_lens=lens[real],
        query_start_loc=torch.arange(int(real.sum()) + 1, dtype=torch.int32, device=dev),
        context_lens_t=lens[real].to(torch.int32), max_query_len=1,
    )
    ref_out, ref_residual = ref.model.model.layers[0](
        x[real].float(), None if residual is None else residual[real].float(), cos[real].float(), sin[real].float(),
        meta, ref.cache.layers[0],
    )
    tol = TOLERANCE[dtype]
    assert rel_error(out[real].float(), ref_out) <= tol
    assert rel_error(new_residual[real].float(), ref_residual) <= tol
    for ours_cache, ref_cache in zip(ours.cache.layers[0], ref.cache.layers[0]):
        assert rel_error(ours_cache.float(), ref_cache) <= tol
        written = ours_cache.flatten(0, 1)[slots[real]].float()
        assert rel_error(written, ref_cache.flatten(0, 1)[slots[real]]) <= tol


def test_padding_writes_nothing(tiny_model_factory):
    """A CUDA graph's padding row (slot -1) must leave the cache as it was."""
    folder, _ = tiny_model_factory("llama-bias")
    ours = _loaded(folder, "float32", "triton")
    for k, v in ours.cache.layers:
        k.fill_(0.5)
        v.fill_(0.5)
    ours.model.bind_cache(ours.cache.layers)
    dev = ours.device
    cos, sin = ours.model.rotary(torch.tensor([3], device=dev), None, ours.dtype)
    step = ours.model.ops.decode_step(cos, sin, torch.tensor([-1], device=dev), torch.tensor([[0]], device=dev),
                                      torch.tensor([1], device=dev))
    x = torch.randn(1, ours.config.hidden_size, device=dev)
    out, _ = ours.model.fused_layers[0](step, x, None)
    assert torch.isfinite(out).all()
    assert all(bool((c == 0.5).all()) for c in ours.cache.layers[0])


def test_several_sequences_take_the_per_op_path(tiny_model_factory):
    folder, _ = tiny_model_factory("qwen3")
    ours = _loaded(folder, "float32", "triton")
    cos = torch.zeros(2, 16, device=ours.device)
    assert ours.model.ops.decode_step(cos, cos, None, None, None) is None
    assert ours.model.ops.decode_step(cos[:1], cos[:1], None, None, None) is not None


def test_a_wider_hidden_state_is_taken_in_the_model_dtype(tiny_model_factory):
    """A 4-bit layer hands on its fp32 residual stream as (hidden, None) (w4a16_decode); a dense
    fused layer after it (a model whose checkpoint left a layer unquantized) computes from that
    hidden state rounded to the model dtype, as if it had come so."""
    folder, _ = tiny_model_factory("llama-bias")
    ours = _loaded(folder, "bfloat16", "triton")
    ours.model.bind_cache(ours.cache.layers)
    dev = ours.device
    cos, sin = ours.model.rotary(torch.tensor([3], device=dev), None, ours.dtype)
    step = ours.model.ops.decode_step(cos, sin, torch.tensor([3], device=dev), torch.tensor([[0]], device=dev),
                                      torch.tensor([4], device=dev))
    hidden = torch.randn(1, ours.config.hidden_size, generator=torch.Generator().manual_seed(5)).to(dev) + 0.1
    wide_out, wide_residual = ours.model.fused_layers[0](step, hidden, None)
    out, residual = ours.model.fused_layers[0](step, hidden.to(torch.bfloat16), None)
    assert wide_out.dtype == torch.bfloat16
    assert torch.equal(wide_out, out) and torch.equal(wide_residual, residual)
