"""The Models page over a real library folder: what it shows, import in place, delete, GGUF import."""

from __future__ import annotations

import json
import shutil

import pytest

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app import paths
from app.engine.starter import starter_gguf_path
from app.library import _safetensors_header
from app.ui.engine_bridge import start_bridge, stop_bridge
from app.ui.models_page import ModelsPage, _gib
from tests.ui.test_chat_page import answer_next_dialog


@pytest.fixture
def library(tmp_path):
    paths.use_models_dir(tmp_path / "models")
    yield paths.models_dir()
    paths.use_models_dir(None)


@pytest.fixture
def page(qtbot, library):
    models = ModelsPage()
    qtbot.addWidget(models)
    models.show()
    return models


def cells(page: ModelsPage, row: int) -> list[str]:
    return [page.table.item(row, c).text() for c in range(page.table.columnCount())]


def test_each_model_shows_what_it_is_and_what_it_needs(page, library, tiny_model_factory) -> None:
    llama, hf_llama = tiny_model_factory("llama")
    qwen, hf_qwen = tiny_model_factory("qwen2")
    shutil.copytree(llama, library / "tiny-llama")
    shutil.copytree(qwen, library / "tiny-qwen")
    (library / "half-done").mkdir()
    (library / "half-done" / "config.json").write_text("{}")
    page.refresh()
    assert [m.name for m in page.models] == ["tiny-llama", "tiny-qwen"]
    assert cells(page, 0)[:2] == ["tiny-llama", "LlamaForCausalLM"] and cells(page, 1)[1] == "Qwen2ForCausalLM"
    for model, hf in zip(page.models, (hf_llama, hf_qwen)):
        assert model.parameters == hf.num_parameters()  # tied embeddings counted once, as stored
        assert model.weight_type == "float32"
        weights = sum(i["data_offsets"][1] - i["data_offsets"][0]
                      for i in _safetensors_header(model.path / "model.safetensors").values())
        config = json.loads((model.path / "config.json").read_text())
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        kv = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2 * model.context
        assert model.memory_bytes == int(weights * 1.1 + kv) and model.size_bytes > weights
    assert "half-done holds no .safetensors weights" in page.message.text()  # explained, not hidden
    assert not any(m.vision for m in page.models)

    # Split over GPUs (Settings), the column is per GPU: half the weights, and half of the 2 KV
    # heads at 2 GPUs; at 4 each GPU still holds one whole head.
    llama_model = page.models[0]
    assert llama_model.kv_heads == 2
    page.set_split(2)
    per_gpu = llama_model.memory_per_gpu(2)
    assert per_gpu == int(llama_model.weight_bytes / 2 * 1.1 + llama_model.kv_bytes / 2)
    assert cells(page, 0)[5] == f"{_gib(per_gpu)} × 2 GPUs"
    assert llama_model.memory_per_gpu(4) == int(llama_model.weight_bytes / 4 * 1.1 + llama_model.kv_bytes / 2)


def test_import_in_place_and_delete_ask_first(page, library, tiny_model_factory, tmp_path, qtbot) -> None:
    folder, _ = tiny_model_factory("llama")
    outside = tmp_path / "elsewhere" / "my-llama"
    shutil.copytree(folder, outside)
    shutil.copytree(folder, library / "library-llama")
    page.import_folder(tmp_path / "elsewhere")  # not a model folder
    assert "has no config.json" in page.message.text()
    page.import_folder(outside)
    assert [(m.name, m.linked) for m in page.models] == [("library-llama", False), ("my-llama", True)]
    assert page.message.text() == "Imported my-llama."

    page.table.selectRow(1)
    asked = answer_next_dialog(qtbot, QMessageBox.StandardButton.No)
    qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)
    assert "Its files stay where they are" in asked[0] and len(page.models) == 2
    answer_next_dialog(qtbot, QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)
    assert [m.name for m in page.models] == ["library-llama"] and (outside / "config.json").is_file()

    page.set_loaded(str(library / "library-llama"))
    assert cells(page, 0)[-1] == "● Loaded" and not page.load_button.isEnabled()
    qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)  # no dialog: refused at once
    assert "unload it before deleting it" in page.message.text()
    page.set_loaded(None)
    asked = answer_next_dialog(qtbot, QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)
    assert "deletes" in asked[0] and "from disk" in asked[0]
    assert page.models == [] and not (library / "library-llama").exists()


def test_gguf_files_import_through_the_bridge(page, library, tmp_path, qtbot) -> None:
    bridge, thread = start_bridge()  # no model loaded: conversion needs none
    try:
        page.gguf_import_requested.connect(bridge.request_import_gguf)
        bridge.gguf_imported.connect(page.on_gguf_imported, Qt.ConnectionType.QueuedConnection)
        cut = tmp_path / "cut.gguf"
        cut.write_bytes(starter_gguf_path().read_bytes()[:100_000])
        with qtbot.waitSignal(bridge.gguf_imported, timeout=30_000):
            page.gguf_import_requested.emit(str(cut))
        qtbot.waitUntil(lambda: "Could not import the GGUF file" in page.message.text())
        assert "not a readable GGUF file" in page.message.text() and page.models == []
        with qtbot.waitSignal(bridge.gguf_imported, timeout=120_000):
            page.gguf_import_requested.emit(str(starter_gguf_path()))
        qtbot.waitUntil(lambda: page.models != [])
        assert [(m.architecture, m.linked) for m in page.models] == [("LlamaForCausalLM", False)]
        assert page.message.text() == f"Imported {starter_gguf_path().stem}."
    finally:
        stop_bridge(bridge, thread)


def test_vision_models_are_marked(page, library) -> None:
    from tests.tiny_models import write_tiny_llava

    write_tiny_llava(library / "tiny-llava")
    page.refresh()
    (model,) = page.models
    assert model.vision and cells(page, 0)[1] == "LlavaForConditionalGeneration · reads pictures"
