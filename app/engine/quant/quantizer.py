"""The quantization run: one decoder layer at a time, so memory stays near one layer plus the
calibration activations (the model itself waits in CPU memory).

Per layer (AWQ): move it to the compute device; run it on its inputs with hooks that keep each
linear group's input; search and fold the scales of each group; search clipping; quantize; run the
now-quantized layer to make the next layer's inputs (so later layers calibrate against the errors
they will really see); move it back. RTN skips the calibration and quantizes each weight directly.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from app.engine.quant.architecture import (
    INPUT_OF, LINEARS, NOT_CLIPPED, check_supported, is_vision_language, language_config, scale_groups,
)
from app.engine.quant.awq_format import pack_linear
from app.engine.quant.calibration import calibration_texts, token_windows
from app.engine.quant.checkpoint import (
    FreeBytes, check_destination, check_free_space, disk_free_bytes, estimate_checkpoint_bytes, write_checkpoint,
)
from app.engine.quant.clipping import group_second_moments, search_clip
from app.engine.quant.config import METHODS, QuantizeCancelled, QuantizeConfig, QuantizeError, QuantProgress
from app.engine.quant.int4 import dequantize_groups, quantize_groups
from app.engine.quant.layer_inputs import (
    CHUNK_TOKENS, capture_layer_inputs, decoder_layers, layers_path, output_tensor, run_chunked, to_device,
)
from app.engine.quant.scale_search import activation_magnitude, fold_scales, search_scales

Progress = Callable[[QuantProgress], None]


class _Reporter:
    """Stage reports with an ETA from the mean time of the finished layers; checks for cancellation."""

    def __init__(self, layers: int, progress: Progress | None, cancel: threading.Event | None):
        self.layers, self.progress, self.cancel = layers, progress, cancel
        self.start = self.loop_start = self.last_done = time.monotonic()
        self.done = 0

    def __call__(self, layer: int, stage: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise QuantizeCancelled("quantization cancelled; nothing was written")
        now = time.monotonic()
        eta = None
        if self.done:
            per_layer = (self.last_done - self.loop_start) / self.done
            eta = max(0.0, per_layer * (self.layers - self.done) - (now - self.last_done))
        if self.progress is not None:
            self.progress(QuantProgress(layer, self.layers, stage, now - self.start, eta))

    def start_layers(self) -> None:
        self.loop_start = self.last_done = time.monotonic()

    def layer_done(self) -> None:
        self.done += 1
        self.last_done = time.monotonic()


def pick_device(requested: str, config: dict) -> tuple[torch.device, torch.dtype]:
    """cuda if available (in the model's half dtype), else cpu in float32 (CPUs lack fast fp16 and
    the searches compare small differences)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cpu":
        return device, torch.float32
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QuantizeError("device cuda was asked for, but no CUDA device is available")
    name = config.get("torch_dtype") or config.get("dtype")
    return device, torch.bfloat16 if name == "bfloat16" else torch.float16


def _linear(layer: nn.Module, name: str) -> nn.Linear:
    return layer.get_submodule(name)


