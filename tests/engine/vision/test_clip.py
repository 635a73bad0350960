"""CLIP's vision tower and LLaVA's projector against HF transformers on a tiny random LLaVA:
the image features (fp32, max abs diff <= 1e-4) for the feature layers LLaVA checkpoints use,
with and without the class token."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from app.engine.vision.clip import ClipVisionConfig, ClipVisionTower, LlavaProjector
from tests.tiny_models import sharpen_vision_attention

TOLERANCE = 1e-4


def tiny_llava(**options) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=7, projection_dim=16)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=320)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=300,
                                                      **options)).eval()
    sharpen_vision_attention(model.model.vision_tower.encoder.layers)
    return model


def ours_from(hf: LlavaForConditionalGeneration, layers) -> tuple[ClipVisionTower, LlavaProjector]:
    cfg = hf.config
    tower = ClipVisionTower(ClipVisionConfig.from_dict(cfg.vision_config.to_dict()),
                            tuple(layers) if isinstance(layers, list) else (layers,))
    width = cfg.vision_config.hidden_size * (len(layers) if isinstance(layers, list) else 1)
    projector = LlavaProjector(width, cfg.text_config.hidden_size, cfg.projector_hidden_act)
    state = {}
    for name, value in hf.state_dict().items():
        if name.startswith("model.vision_tower."):
            ours = tower.checkpoint_name(name.removeprefix("model.vision_tower."))
            if ours is not None:
                state[f"tower.{ours}"] = value
        elif name.startswith("model.multi_modal_projector."):
            state[f"projector.{name.removeprefix('model.multi_modal_projector.')}"] = value
    both = torch.nn.ModuleDict({"tower": tower, "projector": projector})
    both.load_state_dict(state, strict=True)  # every parameter we have is filled
    return tower.eval(), projector.eval()


@pytest.mark.parametrize("layers, strategy", [(-2, "default"), (-1, "full"), ([-3, -1], "default")])
def test_image_features_match_hf(layers, strategy) -> None:
    hf = tiny_llava(vision_feature_layer=layers, vision_feature_select_strategy=strategy)
    tower, projector = ours_from(hf, layers)
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = torch.stack(hf.model.get_image_features(pixels, vision_feature_layer=layers,
                                                         vision_feature_select_strategy=strategy).pooler_output)
        features = tower(pixels)
        ours = projector(features[:, 1:] if strategy == "default" else features)
    assert ours.shape == theirs.shape == (2, 16 + (strategy == "full"), 64)
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_unused_layers_are_neither_built_nor_loaded() -> None:
    cfg = ClipVisionConfig(hidden_size=8, intermediate_size=16, num_layers=4, num_heads=2, image_size=8, patch_size=4)
    tower = ClipVisionTower(cfg, (-2,))
    assert len(tower.layers) == 3
    assert tower.checkpoint_name("encoder.layers.3.mlp.fc1.weight") is None
    assert tower.checkpoint_name("post_layernorm.weight") is None
    assert tower.checkpoint_name("encoder.layers.2.mlp.fc1.weight") == "layers.2.mlp.fc1.weight"
    with pytest.raises(ValueError, match="outside"):
        ClipVisionTower(cfg, (5,))
