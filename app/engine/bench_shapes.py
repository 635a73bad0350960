"""Real model shapes with random weights, for speed measurements without checkpoints.

A shape folder holds config.json and a synthetic word-level tokenizer covering the whole
vocabulary (so generated ids detokenize as they would with a real one); the engine fills
the weights at random (``EngineConfig.load_format="random"``).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SHAPES: dict[str, dict] = {
    "llama-3-8b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
        torch_dtype="bfloat16",
    ),
    "smollm2-135m": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
        rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        torch_dtype="bfloat16",
    ),
}
# The same shape as a 4-bit AWQ checkpoint (group 128): W4A16 speed without a quantized checkpoint.
SHAPES["llama-3-8b-awq"] = dict(SHAPES["llama-3-8b"], torch_dtype="float16", quantization_config={
    "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"})


def write_word_tokenizer(folder: Path, vocab_size: int, specials: tuple[str, ...] = (), **tokens: str):
    """A tokenizer of "<id>" words, one per id, with ``specials`` taking the vocabulary's last ids:
    a prompt of random ids is written as words, and each word is one token. ``tokens``: the
    tokenizer's named tokens (eos_token=..., ...)."""
    words = vocab_size - len(specials)
    vocab = {f"<{i}>": i for i in range(words)} | {s: words + k for k, s in enumerate(specials)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<0>", additional_special_tokens=list(specials),
                                        **tokens)
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_shape_folder(shape: str, folder: Path) -> Path:
    """config.json + tokenizer for a named shape; returns the folder (made once)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(sorted(SHAPES))}")
    config = dict(SHAPES[shape], bos_token_id=0, eos_token_id=1)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tokenizer.json").is_file():
        write_word_tokenizer(folder, config["vocab_size"], bos_token="<0>", eos_token="<1>")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def write_random_weights(folder: Path, shapes: dict[str, tuple[int, ...]], device: str, std: float = 0.02,
                         shard_bytes: float = 5e9) -> int:
    """A checkpoint of random bf16 weights for a transformers model's tensors (name -> shape), for
    benchmarks that feed it to transformers as well: normal(0, std) drawn on ``device`` (fast on a
    GPU, and every tensor written, unlike a model built there by transformers), norm weights ones;
    safetensors shards of at most ``shard_bytes`` with their index. Returns the bytes written."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator(device=device).manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, size in shapes.items():
        if "norm" in name and len(size) == 1:
            tensor = torch.ones(size, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(size, generator=gen, device=device) * std).to(torch.bfloat16).cpu()
        if shards[-1] and sum(t.nbytes for t in shards[-1].values()) + tensor.nbytes > shard_bytes:
            shards.append({})
        shards[-1][name] = tensor
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.nbytes for shard in shards for t in shard.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total
