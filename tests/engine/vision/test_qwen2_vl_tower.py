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
    sharpen(model)
    return model


def sharpen(model) -> None:
    with torch.no_grad():  # attention sharp enough that positions matter (std 0.02 leaves it uniform)
        for block in model.model.visual.blocks:
            block.attn.qkv.weight.mul_(40)


def tower_and_hf_outputs(hf, grid: list[tuple[int, int, int]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, HF's) merged image tokens for random patches of ``grid``, our tower holding HF's weights."""
    tower = Qwen2VisionTower(Qwen2VisionConfig.from_dict(hf.config.vision_config.to_dict())).eval()
    tower.load_state_dict({k.removeprefix("model.visual."): v for k, v in hf.state_dict().items()
                           if k.startswith("model.visual.")}, strict=True)
    patches = torch.randn(sum(t * h * w for t, h, w in grid), 3 * 2 * 4 * 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return tower(patches, grid), hf.model.visual(patches, grid_thw=torch.tensor(grid)).pooler_output


def test_tower_matches_hf() -> None:
    ours, theirs = tower_and_hf_outputs(tiny_qwen2_vl(), [(1, 4, 6), (1, 8, 4), (2, 2, 2)], seed=1)
    assert ours.shape == theirs.shape == ((24 + 32 + 8) // 4, 64)
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_patch_positions_follow_the_merge_blocks() -> None:
    # A 2 x 4 grid in 2 x 2 blocks: the processor lists the block (0-1, 0-1) first, then (0-1, 2-3).
    assert patch_positions([(1, 2, 4)], 2).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]


def test_qwen2_5_tower_with_windows_matches_hf() -> None:
    """Qwen2.5-VL's tower: RMSNorm, gated MLP, window attention in block 0 (windows of 2 x 2 merge
    blocks, some cut by the image's edge) and full attention in block 1."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2, window_size=16, fullatt_block_indexes=[1])
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=320, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
    torch.manual_seed(0)
    hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(vision_config=vision, text_config=text)).eval()
    sharpen(hf)
    ours, theirs = tower_and_hf_outputs(hf, [(1, 8, 12), (1, 4, 6), (2, 4, 4)], seed=3)
    assert ours.shape == theirs.shape == ((96 + 24 + 32) // 4, 64)
    assert (ours - theirs).abs().max().item() <= TOLERANCE
