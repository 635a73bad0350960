"""LLaVA 1.5 (``LlavaForConditionalGeneration``): a CLIP vision tower, a two-layer projector, and
a Llama-family language model (ours, DecoderLM) whose input embeddings take the projected image
patches at the image's placeholder tokens.

LLaVA-NeXT (``LlavaNextForConditionalGeneration``, "any resolution"): the processor gives each
picture a downscaled whole view plus tiles covering it at the best of the checkpoint's grid
resolutions; the image's tokens are the whole view's patches, then the tiles' patches laid out
as one large grid, cut back to the picture's aspect ratio, each row ended by a learned newline.

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
    grid_pinpoints: tuple[tuple[int, int], ...] = ()  # LLaVA-NeXT: the (height, width)s tiles may cover

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
                   config.image_token_id, tuple(map(tuple, getattr(config, "image_grid_pinpoints", None) or ())))


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


def best_resolution(size: tuple[int, int], pinpoints: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The (height, width) among ``pinpoints`` that keeps most of a (height, width) picture's pixels
    when it is scaled to fit, and wastes least of the rest (as LLaVA-NeXT's processor picks)."""
    height, width = size
    def score(pin: tuple[int, int]) -> tuple[int, int]:
        scale = min(pin[1] / width, pin[0] / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        return kept, -(pin[0] * pin[1] - kept)
    return max(pinpoints, key=score)


class LlavaNextLM(LlavaLM):
    PREFIXES = (("model.image_newline", "text", "image_newline"), ("image_newline", "text", "image_newline"),
                *LlavaLM.PREFIXES)

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int,
                 shard: Shard = Shard()):
        super().__init__(cfg, ops, dtype, device, max_len, shard)
        self.pinpoints = cfg.vision.grid_pinpoints
        self.tile = cfg.vision.tower.image_size
        self.side = cfg.vision.tower.image_size // cfg.vision.tower.patch_size  # patches a tile side
        self.image_newline = torch.nn.Parameter(torch.empty(cfg.hidden_size, device=device, dtype=dtype),
                                                requires_grad=False)

    def _tiles(self, size: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of tiles for a (height, width) picture."""
        height, width = best_resolution(size, self.pinpoints)
        return height // self.tile, width // self.tile

    def split_pixels(self, inputs: dict) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """The processor's (padded) tiles -> each picture's whole view and tiles, and its size."""
        out = []
        for tiles, size in zip(inputs["pixel_values"], inputs["image_sizes"].tolist()):
            rows, cols = self._tiles(tuple(size))
            out.append((tiles[: 1 + rows * cols], tuple(size)))
        return out

    @torch.inference_mode()
    def encode_images(self, pixels: list[tuple[torch.Tensor, tuple[int, int]]]) -> list[torch.Tensor]:
        features = super().encode_images([tile for tiles, _ in pixels for tile in tiles])
        out, at = [], 0
        for tiles, size in pixels:
            count = tiles.shape[0]
            whole, grid = features[at], torch.stack(features[at + 1 : at + count])
            at += count
            out.append(torch.cat([whole, self._layout(grid, size)]))
        return out

    def _layout(self, grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Tiles' patch features [tiles, side², D] -> rows of the picture's patches, cut to its
        aspect ratio (the padding the resize added), each row ended by the newline: [tokens, D]."""
        rows, cols = self._tiles(size)
        s, d = self.side, grid.shape[-1]
        x = grid.view(rows, cols, s, s, d).permute(0, 2, 1, 3, 4).reshape(rows * s, cols * s, d)
        height, width = size
        current_h, current_w = x.shape[:2]
        if width / height > current_w / current_h:  # wider than the grid: padding above and below
            kept = int(round(height * current_w / width, 7))
            pad = (current_h - kept) // 2
            x = x[pad : current_h - pad]
        else:
            kept = int(round(width * current_h / height, 7))
            pad = (current_w - kept) // 2
            x = x[:, pad : current_w - pad]
        newline = self.image_newline.to(x.dtype).expand(x.shape[0], 1, d)
        return torch.cat([x, newline], dim=1).reshape(-1, d)
