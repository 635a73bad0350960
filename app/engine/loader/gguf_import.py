"""Turn a llama.cpp GGUF file into an ordinary Hugging Face model folder.

The engine (and transformers, its correctness oracle) read HF folders: ``config.json``,
``model.safetensors``, ``tokenizer.json``. Many small models ship as GGUF, so a GGUF is
converted once, on import, rather than taught to the engine as a second format.

Supported: ``general.architecture`` ``llama`` (SmolLM, Llama, Mistral), ``qwen2`` and ``qwen3``
with a byte-level BPE (``gpt2``) tokenizer. Anything that cannot be mapped faithfully is
refused with a :class:`GGUFImportError` instead of being approximated.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors


class GGUFImportError(ValueError):
    """The file is not a GGUF that can be converted faithfully (bad file, or unsupported model)."""


# general.architecture -> (HF model_type, HF architecture class)
_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}

_MISSING = object()


# ---------------------------------------------------------------------------------------------
# Reading the file


def _open(gguf_path: Path) -> GGUFReader:
    """Parse the header; every way a foreign or cut-short file fails becomes a GGUFImportError."""
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    try:
        reader = GGUFReader(gguf_path)
    except Exception as exc:  # the reader raises ValueError/IndexError/KeyError on bad or truncated data
        raise GGUFImportError(f"{gguf_path} is not a readable GGUF file (truncated or not GGUF): {exc}") from exc
    if reader.byte_order != "I":
        raise GGUFImportError(f"{gguf_path} is a big-endian GGUF; only little-endian files are supported")
    return reader


def _field(reader: GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """A metadata value as a Python object; a required key that is absent is an import error."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise GGUFImportError(f"GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def _int_field(reader: GGUFReader, key: str, default: Any = _MISSING) -> int:
    """Per-layer arrays (e.g. a list of head counts) have no HF equivalent in these architectures."""
    value = _field(reader, key, default)
    if not isinstance(value, int):
        raise GGUFImportError(f"GGUF metadata {key!r} = {value!r}: expected a single integer")
    return value


# ---------------------------------------------------------------------------------------------
# Model shape and config.json


@dataclass(frozen=True)
class _Hyper:
    """The model's shape, read from GGUF metadata and tensor shapes."""

    arch: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    context_length: int
    vocab_size: int
    tied: bool
    attention_bias: bool


def _rope_scaling(reader: GGUFReader, arch: str) -> dict[str, Any] | None:
    """Only linear scaling maps one-to-one onto HF; YaRN/LongRoPE carry parameters GGUF does not keep."""
    kind = _field(reader, f"{arch}.rope.scaling.type", "none")
    legacy_factor = _field(reader, f"{arch}.rope.scale_linear", 1.0)  # what older files wrote instead
    factor = float(_field(reader, f"{arch}.rope.scaling.factor", legacy_factor))
    if kind == "none" and factor != 1.0:
        kind = "linear"
    if kind == "none" or (kind == "linear" and factor == 1.0):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    raise GGUFImportError(
        f"RoPE scaling type {kind!r} cannot be converted faithfully; only 'linear' is supported"
    )


