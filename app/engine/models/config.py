"""A model's shape, read from a checkpoint's config.json into one normalised form.

Checkpoints written by transformers 4 keep ``rope_theta``/``rope_scaling``; transformers 5
writes ``rope_parameters``. Both are accepted here so the models never look at raw JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.engine.errors import UnsupportedModelError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    # llama3 only
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    # M-RoPE (Qwen2-VL): the rotation pairs split into sections turned by the token's time, row and
    # column position (a text token has all three equal: plain RoPE).
    mrope_section: tuple[int, ...] | None = None


@dataclass(frozen=True)
class QuantConfig:
    """A checkpoint's weight quantization: AWQ, 4-bit, asymmetric, Hugging Face "gemm" layout."""

    group_size: int
    method: str = "awq"


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    torch_dtype: str | None = None
    quantization: QuantConfig | None = None
    vision: Any = None  # a vision-language model's image side (e.g. models.llava.LlavaVisionConfig)

    @property
    def context_length(self) -> int:
        """Longest sequence the model is meant for. Dynamic NTK scaling stretches the trained
        context by its factor; the other types' configs state the stretched length already."""
        if self.rope.type == "dynamic":
            return int(self.max_position_embeddings * self.rope.factor)
        return self.max_position_embeddings


def _rope_config(raw: dict[str, Any]) -> RopeConfig:
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or {}
    theta = params.pop("rope_theta", None) or raw.get("rope_theta", 10000.0)
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type == "mrope":  # older Qwen2-VL configs name M-RoPE as a scaling type
        rope_type = "default"
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope scaling type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    return RopeConfig(
        theta=float(theta),
        type=rope_type,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=merged.get("original_max_position_embeddings"),
        mrope_section=tuple(merged["mrope_section"]) if merged.get("mrope_section") else None,
    )


def _eos_ids(raw: dict[str, Any]) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _quant_config(raw: dict[str, Any]) -> QuantConfig | None:
    """The checkpoint's quantization_config, when we run it (else a clear refusal)."""
    quant = raw.get("quantization_config")
    if not quant:
        return None
    method = str(quant.get("quant_method", "?")).lower()
    version = str(quant.get("version", "gemm")).lower()
    if method != "awq" or int(quant.get("bits", 4)) != 4 or version != "gemm" or not quant.get("zero_point", True):
        raise UnsupportedModelError(
            f"quantization {method} (bits {quant.get('bits')}, version {version}, zero point "
            f"{quant.get('zero_point', True)}) is not supported; supported: AWQ 4-bit with zero points, GEMM layout"
        )
    group = int(quant.get("group_size", 128))
    if group <= 0 or group % 16:
        raise UnsupportedModelError(f"AWQ group size {group} is not supported (a positive multiple of 16 is)")
    return QuantConfig(group_size=group)


def parse_model_config(raw: dict[str, Any], architecture: str, **family_defaults: Any) -> ModelConfig:
    """Build a ModelConfig; ``family_defaults`` are what the family implies when config.json is silent."""

    def get(key: str, default: Any = None) -> Any:
        value = raw.get(key)
        if value is None:
            value = family_defaults.get(key, default)
        return value

    num_heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    sliding = get("sliding_window")
    if not get("use_sliding_window", True):
        sliding = None
    return ModelConfig(
        architecture=architecture,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(get("num_key_value_heads", num_heads)),
        head_dim=int(get("head_dim", hidden // num_heads)),
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(get("max_position_embeddings", 2048)),
        rope=_rope_config(raw),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        qkv_bias=bool(get("qkv_bias", get("attention_bias", False))),
        o_bias=bool(get("o_bias", get("attention_bias", False))),
        mlp_bias=bool(get("mlp_bias", False)),
        qk_norm=bool(get("qk_norm", False)),
        sliding_window=int(sliding) if sliding else None,
        eos_token_ids=_eos_ids(raw),
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        quantization=_quant_config(raw),
    )
