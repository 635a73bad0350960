"""The decoder layers' inputs, captured once from the model's own forward, and chunked layer runs.

Every decoder layer's forward is replaced for one pass by a recorder that returns its input
unchanged, so the pass costs only the embedding: it yields the first layer's hidden states and
the keyword arguments the model hands each layer (rotary cos/sin, the mask of that layer's
attention type, positions), whatever their names in this transformers version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")  # renamed across transformers 5.x
CHUNK_TOKENS = 8192  # tokens per forward chunk: bounds activation memory, keeps GEMMs large


@dataclass
class LayerInputs:
    hidden: torch.Tensor  # [samples, seqlen, hidden] for the first decoder layer
    kwargs: list[dict]  # per layer, for a batch of one sample (its tensors broadcast over a batch)


def _sanitize(kwargs: dict) -> dict:
    kept = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS}
    kept["use_cache"] = False
    return kept


def layers_path(model: nn.Module) -> str:
    """Where the language model's decoder layers are: "model.layers", or a vision-language
    model's "model.language_model.layers"."""
    return "model.language_model.layers" if hasattr(model.model, "language_model") else "model.layers"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(layers_path(model))


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, windows: torch.Tensor) -> LayerInputs:
    """Runs the model's embedding and mask/rotary preparation over ``windows`` [n, seqlen] (on the
    model's device), one sample at a time so every recorded tensor has batch 1."""
    layers = decoder_layers(model)
    kwargs: list[dict | None] = [None] * len(layers)
    first: list[torch.Tensor] = []

    def recorder(index: int):
        def forward(hidden_states, *args, **layer_kwargs):
            if args:
                raise TypeError("decoder layers are expected to receive their extra inputs by keyword")
            if kwargs[index] is None:
                kwargs[index] = _sanitize(layer_kwargs)
            if index == 0:
                first.append(hidden_states)
            return hidden_states
        return forward

    for index, layer in enumerate(layers):
        layer.forward = recorder(index)
    try:
        for window in windows:
            model.model(input_ids=window.unsqueeze(0), use_cache=False)
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward
    return LayerInputs(torch.cat(first), kwargs)


def to_device(value, device: torch.device):
    """Tensors inside nested tuples, lists and dicts, moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def output_tensor(output) -> torch.Tensor:
    """Decoder layers and attention modules return a tensor or a tuple led by one."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def run_chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn`` over [samples, seqlen, ...] in chunks of whole samples."""
    step = max(1, CHUNK_TOKENS // x.shape[1])
    return torch.cat([fn(x[i:i + step]) for i in range(0, x.shape[0], step)])
