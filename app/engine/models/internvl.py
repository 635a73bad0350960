"""InternVL 2 / 2.5 / 3 in the transformers-native layout (``InternVLForConditionalGeneration``):
InternViT over the processor's tiles (vision/intern_vit.py), pixel shuffle and projector, and a
Qwen2 or Llama language model (ours, DecoderLM). A picture of n tiles takes n x
``image_seq_length`` context tokens between its start and end tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.engine.distributed.parallel_state import Shard
from app.engine.errors import UnsupportedModelError
from app.engine.kernels import Ops
from app.engine.models.config import ModelConfig
from app.engine.models.vision_language import VisionLanguageLM
from app.engine.vision.intern_vit import InternVitConfig, InternVitTower, InternVLProjector, pixel_shuffle



@dataclass(frozen=True)
class InternVLVisionConfig:
    tower: InternVitConfig
    downsample_ratio: float
    projector_act: str
    image_token_id: int
    image_seq_length: int

    @classmethod
    def from_hf(cls, config: Any) -> "InternVLVisionConfig":
        if config.vision_feature_layer != -1 or config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError("InternVL reading other than its last vision layer is not supported yet")
        return cls(InternVitConfig.from_dict(config.vision_config.to_dict()), config.downsample_ratio,
                   config.projector_hidden_act, config.image_token_id, config.image_seq_length)


class InternVLLM(VisionLanguageLM):
    PREFIXES = (
        ("model.language_model.", "text", "model."), ("language_model.model.", "text", "model."),
        ("language_model.lm_head.", "text", "lm_head."), ("lm_head.", "text", "lm_head."),
        ("model.vision_tower.", "vision_tower", ""), ("vision_tower.", "vision_tower", ""),
        ("model.multi_modal_projector.", "projector", ""), ("multi_modal_projector.", "projector", ""),
    )

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int,
                 shard: Shard = Shard()):
        super().__init__(cfg, ops, dtype, device, max_len, shard)
        vision: InternVLVisionConfig = cfg.vision
        self.image_seq_length = vision.image_seq_length
        self.ratio = vision.downsample_ratio
        width = vision.tower.hidden_size * int(1 / vision.downsample_ratio) ** 2
        self.vision_tower = InternVitTower(vision.tower).to(device=device, dtype=dtype).requires_grad_(False)
        self.projector = InternVLProjector(width, cfg.hidden_size, vision.projector_act).to(
            device=device, dtype=dtype).requires_grad_(False)

    def split_pixels(self, inputs: dict) -> list[torch.Tensor]:
        """The processor's tiles of all pictures -> each picture's tiles."""
        counts = inputs["num_patches"]
        return list(inputs["pixel_values"].split(counts.tolist() if hasattr(counts, "tolist") else list(counts)))

    def expand_placeholder(self, tokenizer, pixels: dict, k: int, placeholder: str) -> str:
        """What picture k's one placeholder becomes: its start token, a context token per tile
        token, its end token."""
        start = getattr(tokenizer, "start_image_token", None) or "<img>"
        end = getattr(tokenizer, "end_image_token", None) or "</img>"
        return start + placeholder * (self.image_seq_length * int(pixels["num_patches"][k])) + end

    @torch.inference_mode()
    def encode_images(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        tiles = torch.cat(pixels).to(self.device, self.dtype)
        tokens = self.projector(pixel_shuffle(self.vision_tower(tiles), self.ratio))
        return [t.flatten(0, 1) for t in tokens.split([p.shape[0] for p in pixels])]
