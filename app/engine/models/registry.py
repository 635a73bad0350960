"""Which architectures the engine runs, keyed by config.json's ``architectures``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from app.engine.distributed.parallel_state import Shard
from app.engine.errors import UnsupportedModelError
from app.engine.kernels import Ops
from app.engine.models.config import ModelConfig, parse_model_config
from app.engine.models.decoder import DecoderLM


@dataclass(frozen=True)
class Family:
    """What a family implies when config.json is silent, and which features it uses."""

    defaults: dict[str, Any] = field(default_factory=dict)
    sliding_window: bool = False


ARCHITECTURES: dict[str, Family] = {
    "LlamaForCausalLM": Family(),  # Llama 2/3/3.1/3.2, SmolLM
    "MistralForCausalLM": Family(sliding_window=True),
    "Qwen2ForCausalLM": Family(defaults={"qkv_bias": True, "o_bias": False}, sliding_window=True),
    "Qwen3ForCausalLM": Family(defaults={"qk_norm": True}, sliding_window=True),
}


# Vision-language models: their language model is one of the families above.
VISION_ARCHITECTURES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                        "Qwen2VLForConditionalGeneration",
                        "Qwen2_5_VLForConditionalGeneration", "InternVLForConditionalGeneration")
_TEXT_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                       "qwen2_vl_text": "Qwen2ForCausalLM", "qwen2_5_vl_text": "Qwen2ForCausalLM"}


def supported_architectures() -> list[str]:
    return sorted([*ARCHITECTURES, *VISION_ARCHITECTURES])


def resolve_config(raw: dict[str, Any]) -> ModelConfig:
    """Picks the family from ``architectures`` and normalises the config, or refuses clearly."""
    names = raw.get("architectures") or []
    vision_arch = next((n for n in names if n in VISION_ARCHITECTURES), None)
    if vision_arch is not None:
        return _resolve_vision_language(raw, vision_arch)
    arch = next((n for n in names if n in ARCHITECTURES), None)
    if arch is None:
        shown = ", ".join(names) if names else "none given"
        raise UnsupportedModelError(
            f"unsupported architecture ({shown}); supported: {', '.join(supported_architectures())}"
        )
    family = ARCHITECTURES[arch]
    if family.sliding_window and raw.get("use_sliding_window") and raw.get("max_window_layers") is not None:
        if int(raw["max_window_layers"]) < int(raw["num_hidden_layers"]):
            raise UnsupportedModelError("sliding-window attention on only some layers is not supported yet")
    try:
        cfg = parse_model_config(raw, arch, **family.defaults)
    except KeyError as exc:
        raise UnsupportedModelError(f"config.json lacks the field {exc.args[0]!r}") from exc
    if not family.sliding_window:
        cfg = dataclasses.replace(cfg, sliding_window=None)
    return cfg


def _resolve_vision_language(raw: dict[str, Any], arch: str) -> ModelConfig:
    """The language model's config (text_config, with the defaults transformers' config class
    fills in where old config.json files are silent) plus the image side."""
    import transformers

    if arch.startswith("Llava"):
        from app.engine.models.llava import LlavaVisionConfig as vision_config
        config_class = transformers.LlavaConfig if arch == "LlavaForConditionalGeneration" else transformers.LlavaNextConfig
    elif arch == "InternVLForConditionalGeneration":
        from app.engine.models.internvl import InternVLVisionConfig as vision_config
        config_class = transformers.InternVLConfig
    else:
        from app.engine.models.qwen2_vl import Qwen2VLVisionConfig as vision_config
        config_class = transformers.Qwen2VLConfig if arch.startswith("Qwen2VL") else transformers.Qwen2_5_VLConfig
    try:
        full = config_class(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    except (TypeError, ValueError) as exc:
        raise UnsupportedModelError(f"config.json is not a {arch} config transformers can read: {exc}") from exc
    text = full.text_config.to_dict()
    text_arch = _TEXT_ARCHITECTURES.get(text.get("model_type", ""))
    if text_arch is None:
        raise UnsupportedModelError(f"{arch} with a {text.get('model_type')} language model is not supported yet")
    for key in ("torch_dtype", "dtype", "quantization_config", "tie_word_embeddings"):
        if raw.get(key) is not None:
            text[key] = raw[key]
    cfg = resolve_config({**text, "architectures": [text_arch]})
    return dataclasses.replace(cfg, architecture=arch, vision=vision_config.from_hf(full))


def build_model(cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int,
                shard: Shard = Shard()) -> DecoderLM:
    """max_len: the longest sequence the engine will run (sizes position tables). shard: the part
    of the model this process holds (tensor parallelism)."""
    if cfg.architecture == "LlavaForConditionalGeneration":
        from app.engine.models.llava import LlavaLM

        return LlavaLM(cfg, ops, dtype, device, max_len, shard)
    if cfg.architecture == "LlavaNextForConditionalGeneration":
        from app.engine.models.llava import LlavaNextLM

        return LlavaNextLM(cfg, ops, dtype, device, max_len, shard)
    if cfg.architecture == "InternVLForConditionalGeneration":
        from app.engine.models.internvl import InternVLLM

        return InternVLLM(cfg, ops, dtype, device, max_len, shard)
    if cfg.architecture in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"):
        from app.engine.models.qwen2_vl import Qwen2VLLM

        return Qwen2VLLM(cfg, ops, dtype, device, max_len, shard)
    return DecoderLM(cfg, ops, dtype, device, max_len, shard)