def _hyperparameters(reader: GGUFReader, arch: str) -> _Hyper:
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise GGUFImportError("GGUF has no token_embd.weight tensor")
    hidden = _int_field(reader, f"{arch}.embedding_length")
    num_heads = _int_field(reader, f"{arch}.attention.head_count")
    head_dim = _int_field(reader, f"{arch}.attention.key_length", hidden // num_heads)
    value_dim = _int_field(reader, f"{arch}.attention.value_length", head_dim)
    rope_dim = _int_field(reader, f"{arch}.rope.dimension_count", head_dim)
    if value_dim != head_dim or rope_dim != head_dim:
        raise GGUFImportError(
            f"head sizes key={head_dim} value={value_dim} rope={rope_dim} differ; "
            f"{arch} in transformers needs them equal"
        )
    return _Hyper(
        arch=arch,
        num_layers=_int_field(reader, f"{arch}.block_count"),
        hidden_size=hidden,
        intermediate_size=_int_field(reader, f"{arch}.feed_forward_length"),
        num_heads=num_heads,
        num_kv_heads=_int_field(reader, f"{arch}.attention.head_count_kv", num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(reader, arch),
        context_length=_int_field(reader, f"{arch}.context_length"),
        vocab_size=int(tensors["token_embd.weight"].shape[-1]),  # GGUF shapes are [hidden, vocab]
        tied="output.weight" not in tensors,
        attention_bias=arch != "qwen2" and "blk.0.attn_q.bias" in tensors,
    )


@dataclass(frozen=True)
class _SpecialTokens:
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    stop: list[int]  # eos plus end-of-turn/end-of-message tokens, for generation


def _special_tokens(reader: GGUFReader) -> _SpecialTokens:
    def token_id(name: str) -> int | None:
        return _field(reader, f"tokenizer.ggml.{name}_token_id", None)

    eos = token_id("eos")
    stop = [t for t in (eos, token_id("eot"), token_id("eom")) if t is not None]
    return _SpecialTokens(
        bos=token_id("bos"),
        eos=eos,
        unk=token_id("unknown"),
        pad=token_id("padding"),
        stop=list(dict.fromkeys(stop)),
    )


def _one_or_list(ids: list[int]) -> int | list[int] | None:
    return None if not ids else ids[0] if len(ids) == 1 else ids


def _hf_config(hp: _Hyper, special: _SpecialTokens, dtype: torch.dtype) -> dict[str, Any]:
    """transformers-4 style (rope_theta/rope_scaling), which transformers 5 also reads."""
    model_type, architecture = _ARCHITECTURES[hp.arch]
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": hp.vocab_size,
        "hidden_size": hp.hidden_size,
        "intermediate_size": hp.intermediate_size,
        "num_hidden_layers": hp.num_layers,
        "num_attention_heads": hp.num_heads,
        "num_key_value_heads": hp.num_kv_heads,
        "head_dim": hp.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": hp.rms_norm_eps,
        "rope_theta": hp.rope_theta,
        "rope_scaling": hp.rope_scaling,
        "max_position_embeddings": hp.context_length,
        "tie_word_embeddings": hp.tied,
        "bos_token_id": special.bos,
        "eos_token_id": _one_or_list(special.stop),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }
    if special.pad is not None:
        config["pad_token_id"] = special.pad
    if hp.arch in ("llama", "qwen3"):
        config["attention_bias"] = hp.attention_bias
    if hp.arch == "llama":
        config["mlp_bias"] = False
    if hp.arch in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
    return config


def _generation_config(special: _SpecialTokens) -> dict[str, Any]:
    config: dict[str, Any] = {"bos_token_id": special.bos, "eos_token_id": _one_or_list(special.stop)}
    if special.pad is not None:
        config["pad_token_id"] = special.pad
    return config


# ---------------------------------------------------------------------------------------------
# Tensors


@dataclass(frozen=True)
class _Target:
    """Where one GGUF tensor goes: HF name, HF shape, and (for llama q/k) the head count to un-permute."""

    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    rotary_heads: int | None = None


def _layer_targets(hp: _Hyper) -> dict[str, tuple[str, tuple[int, ...], int | None]]:
    """GGUF per-layer suffix -> (HF suffix, HF shape, rotary heads) for this architecture."""
    h, f, d = hp.hidden_size, hp.intermediate_size, hp.head_dim
    q, kv = hp.num_heads * d, hp.num_kv_heads * d
    # llama.cpp reorders q/k rows of `llama` models only; qwen2/qwen3 keep HF's layout.
    q_heads, kv_heads = (hp.num_heads, hp.num_kv_heads) if hp.arch == "llama" else (None, None)
    targets: dict[str, tuple[str, tuple[int, ...], int | None]] = {
        "attn_norm.weight": ("input_layernorm.weight", (h,), None),
        "attn_q.weight": ("self_attn.q_proj.weight", (q, h), q_heads),
        "attn_k.weight": ("self_attn.k_proj.weight", (kv, h), kv_heads),
        "attn_v.weight": ("self_attn.v_proj.weight", (kv, h), None),
        "attn_output.weight": ("self_attn.o_proj.weight", (h, q), None),
        "ffn_norm.weight": ("post_attention_layernorm.weight", (h,), None),
        "ffn_gate.weight": ("mlp.gate_proj.weight", (f, h), None),
        "ffn_up.weight": ("mlp.up_proj.weight", (f, h), None),
        "ffn_down.weight": ("mlp.down_proj.weight", (h, f), None),
    }
    if hp.arch == "qwen2" or hp.attention_bias:
        targets["attn_q.bias"] = ("self_attn.q_proj.bias", (q,), q_heads)
        targets["attn_k.bias"] = ("self_attn.k_proj.bias", (kv,), kv_heads)
        targets["attn_v.bias"] = ("self_attn.v_proj.bias", (kv,), None)
    if hp.attention_bias:  # HF's attention_bias covers o_proj as well
        targets["attn_output.bias"] = ("self_attn.o_proj.bias", (h,), None)
    if hp.arch == "qwen3":
        targets["attn_q_norm.weight"] = ("self_attn.q_norm.weight", (d,), None)
        targets["attn_k_norm.weight"] = ("self_attn.k_norm.weight", (d,), None)
    return targets


def _tensor_plan(reader: GGUFReader, hp: _Hyper) -> list[_Target]:
    """Map every GGUF tensor to its HF name; any missing, unknown or misshapen tensor is an error."""
    expected = {
        "token_embd.weight": ("model.embed_tokens.weight", (hp.vocab_size, hp.hidden_size), None),
        "output_norm.weight": ("model.norm.weight", (hp.hidden_size,), None),
    }
    if not hp.tied:
        expected["output.weight"] = ("lm_head.weight", (hp.vocab_size, hp.hidden_size), None)
    for layer in range(hp.num_layers):
        for suffix, (hf_suffix, shape, heads) in _layer_targets(hp).items():
            expected[f"blk.{layer}.{suffix}"] = (f"model.layers.{layer}.{hf_suffix}", shape, heads)

    present = [t.name for t in reader.tensors]
    if "rope_freqs.weight" in present:
        raise GGUFImportError(
            "per-frequency RoPE factors (rope_freqs.weight, Llama-3.1-style scaling) are not supported"
        )
    unknown = sorted(set(present) - expected.keys())
    missing = sorted(expected.keys() - set(present))
    if unknown or missing:
        raise GGUFImportError(
            f"tensors do not match a {hp.arch} model: unexpected {unknown[:5]}, missing {missing[:5]}"
        )

    plan = []
    for tensor in reader.tensors:
        hf_name, shape, heads = expected[tensor.name]
        gguf_shape = tuple(reversed([int(n) for n in tensor.shape]))  # GGUF lists the fastest axis first
        if gguf_shape != shape:
            raise GGUFImportError(f"tensor {tensor.name} has shape {gguf_shape}, metadata implies {shape}")
        plan.append(_Target(tensor.name, hf_name, shape, heads))
    return plan


def _unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order for `llama` models.

    HF rotates each head with rotate_half: row i pairs with row i + head_dim/2. llama.cpp
    rotates adjacent pairs (2i, 2i+1), so its converter stores HF row ``s*head_dim/2 + i``
    of every head at row ``2i + s``. Read rows as (head, i, s) and put them back as (head, s, i).
    """
    head_dim = weight.shape[0] // num_heads
    rest = weight.shape[1:]
    return weight.reshape(num_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(weight.shape)


def _convert_tensor(tensor: ReaderTensor, target: _Target, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize one tensor to float32, fix its layout, and keep only the `dtype` copy."""
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise GGUFImportError(
            f"tensor {tensor.name}: the gguf package cannot dequantize {tensor.tensor_type.name}"
        ) from exc
    weight = torch.from_numpy(np.array(values, dtype=np.float32).reshape(target.shape))
    if target.rotary_heads is not None:
        weight = _unpermute_rotary(weight, target.rotary_heads)
    # float32 and bfloat16 share an exponent range; only float16 can overflow.
    if dtype == torch.float16 and weight.abs().amax() > torch.finfo(dtype).max:
        raise GGUFImportError(f"tensor {tensor.name} has values too large for {dtype}; choose another dtype")
    return weight.to(dtype).contiguous()


def _write_safetensors(path: Path, reader: GGUFReader, plan: list[_Target], dtype: torch.dtype) -> None:
    """Stream tensors into a .safetensors file one at a time, so peak memory is one tensor, not the model.

    The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
    byte range), then the raw little-endian tensor bytes in header order.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for target in plan:
        nbytes = math.prod(target.shape) * dtype.itemsize
        header[target.hf_name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(target.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    tensors = {t.name: t for t in reader.tensors}
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for target in plan:
            converted = _convert_tensor(tensors[target.gguf_name], target, dtype)
            out.write(converted.view(torch.uint8).numpy())


# ---------------------------------------------------------------------------------------------
# Tokenizer

# Split regexes of the original HF tokenizers, as llama.cpp's `tokenizer.ggml.pre` names them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _PreTokenizerSpec:
    split_regex: str | None  # None: GPT-2's regex, built into ByteLevel
    individual_digits: bool = False  # split every digit apart before the regex (StarCoder/SmolLM)
    nfc: bool = False  # the HF tokenizer NFC-normalizes its input (Qwen2)
    ignore_merges: bool = False  # whole words already in the vocab skip BPE (Llama 3)


_PRE_TOKENIZERS = {
    "gpt2": _PreTokenizerSpec(None),
    "smollm": _PreTokenizerSpec(None, individual_digits=True),
    "llama-bpe": _PreTokenizerSpec(_LLAMA3_SPLIT, ignore_merges=True),
    "qwen2": _PreTokenizerSpec(_QWEN2_SPLIT, nfc=True),
}

_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def _pre_tokenizer_spec(reader: GGUFReader) -> _PreTokenizerSpec:
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        kind = "SentencePiece ('llama')" if model == "llama" else repr(model)
        raise GGUFImportError(f"tokenizer model {kind} is not supported; only byte-level BPE ('gpt2') is")
    pre = _field(reader, "tokenizer.ggml.pre", None)
    if pre not in _PRE_TOKENIZERS:
        raise GGUFImportError(
            f"tokenizer pre-tokenizer type {pre!r} is not supported; supported: {', '.join(_PRE_TOKENIZERS)}"
        )
    return _PRE_TOKENIZERS[pre]


def _bpe_model(tokens: list[str], merges: list[str], spec: _PreTokenizerSpec) -> models.BPE:
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    pairs = []
    for merge in merges:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise GGUFImportError(f"malformed BPE merge {merge!r}")
        pairs.append((parts[0], parts[1]))
    return models.BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges, fuse_unk=False)


def _pre_tokenizer(spec: _PreTokenizerSpec) -> pre_tokenizers.PreTokenizer:
    steps: list[pre_tokenizers.PreTokenizer] = []
    if spec.individual_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if spec.split_regex is not None:
        steps.append(pre_tokenizers.Split(Regex(spec.split_regex), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=spec.split_regex is None))
    return pre_tokenizers.Sequence(steps)


def _added_tokens(tokens: list[str], token_types: list[int], kind: int, special: bool) -> list[AddedToken]:
    return [AddedToken(tokens[i], special=special, normalized=False) for i, t in enumerate(token_types) if t == kind]


def _post_processor(tokens: list[str], special: _SpecialTokens, add_bos: bool, add_eos: bool) -> Any:
    """Prepend BOS / append EOS the way llama.cpp does when the GGUF asks for it."""
    if not (add_bos or add_eos):
        return processors.ByteLevel(trim_offsets=False)
    bos = special.bos if add_bos else None
    eos = special.eos if add_eos else None
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise GGUFImportError("the GGUF asks to add a BOS/EOS token but does not define it")

    def sequence(name: str, type_id: int) -> list[str]:
        return [
            *([f"{tokens[bos]}:{type_id}"] if bos is not None else []),
            f"${name}:{type_id}",
            *([f"{tokens[eos]}:{type_id}"] if eos is not None else []),
        ]

    used = {token_id: tokens[token_id] for token_id in (bos, eos) if token_id is not None}
    return processors.TemplateProcessing(
        single=sequence("A", 0),
        pair=sequence("A", 0) + sequence("B", 1),
        special_tokens=[(text, token_id) for token_id, text in used.items()],
    )


def _build_tokenizer(
    reader: GGUFReader, tokens: list[str], special: _SpecialTokens, add_bos: bool, add_eos: bool
) -> Tokenizer:
    spec = _pre_tokenizer_spec(reader)
    token_types: list[int] = _field(reader, "tokenizer.ggml.token_type", [])
    tokenizer = Tokenizer(_bpe_model(tokens, _field(reader, "tokenizer.ggml.merges", []), spec))
    if spec.nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(spec)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(tokens, special, add_bos, add_eos)
    # Control tokens are HF's special added tokens; user-defined ones are added tokens that are
    # not special (llama.cpp's converter makes that split). Both are matched verbatim, before BPE.
    tokenizer.add_special_tokens(_added_tokens(tokens, token_types, _CONTROL, special=True))
    tokenizer.add_tokens(_added_tokens(tokens, token_types, _USER_DEFINED, special=False))
    return tokenizer


def _tokenizer_config(
    reader: GGUFReader, tokens: list[str], hp: _Hyper, special: _SpecialTokens, add_bos: bool, add_eos: bool
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,  # llama.cpp decodes tokens verbatim
        "model_max_length": hp.context_length,
    }
    for name, token_id in (("bos", special.bos), ("eos", special.eos), ("unk", special.unk), ("pad", special.pad)):
        if token_id is not None:
            config[f"{name}_token"] = tokens[token_id]
    chat_template = _field(reader, "tokenizer.chat_template", None)
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def _check_vocab(tokens: list[str], hp: _Hyper, special: _SpecialTokens) -> None:
    if not 0 < len(tokens) <= hp.vocab_size:
        raise GGUFImportError(f"the tokenizer has {len(tokens)} tokens but the embedding has {hp.vocab_size} rows")
    for token_id in (special.bos, special.eos, special.unk, special.pad, *special.stop):
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise GGUFImportError(f"special token id {token_id} is outside the {len(tokens)}-token vocabulary")


# ---------------------------------------------------------------------------------------------
# Writing the folder


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fsync_files(folder: Path) -> None:
    """Flush file contents before the rename publishes the folder, so a crash cannot leave empty files."""
    for path in folder.iterdir():
        with path.open("rb+") as handle:
            os.fsync(handle.fileno())


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; losing a race to another conversion is FileExistsError."""
    try:
        staging.rename(out_dir)
    except OSError as exc:
        if out_dir.exists():
            raise FileExistsError(f"{out_dir} appeared while converting") from exc
        raise


def _architecture(reader: GGUFReader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise GGUFImportError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(_ARCHITECTURES)}"
        )
    return arch


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Convert a GGUF file into a Hugging Face model folder at `out_dir` and return `out_dir`.

    Weights are dequantized and stored as `dtype`. The folder is assembled in a hidden sibling
    and renamed into place last, so `out_dir` exists only once it is complete.
    Raises GGUFImportError for a file that is not GGUF, truncated, or not a supported model,
    and FileExistsError if `out_dir` already exists.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"dtype must be one of {list(_SAFETENSORS_DTYPES)}, got {dtype}")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another folder")

    reader = _open(gguf_path)
    arch = _architecture(reader)
    hp = _hyperparameters(reader, arch)
    special = _special_tokens(reader)
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    _check_vocab(tokens, hp, special)
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
    tokenizer = _build_tokenizer(reader, tokens, special, add_bos, add_eos)
    plan = _tensor_plan(reader, hp)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        _write_json(staging / "config.json", _hf_config(hp, special, dtype))
        _write_json(staging / "generation_config.json", _generation_config(special))
        tokenizer.save(str(staging / "tokenizer.json"))
        _write_json(
            staging / "tokenizer_config.json", _tokenizer_config(reader, tokens, hp, special, add_bos, add_eos)
        )
        _write_safetensors(staging / "model.safetensors", reader, plan, dtype)
        _fsync_files(staging)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
