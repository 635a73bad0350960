"""LLaVA 1.5 (``LlavaForConditionalGeneration``): a CLIP vision tower, a two-layer projector, and
a Llama-family language model (ours, DecoderLM) whose input embeddings take the projected image
patches at the image's placeholder tokens.

Checkpoints name their tensors in several ways: as the hub's llava-hf repositories were written
(``language_model.model.*``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``), as
transformers 5 saves them (the same, with ``vision_tower.*``) and as it names them in memory
(``model.language_model.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.*``); all load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.engine.distributed.parallel_state import Shard
from app.engine.errors import UnsupportedModelError
from app.engine.kernels import Ops
from app.engine.models.config import ModelConfig
from app.engine.models.vision_language import VisionLanguageLM
from app.engine.vision.clip import ClipVisionConfig, ClipVisionTower, LlavaProjector



@dataclass(frozen=True)
class LlavaVisionConfig:
    tower: ClipVisionConfig
    feature_layers: tuple[int, ...]
    drop_class_token: bool  # vision_feature_select_strategy "default" (else "full")
    projector_act: str
    image_token_id: int

    @classmethod
    def from_hf(cls, config: Any) -> "LlavaVisionConfig":
        """From transformers' LlavaConfig (which fills what old config.json files leave out)."""
        vision = config.vision_config
        if vision.model_type != "clip_vision_model":
            raise UnsupportedModelError(f"LLaVA with a {vision.model_type} vision tower is not supported yet")
        layers = config.vision_feature_layer
        return cls(ClipVisionConfig.from_dict(vision.to_dict()),
                   tuple(layers) if isinstance(layers, (list, tuple)) else (layers,),
                   config.vision_feature_select_strategy == "default", config.projector_hidden_act,
                   config.image_token_id)


class LlavaLM(VisionLanguageLM):
    PREFIXES = (  # checkpoint prefix -> (part, our prefix)
        ("model.language_model.", "text", "model."), ("language_model.model.", "text", "model."),
        ("language_model.lm_head.", "text", "lm_head."), ("lm_head.", "text", "lm_head."),
        ("model.vision_tower.", "vision_tower", ""), ("vision_tower.vision_model.", "vision_tower", ""),
        ("vision_tower.", "vision_tower", ""),
        ("model.multi_modal_projector.", "projector", ""), ("multi_modal_projector.", "projector", ""),
    )

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int,
                 shard: Shard = Shard()):
        super().__init__(cfg, ops, dtype, device, max_len, shard)
        vision: LlavaVisionConfig = cfg.vision
        self.image_token_id = vision.image_token_id
        self.drop_class_token = vision.drop_class_token
        self.vision_tower = ClipVisionTower(vision.tower, vision.feature_layers).to(device=device, dtype=dtype)
        width = vision.tower.hidden_size * len(vision.feature_layers)
        self.projector = LlavaProjector(width, cfg.hidden_size, vision.projector_act).to(device=device, dtype=dtype)
        self.vision_tower.requires_grad_(False)
        self.projector.requires_grad_(False)

    def split_pixels(self, inputs: dict) -> list[torch.Tensor]:
        """The processor's pixel values -> each image's."""
        return list(inputs["pixel_values"])

    @torch.inference_mode()
    def encode_images(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each image's embeddings for its placeholder tokens, [tokens, hidden], in one batch."""
        features = self.vision_tower(torch.stack(pixels).to(self.device, self.dtype))
        if self.drop_class_token:
            features = features[:, 1:]
        return list(self.projector(features))

    def checkpoint_name(self, part: str, name: str) -> str | None:
        return self.vision_tower.checkpoint_name(name) if part == "vision_tower" else name
