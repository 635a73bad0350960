"""Fixtures for the quantization tests: tiny models whose layer widths divide group size 64."""

from __future__ import annotations

import pytest

QUANT_SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, initializer_range=0.02)


@pytest.fixture(scope="session")
def quant_model(tiny_model_factory):
    """(folder, HF model) of a tiny random model for variant ``llama`` (no GQA: v->o scales are searched)
    or ``qwen2`` (GQA, tied embeddings)."""

    def make(variant: str):
        kv_heads = 4 if variant == "llama" else 2
        return tiny_model_factory(variant, num_key_value_heads=kv_heads, **QUANT_SHAPE)

    return make