@torch.no_grad()
def _collect_inputs(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, names: set[str]) -> dict[str, torch.Tensor]:
    """The inputs of the named linears over the whole calibration set (one run of the layer)."""
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [_linear(layer, name).register_forward_pre_hook(lambda _m, args, n=name: chunks[n].append(args[0]))
             for name in names]
    step = max(1, CHUNK_TOKENS // hidden.shape[1])
    try:
        for start in range(0, hidden.shape[0], step):
            layer(hidden[start:start + step], **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def _quantize_layer(layer: nn.Module, prefix: str, config: QuantizeConfig,
                    clips: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Quantizes every linear of the layer: returns its checkpoint tensors and leaves the dequantized
    weights in the layer (what the next layer's inputs are computed with)."""
    tensors = {}
    for name in LINEARS:
        fc = _linear(layer, name)
        q, zeros, scales = quantize_groups(fc.weight.data, config.group_size, clips.get(name, 1.0))
        for key, value in pack_linear(q, zeros, scales).items():
            tensors[f"{prefix}.{name}.{key}"] = value.cpu()
        if fc.bias is not None:
            tensors[f"{prefix}.{name}.bias"] = fc.bias.data.to(torch.float16).cpu()
        fc.weight.data = dequantize_groups(q, zeros, scales).to(fc.weight.dtype)
    return tensors


def _run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    return run_chunked(lambda x: output_tensor(layer(x, **kwargs)), hidden)


def _evenly_spaced(count: int, total: int) -> torch.Tensor:
    return torch.linspace(0, total - 1, min(count, total)).round().long()


@torch.no_grad()
def _awq_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, config: QuantizeConfig,
               report: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """Scales (folded into the layer) and clipping for one layer on the compute device; returns each
    clipped linear's range factors."""
    groups = scale_groups(layer)
    inputs = _collect_inputs(layer, hidden, kwargs, set(INPUT_OF.values()))
    searched = _evenly_spaced(config.search_samples, hidden.shape[0]).to(hidden.device)
    for group in groups:
        report("scales")
        module = layer.get_submodule(group.inspect)
        if group.attention:
            def inspect(x, attn=module):
                return output_tensor(attn(hidden_states=x, **kwargs))
        else:
            inspect = module
        linears = [_linear(layer, n) for n in group.linears]
        x = inputs[group.linears[0]]
        scales = search_scales(inspect, x[searched], activation_magnitude(x), linears, config.group_size,
                               config.scale_grid)
        fold_scales(layer.get_submodule(group.prev), linears, scales)
        x.div_(scales.to(x.dtype))  # the folded layer feeds these linears x / s
    report("clipping")
    clips, moments = {}, {}
    for name in LINEARS:
        if name not in NOT_CLIPPED:
            source = INPUT_OF[name]
            if source not in moments:
                moments[source] = group_second_moments(inputs[source], config.group_size)
            clips[name] = search_clip(_linear(layer, name).weight.data, moments[source], config.group_size,
                                      config.clip_grid, config.clip_max_shrink)
    return clips


def _read_config(model: Path) -> dict:
    try:
        return json.loads((model / "config.json").read_text())
    except FileNotFoundError:
        raise QuantizeError(f"{model} has no config.json: not a Hugging Face model folder") from None
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"cannot read {model / 'config.json'}: {exc}") from exc


def _check(config: QuantizeConfig) -> dict:
    if config.method not in METHODS:
        raise QuantizeError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    if config.calib_samples < 1 or config.calib_seqlen < 2:
        raise QuantizeError("calibration needs at least one sample of at least two tokens")
    check_destination(config.out)
    model_config = _read_config(config.model)
    check_supported(model_config, config.group_size)
    return model_config


def quantize(config: QuantizeConfig, progress: Progress | None = None, cancel: threading.Event | None = None,
             *, free_bytes: FreeBytes = disk_free_bytes) -> Path:
    """Writes a 4-bit AWQ-format checkpoint of ``config.model`` to ``config.out`` and returns its path.

    Safe to run on a worker thread: ``progress`` is called from it, and setting ``cancel`` stops the
    run at the next stage. Any failure or cancellation leaves no output folder behind."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    model_config = _check(config)
    device, dtype = pick_device(config.device, model_config)
    texts = calibration_texts(tuple(config.calib_data)) if config.method == "awq" else None
    layer_count = language_config(model_config)["num_hidden_layers"]
    report = _Reporter(layer_count, progress, cancel)
    report(0, "loading")
    windows = None
    if texts is not None:
        tokenizer = AutoTokenizer.from_pretrained(config.model)
        windows = token_windows(tokenizer, texts, config.calib_seqlen, config.calib_samples)
    # A vision-language model calibrates on text alone: only its language model is quantized.
    model_class = AutoModelForImageTextToText if is_vision_language(model_config) else AutoModelForCausalLM
    model = model_class.from_pretrained(config.model, dtype=dtype, attn_implementation="sdpa").eval()
    check_free_space(config.out, estimate_checkpoint_bytes(model, config.group_size, config.model), free_bytes)
    tensors = _quantize_model(model, windows, config, device, report)
    report(layer_count, "writing")
    out = write_checkpoint(model, tensors, config, model_config, free_bytes)
    report(layer_count, "done")
    return out


@torch.no_grad()
def _quantize_model(model: nn.Module, windows: torch.Tensor | None, config: QuantizeConfig, device: torch.device,
                    report: _Reporter) -> dict[str, torch.Tensor]:
    """Every decoder layer's checkpoint tensors (qweight, qzeros, scales, biases), in layer order."""
    layers = decoder_layers(model)
    if windows is not None:
        report(0, "calibrating")
        captured = capture_layer_inputs(model, windows)
        hidden = captured.hidden.to(device)
    report.start_layers()
    tensors: dict[str, torch.Tensor] = {}
    path = layers_path(model)
    for index, layer in enumerate(layers):
        prefix = f"{path}.{index}"
        layer.to(device)
        clips: dict[str, torch.Tensor] = {}
        if windows is not None:
            kwargs = to_device(captured.kwargs[index], device)
            clips = _awq_layer(layer, hidden, kwargs, config, lambda stage, i=index: report(i, stage))
        report(index, "quantizing")
        tensors.update(_quantize_layer(layer, prefix, config, clips))
        if windows is not None:
            hidden = _run_layer(layer, hidden, kwargs)
        layer.to("cpu")
        report.layer_done()
    return tensors
