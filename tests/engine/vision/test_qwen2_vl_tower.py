"""Qwen2-VL's vision tower against HF transformers on tiny random weights: two images of
different grids (and a two-frame one) in one batch give HF's merged image tokens (fp32, <= 1e-4)."""

from __future__ import annotations

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from app.engine.vision.qwen2_vl import Qwen2VisionConfig, Qwen2VisionTower, patch_positions

TOLERANCE = 1e-4


def tiny_qwen2_vl() -> Qwen2VLForConditionalGeneration:
    vision = dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=2, hidden_size=64, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=320, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=vision, text_config=text)).eval()
    with torch.no_grad():  # attention sharp enough that positions matter (std 0.02 leaves it uniform)
        for block in model.model.visual.blocks:
            block.attn.qkv.weight.mul_(40)
    return model


def test_tower_matches_hf() -> None:
    hf = tiny_qwen2_vl()
    cfg = Qwen2VisionConfig.from_dict(hf.config.vision_config.to_dict())
    tower = Qwen2VisionTower(cfg).eval()
    state = {k.removeprefix("model.visual."): v for k, v in hf.state_dict().items() if k.startswith("model.visual.")}
    tower.load_state_dict(state, strict=True)
    grid = [(1, 4, 6), (1, 8, 4), (2, 2, 2)]
    patches = torch.randn(sum(t * h * w for t, h, w in grid), 3 * 2 * 4 * 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf.model.visual(patches, grid_thw=torch.tensor(grid)).pooler_output
        ours = tower(patches, grid)
    assert ours.shape == theirs.shape == ((24 + 32 + 8) // 4, 64)
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_patch_positions_follow_the_merge_blocks() -> None:
    # A 2 x 4 grid in 2 x 2 blocks: the processor lists the block (0-1, 0-1) first, then (0-1, 2-3).
    assert patch_positions([(1, 2, 4)], 2).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
