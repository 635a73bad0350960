"""What the vision-language models share: a language model (DecoderLM) plus image modules whose
checkpoint tensors are recognised by prefix and loaded beside the language model's."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from app.engine.distributed.parallel_state import Shard
from app.engine.errors import ModelLoadError, UnsupportedModelError
from app.engine.kernels import Ops
from app.engine.models.config import ModelConfig
from app.engine.models.decoder import DecoderLM


class VisionLanguageLM(DecoderLM):
    """Subclasses set PREFIXES (checkpoint prefix -> part, our prefix; part "text" is the
    language model's, any other names an attribute holding an image module), build their image
    modules, and give ``split_pixels`` and ``encode_images``."""

    PREFIXES: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int,
                 shard: Shard = Shard()):
        if shard.world > 1:
            raise UnsupportedModelError("vision-language models run on one device for now (no tensor parallelism)")
        super().__init__(cfg, ops, dtype, device, max_len, shard)
        self.image_token_id: int = cfg.vision.image_token_id  # every family's vision config names it

    def _image_parts(self) -> dict[str, nn.Module]:
        return {part: getattr(self, part) for _, part, _ in self.PREFIXES if part != "text"}

    def checkpoint_name(self, part: str, name: str) -> str | None:
        """Our parameter of ``part`` for a checkpoint tensor, or None for one not run."""
        return name

    def _weight_slots(self):
        """The language model's (the image modules load in load_weights)."""
        image = tuple(f"{part}." for part in self._image_parts())
        return {name: store for name, store in super()._weight_slots().items() if not name.startswith(image)}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = {part: dict(module.named_parameters()) for part, module in self._image_parts().items()}
        loaded: set[tuple[str, str]] = set()

        def text() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                part, ours = self._route(name)
                if part == "text":
                    yield ours, tensor
                    continue
                ours = self.checkpoint_name(part, ours)
                if ours is None:
                    continue
                target = params[part].get(ours)
                if target is None or target.shape != tensor.shape:
                    raise ModelLoadError(f"the checkpoint's {name} {tuple(tensor.shape)} does not fit this model")
                with torch.no_grad():
                    target.copy_(tensor)
                loaded.add((part, ours))

        super().load_weights(text())
        missing = [f"{part}.{name}" for part, names in params.items() for name in names if (part, name) not in loaded]
        if missing:
            raise ModelLoadError(f"the checkpoint lacks the vision tensors {', '.join(missing[:5])}")

    def _route(self, name: str) -> tuple[str, str]:
        for prefix, part, ours in self.PREFIXES:
            if name.startswith(prefix):
                return part, ours + name.removeprefix(prefix)
        return "text", name
