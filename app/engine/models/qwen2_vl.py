"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``):
their vision tower (vision/qwen2_vl.py)
over images at their own resolution, and a Qwen2 language model (ours, DecoderLM) with M-RoPE:
a prompt's text tokens count positions one by one in all three streams, an image's tokens take
(frame, row, column) positions from where the text reached, and the text after an image goes on
from one past the largest. Generated tokens' positions are their index plus the prompt's offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.engine.distributed.parallel_state import Shard
from app.engine.kernels import Ops
from app.engine.models.config import ModelConfig
from app.engine.models.vision_language import VisionLanguageLM
from app.engine.vision.qwen2_vl import Qwen2VisionConfig, Qwen2VisionTower



@dataclass(frozen=True)
class Qwen2VLVisionConfig:
    tower: Qwen2VisionConfig
    image_token_id: int

    @classmethod
    def from_hf(cls, config: Any) -> "Qwen2VLVisionConfig":
        return cls(Qwen2VisionConfig.from_dict(config.vision_config.to_dict()), config.image_token_id)


class Qwen2VLLM(VisionLanguageLM):
    PREFIXES = (  # transformers 5's names, then the hub's older ones
        ("model.language_model.", "text", "model."), ("model.visual.", "visual", ""), ("visual.", "visual", ""),
        ("model.", "text", "model."), ("lm_head.", "text", "lm_head."),
    )

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int,
                 shard: Shard = Shard()):
        super().__init__(cfg, ops, dtype, device, max_len, shard)
        vision: Qwen2VLVisionConfig = cfg.vision
        self.merge = vision.tower.spatial_merge_size
        self.visual = Qwen2VisionTower(vision.tower).to(device=device, dtype=dtype).requires_grad_(False)

    def split_pixels(self, inputs: dict) -> list[tuple[torch.Tensor, tuple[int, int, int]]]:
        """The processor's patches of all images -> each image's (patches, grid)."""
        grids = [tuple(g) for g in inputs["image_grid_thw"].tolist()]
        patches = inputs["pixel_values"].split([t * h * w for t, h, w in grids])
        return list(zip(patches, grids))

    def expand_placeholder(self, tokenizer, pixels: dict, k: int, placeholder: str) -> str:
        """What picture k's one placeholder becomes: a token per merged patch."""
        return placeholder * (int(pixels["image_grid_thw"][k].prod()) // self.merge**2)

    def prompt_positions(self, length: int, spans) -> tuple[torch.Tensor, int]:
        """(time, row, column) positions of a prompt's tokens [3, length], and the offset of the
        tokens after it (their position minus their index)."""
        parts, cursor, next_position = [], 0, 0
        for span in spans:
            text = span.start - cursor
            parts.append(torch.arange(next_position, next_position + text).expand(3, -1))
            next_position += text
            t, h, w = span.pixels[1]
            h, w = h // self.merge, w // self.merge
            grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
            parts.append(grid.reshape(3, -1) + next_position)
            next_position = int(parts[-1].max()) + 1
            cursor = span.end
        parts.append(torch.arange(next_position, next_position + length - cursor).expand(3, -1))
        positions = torch.cat(parts, dim=1)
        return positions, int(positions.max()) + 1 - length

    @torch.inference_mode()
    def encode_images(self, pixels: list[tuple[torch.Tensor, tuple[int, int, int]]]) -> list[torch.Tensor]:
        """Each image's embeddings for its placeholder tokens, the images in one batch."""
        grids = [grid for _, grid in pixels]
        tokens = self.visual(torch.cat([p for p, _ in pixels]).to(self.device), grids)
        return list(tokens.split([t * h * w // self.merge**2 for t, h, w in grids]))
