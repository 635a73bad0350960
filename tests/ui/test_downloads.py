"""Downloads from the window, against a local hub through the real huggingface_hub client: start one
from Discover, watch the bar move, pause and resume it, and load what arrived."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app import paths
from app.chats.store import ChatStore
from app.downloader import CatalogEntry, JobState, ManagerConfig, RetryPolicy, TokenStore
from app.ui.downloads_panel import Downloads
from app.ui.engine_bridge import start_bridge, stop_bridge
from app.ui.main_window import MainWindow
from app.ui.settings import AppSettings
from tests.downloader.conftest import folder_files
from tests.downloader.fake_hub import FakeHub

CPU = {"device": "cpu", "dtype": "float32", "block_size": 16, "num_cache_blocks": 64}


def entry(repo: str, size: int) -> CatalogEntry:
    return CatalogEntry(id="tiny", name="Tiny Llama", family="Llama", kind="chat", params_b=0.0001, quantization=None,
                        architecture="LlamaForCausalLM", repos={"hf": repo}, size_bytes=size, memory_bytes=size * 2,
                        context_tokens=256, license="mit", gated=False, good_for="Tests")


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, tiny_model_factory):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    source, _ = tiny_model_factory("llama")
    served = folder_files(source)
    hub = FakeHub().start()
    hub.add("org/tiny-llama", served)
    hub.rate_bps = 400_000  # a second or so for the weights: long enough to watch and to pause
    settings = AppSettings(tmp_path / "settings.ini")
    settings.models_dir = str(tmp_path / "models")
    settings.set_endpoint("hf", hub.url)
    tokens = TokenStore(tmp_path / "tokens.json", use_keyring=False)
    downloads = Downloads(ManagerConfig(retry=RetryPolicy(attempts=3, backoff_s=0.05, timeout_s=10), tokens=tokens,
                                        progress_interval_s=0.05))
    store = ChatStore(tmp_path / "chats")
    bridge, thread = start_bridge()
    win = MainWindow(store, bridge, source, CPU, settings, downloads, [entry("org/tiny-llama", sum(map(len, served.values())))],
                     tokens)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.state_label.text() == "Ready", timeout=60_000)
    win.hub, win.served = hub, served
    yield win
    win.close()
    stop_bridge(bridge, thread)
    store.close()
    hub.stop()
    paths.use_models_dir(None)


def test_download_from_discover_moves_the_bar_pauses_resumes_and_loads(qtbot, window) -> None:
    discover, panel = window.discover, window.downloads_panel
    window.sidebar.setCurrentRow(1)
    window.models_tabs.setCurrentWidget(discover)
    assert discover.catalog_table.item(0, 0).text().startswith("Tiny Llama")
    qtbot.waitUntil(lambda: discover.catalog_table.item(0, 3).text() != "", timeout=10_000)  # the fit, once devices are known
    assert discover.catalog_table.item(0, 3).text() == "● Runs on the CPU (slower)"  # no GPU here, plenty of RAM
    qtbot.mouseClick(discover.download_button, Qt.MouseButton.LeftButton)
    assert window.models_tabs.currentWidget() is panel
    qtbot.waitUntil(lambda: len(panel.rows) == 1, timeout=10_000)
    row = next(iter(panel.rows.values()))

    seen = []
    qtbot.waitUntil(lambda: seen.append(row.bar.value()) or 300 < row.bar.value() < 900, timeout=30_000)
    qtbot.mouseClick(row.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: row.snapshot.state is JobState.PAUSED, timeout=30_000)
    assert row.pause_button.text() == "Resume" and row.status.text().startswith("Paused")
    paused_at = next(f.done for f in row.snapshot.files if f.path == "model.safetensors")
    assert 0 < paused_at < len(window.served["model.safetensors"])
    qtbot.mouseClick(row.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: row.snapshot.state is JobState.DONE, timeout=60_000)
    assert row.bar.value() == 1000 and row.load_button.isVisible() and not row.pause_button.isVisible()
    moving = [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]]
    assert len(moving) >= 3 and moving == sorted(moving), moving  # the bar moved, and only forward

    resumed = [r.range for r in window.hub.requests_for("model.safetensors") if r.range and r.status == 206]
    assert resumed == [f"bytes={paused_at}-"]  # went on from the partial file, not from the start
    got = folder_files(row.snapshot.dest)
    got.pop(".lmstation-download.json")
    assert got == window.served  # byte for byte
    assert "tiny-llama" in [m.name.removeprefix("org--") for m in window.models.models]

    qtbot.mouseClick(row.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.model_label.text() == "org--tiny-llama" and window.state_label.text() == "Ready",
                    timeout=60_000)


def test_hub_search_lists_models_and_says_when_the_hub_cannot_be_reached(qtbot, window) -> None:
    discover = window.discover
    window.hub.add("org/other-model", {"config.json": b"{}"})
    discover.query.setText("tiny")
    qtbot.mouseClick(discover.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: discover.tables.currentWidget() is discover.results_table, timeout=30_000)
    assert [r.repo for r in discover.results] == ["org/tiny-llama"] and discover.message.text() == "1 model found."
    assert discover.selected_request().repo == "org/tiny-llama" and discover.selected_request().endpoint == window.hub.url
    qtbot.mouseClick(discover.back_button, Qt.MouseButton.LeftButton)
    assert discover.tables.currentWidget() is discover.catalog_table

    window.settings.set_endpoint("hf", "ftp://127.0.0.1:9")  # a mistyped mirror (the client fails at once)
    qtbot.mouseClick(discover.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: discover.search_button.isEnabled() and "ftp://127.0.0.1:9" in discover.message.text(),
                    timeout=30_000)
    assert discover.results == [] and "search 'tiny': cannot reach" in discover.message.text()


def test_mirrors_and_tokens_are_set_in_settings(window) -> None:
    page = window.settings_page
    assert page.mirrors["hf"].text() == window.hub.url
    page.token_fields["hf"].setText("hf_secret")
    page.token_fields["hf"].editingFinished.emit()
    assert page.tokens.get("hf") == "hf_secret"
    assert (page.tokens.path.stat().st_mode & 0o777) == 0o600  # only this user can read it
    page.token_fields["hf"].setText("")
    page.token_fields["hf"].editingFinished.emit()
    assert page.tokens.get("hf") is None
    page.mirrors["modelscope"].setText("https://mirror.example/ms/")
    page.mirrors["modelscope"].editingFinished.emit()
    assert window.settings.endpoint("modelscope") == "https://mirror.example/ms"
