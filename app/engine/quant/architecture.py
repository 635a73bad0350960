"""Which models can be quantized, which linears a decoder layer has, and which share an input.

The four supported families share one decoder-layer layout (RMSNorm -> q/k/v -> attention -> o,
RMSNorm -> gate/up -> SiLU-mul -> down), so one description serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from app.engine.quant.config import QuantizeError

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
# Vision-language models whose language model is one of those: it is quantized, the image side
# (these modules) stays in fp16 and is listed in modules_to_not_convert.
VISION_SUPPORTED = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                    "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                    "InternVLForConditionalGeneration")
IMAGE_MODULES = ("vision_tower", "multi_modal_projector", "visual", "image_newline")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Each linear's input is that of the first linear reading the same tensor.
INPUT_OF = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.q_proj",
            "self_attn.v_proj": "self_attn.q_proj", "self_attn.o_proj": "self_attn.o_proj",
            "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.gate_proj", "mlp.down_proj": "mlp.down_proj"}
# Queries and keys meet in a softmax that amplifies their errors; clipping them hurts (AWQ paper's code).
NOT_CLIPPED = ("self_attn.q_proj", "self_attn.k_proj")
NOT_CONVERTED = ("lm_head",)  # stays in fp16 in the checkpoint
_GROUP_SIZES = (128, 64, 32)


@dataclass(frozen=True)
class ScaleGroup:
    """Linears reading one input, the op before them that absorbs the scales, and the module whose
    output the scale search compares against its unquantized output."""

    prev: str
    linears: tuple[str, ...]
    inspect: str
    attention: bool = False  # the inspected module is the attention: it needs position embeddings and mask


def scale_groups(layer: nn.Module) -> list[ScaleGroup]:
    attn = layer.self_attn
    groups = [ScaleGroup("input_layernorm", LINEARS[:3], "self_attn", attention=True)]
    # v's output rows are o's input columns only without grouped-query attention's sharing.
    if attn.v_proj.out_features == attn.o_proj.in_features:
        groups.append(ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"))
    groups += [ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
               ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj")]
    return groups


def is_vision_language(config: dict) -> bool:
    return "vision_config" in config


def language_config(config: dict) -> dict:
    """The language model's config: a vision-language model's text_config (with the defaults
    transformers fills in where config.json is silent), else the config itself."""
    if not is_vision_language(config):
        return config
    from transformers import CONFIG_MAPPING

    try:
        full = CONFIG_MAPPING[config["model_type"]](**{k: v for k, v in config.items() if k != "model_type"})
    except (KeyError, TypeError, ValueError) as exc:
        raise QuantizeError(f"cannot read this vision-language model's config: {exc}") from exc
    return full.get_text_config().to_dict()


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each decoder-layer linear, from config.json."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    inter = config["intermediate_size"]
    q_out, kv_out = heads * head_dim, kv * head_dim
    outs = (q_out, kv_out, kv_out, hidden, inter, inter, hidden)
    ins = (hidden, hidden, hidden, q_out, hidden, hidden, inter)
    return {name: (i, o) for name, i, o in zip(LINEARS, ins, outs)}


def check_supported(config: dict, group_size: int) -> None:
    """Refuses, before any work, what cannot be quantized or stored in the AWQ layout."""
    architecture = (config.get("architectures") or ["(none given)"])[0]
    if architecture not in SUPPORTED + VISION_SUPPORTED:
        raise QuantizeError(f"cannot quantize {architecture}: supported architectures are "
                            f"{', '.join(SUPPORTED + VISION_SUPPORTED)}")
    if config.get("quantization_config"):
        raise QuantizeError("this model is already quantized; quantize its fp16/bf16 original")
    if group_size <= 0 or group_size % 8:
        raise QuantizeError(f"group size {group_size} is not a positive multiple of 8; the usual choice is 128")
    shapes = linear_shapes(language_config(config))
    for name, (in_features, out_features) in shapes.items():
        if out_features % 8:
            raise QuantizeError(f"{name} has {out_features} outputs, not a multiple of 8: the AWQ layout cannot hold it")
        if in_features % group_size:
            fits = [g for g in _GROUP_SIZES if all(i % g == 0 for i, _ in shapes.values())]
            hint = f"; group size {fits[0]} divides every layer (--group-size {fits[0]})" if fits else ""
            raise QuantizeError(f"group size {group_size} does not divide {in_features}, the input size of "
                                f"{name}{hint}")
