"""M-RoPE (Qwen2-VL): our rotary tables for [3, T] positions turn queries and keys as HF's
multimodal rotary does; with the three positions equal it is plain RoPE."""

from __future__ import annotations

import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding, apply_rotary_pos_emb

from app.engine.layers.rotary import RotaryEmbedding
from app.engine.models.config import RopeConfig

HEAD_DIM, SECTION = 16, (2, 3, 3)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Our convention: cos/sin [T, head_dim/2], pairs (i, i + head_dim/2)."""
    a, b = x.chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


def test_mrope_matches_hf() -> None:
    rotary = RotaryEmbedding(HEAD_DIM, RopeConfig(theta=1000.0, mrope_section=SECTION), 64, 64, torch.float32,
                             torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 64, (3, 10), generator=g)
    q, k = torch.randn(10, 4, HEAD_DIM, generator=g), torch.randn(10, 4, HEAD_DIM, generator=g)
    cos, sin = rotary(positions, None, torch.float32)

    hf = Qwen2VLRotaryEmbedding(Qwen2VLTextConfig(hidden_size=64, num_attention_heads=4, rope_parameters={
        "rope_type": "default", "rope_theta": 1000.0, "mrope_section": list(SECTION)}))
    hf_cos, hf_sin = hf(q, positions[:, None, :])  # [1, T, head_dim]
    hq, hk = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], hf_cos, hf_sin)
    assert torch.allclose(rotate(q, cos, sin), hq[0].transpose(0, 1), atol=1e-5)
    assert torch.allclose(rotate(k, cos, sin), hk[0].transpose(0, 1), atol=1e-5)

    same = positions[:1].expand(3, -1)
    plain = rotary(positions[0], None, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(rotary(same, None, torch.float32), plain))
