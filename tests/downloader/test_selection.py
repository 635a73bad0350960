"""Picking the files a model folder needs from what a repository holds."""

from __future__ import annotations

from app.downloader import FileChoice, RepoFile, select_files, variants


def repo(*paths: str) -> list[RepoFile]:
    return [RepoFile(p, 100, f"http://hub/{p}") for p in paths]


def picked(files: list[RepoFile], **choice) -> list[str]:
    return [f.path for f in select_files(files, FileChoice(**choice))]


COMMON = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
          "special_tokens_map.json", "merges.txt", "vocab.json", "chat_template.jinja", "preprocessor_config.json",
          "README.md", "LICENSE", ".gitattributes", "assets/logo.png")
KEPT = sorted(p for p in COMMON if p not in (".gitattributes", "assets/logo.png"))


def test_safetensors_win_over_their_duplicates() -> None:
    files = repo(*COMMON, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin",
                 "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json", "onnx/model.onnx",
                 "original/consolidated.00.pth", "original/params.json", "model.gguf", "flax_model.msgpack")
    assert picked(files) == sorted(KEPT + ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                           "model.safetensors.index.json"])


def test_other_formats_when_asked() -> None:
    files = repo("config.json", "model.safetensors", "pytorch_model.bin", "pytorch_model.bin.index.json")
    assert picked(files, formats=("bin",)) == ["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]
    assert picked(files, formats=("safetensors", "bin")) == ["config.json", "model.safetensors", "pytorch_model.bin",
                                                             "pytorch_model.bin.index.json"]
    assert picked(files, everything=True) == [f.path for f in files]


def test_bin_weights_when_there_are_no_safetensors() -> None:
    assert picked(repo("config.json", "pytorch_model.bin", "model.onnx")) == ["config.json", "pytorch_model.bin"]


def test_one_copy_of_the_weights_when_a_repo_has_two_layouts() -> None:
    files = repo("config.json", "params.json", "consolidated.safetensors", "model-00001-of-00002.safetensors",
                 "model-00002-of-00002.safetensors", "model.safetensors.index.json")
    assert picked(files) == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                             "model.safetensors.index.json", "params.json"]
    assert variants(files) == ["consolidated", "model"]


def test_precision_variant_of_safetensors() -> None:
    files = repo("config.json", "model.safetensors", "model.fp16.safetensors")
    assert picked(files) == ["config.json", "model.safetensors"]
    assert picked(files, variant="fp16") == ["config.json", "model.fp16.safetensors"]


def test_one_gguf_quantization() -> None:
    files = repo("README.md", "Qwen2.5-7B-Instruct-Q2_K.gguf", "Qwen2.5-7B-Instruct-Q4_K_M.gguf",
                 "Qwen2.5-7B-Instruct-Q8_0.gguf", "Qwen2.5-7B-Instruct-bf16-00001-of-00002.gguf",
                 "Qwen2.5-7B-Instruct-bf16-00002-of-00002.gguf", "Qwen2.5-7B-Instruct-IQ4_XS.gguf")
    assert variants(files) == ["BF16", "IQ4_XS", "Q2_K", "Q4_K_M", "Q8_0"]
    assert picked(files) == ["Qwen2.5-7B-Instruct-Q4_K_M.gguf", "README.md"]
    assert picked(files, variant="q8_0") == ["Qwen2.5-7B-Instruct-Q8_0.gguf", "README.md"]
    assert picked(files, variant="BF16") == ["Qwen2.5-7B-Instruct-bf16-00001-of-00002.gguf",
                                             "Qwen2.5-7B-Instruct-bf16-00002-of-00002.gguf", "README.md"]


def test_a_repo_without_weights_gives_only_metadata() -> None:
    assert picked(repo("config.json", "weights.pth")) == ["config.json"]
