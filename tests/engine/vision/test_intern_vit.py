"""InternVL's vision side (InternViT, pixel shuffle, projector) against HF transformers on a tiny
random InternVL: the image features of a batch of tiles (fp32, <= 1e-4), with layer norms or
RMSNorms, q/k norms, and with or without the final norm."""

from __future__ import annotations

import pytest
import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration

from app.engine.vision.intern_vit import InternVitConfig, InternVitTower, InternVLProjector, pixel_shuffle

TOLERANCE = 1e-4


@pytest.mark.parametrize("options", [{}, {"norm_type": "rms_norm", "use_qk_norm": True, "use_mean_pooling": False}])
def test_image_features_match_hf(options) -> None:
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=4, **options)
    text = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=320)
    torch.manual_seed(0)
    hf = InternVLForConditionalGeneration(InternVLConfig(vision_config=vision, text_config=text)).eval()
    with torch.no_grad():  # sharp attention, lively layer scales
        for layer in hf.model.vision_tower.encoder.layer:
            layer.attention.q_proj.weight.mul_(20)
            layer.attention.k_proj.weight.mul_(20)
            layer.lambda_1.uniform_(0.5, 1.5)
            layer.lambda_2.uniform_(0.5, 1.5)
    tower = InternVitTower(InternVitConfig.from_dict(hf.config.vision_config.to_dict())).eval()
    projector = InternVLProjector(32 * 4, 64, hf.config.projector_hidden_act).eval()
    state = hf.state_dict()
    tower.load_state_dict({k.removeprefix("model.vision_tower."): v for k, v in state.items()
                           if k.startswith("model.vision_tower.")}, strict=True)
    projector.load_state_dict({k.removeprefix("model.multi_modal_projector."): v for k, v in state.items()
                               if k.startswith("model.multi_modal_projector.")}, strict=True)
    tiles = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf.model.get_image_features(tiles, vision_feature_layer=-1,
                                             vision_feature_select_strategy="default").pooler_output
        ours = projector(pixel_shuffle(tower(tiles), hf.config.downsample_ratio))
    assert ours.shape == theirs.shape == (3, 16, 64)
    assert (ours - theirs).abs().max().item() <= TOLERANCE
