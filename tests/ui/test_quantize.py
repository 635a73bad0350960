"""Quantization from the app with real parts (the quantizer in its own process, the engine, the
starter model): one click to a loaded 4-bit model and its report, a responsive window meanwhile,
the wizard's own settings and Cancel, and bad input refused before anything is written."""

from __future__ import annotations

import json
import re

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from app import paths
from app.library import describe_model
from app.ui.quantize_page import REPORT, RUN, SETTINGS
from app.ui.quantize_plan import default_group_size, output_folder, read_config
from app.ui.settings import AppSettings
from tests.ui.heartbeat import Heartbeat
from tests.ui.test_main_window import open_window  # noqa: F401 (a fixture)

# Small enough for two CPU cores in well under a minute; the app's defaults are QuantizeConfig's.
SMALL = {"calib_samples": 8, "calib_seqlen": 64, "scale_grid": 3, "clip_grid": 2, "search_samples": 4}
SMALL_REPORT = {"ppl_windows": 2, "ppl_seqlen": 64, "decode_tokens": 8, "answer_tokens": 16}
STARTER = "SmolLM2-135M-Instruct"


@pytest.fixture
def window(open_window, starter_model, tmp_path):  # noqa: F811 (the imported fixture)
    """The app on the starter model, with a library of its own holding only the starter (in place)."""
    AppSettings(tmp_path / "settings.ini").models_dir = str(tmp_path / "models")
    window = open_window(starter_model)
    window.models.import_folder(starter_model)
    window.quantize_page.tuning = dict(SMALL)
    window.quantize_page.report_settings = dict(SMALL_REPORT)
    return window


def click(qtbot, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def select(models, name: str) -> None:
    models.table.selectRow([m.name for m in models.models].index(name))


def test_one_click_gives_a_loaded_4_bit_model_and_its_report_without_stalling_the_window(qtbot, window) -> None:
    models, library = window.models, paths.models_dir()
    window.show_page(window.models_tabs)
    select(models, STARTER)
    assert models.quantize_button.isVisible() and models.quantize_button.isEnabled()
    seen, layers = set(), set()
    window.quantizer.progress.connect(lambda p: layers.add(p["layer"]), Qt.ConnectionType.QueuedConnection)
    # From the click until the window, the run over and its report shown, asks for the 4-bit model's load
    # (a load of its own: the engine's, after the quantizing).
    with Heartbeat(until=window.bridge.request_load) as beat, \
            qtbot.waitSignal(window.quantizer.finished, timeout=300_000) as done:
        click(qtbot, models.quantize_button)
        assert not models.quantize_button.isEnabled()  # one run at a time
        while window.quantizer.running:
            seen.add(models.quantize_status.detail.text())
            qtbot.wait(20)
    assert beat.longest < 0.1, f"the GUI thread stalled {beat.longest * 1e3:.0f} ms while quantizing"
    assert layers == set(range(31))  # every layer, then the writing
    assert any(re.fullmatch(r"Layer \d+ of 30 · .+ · \d+:\d\d elapsed · .+ left", text) for text in seen), seen
    assert any("Making its report" in text for text in seen), seen

    report = done.args[0]
    out = library / f"{STARTER}-AWQ"  # group size 64: 128 does not divide the starter's 576
    assert report["out"] == str(out) and report["settings"]["group_size"] == 64 and not report["error"]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 64
    for side in ("before", "after"):
        figures = report[side]
        assert figures["perplexity"] > 1 and figures["size_bytes"] > 0 and figures["tokens_per_s"] > 0
        assert len(figures["answers"]) == 3 and all(answer.strip() for answer in figures["answers"])
    assert report["after"]["size_bytes"] < report["before"]["size_bytes"] / 2
    assert "Paris" in report["before"]["answers"][0]
    assert report["speed_device"] == "cpu"  # and the report says why 4 bits are no faster there

    qtbot.waitUntil(lambda: window.model_label.text() == f"{STARTER}-AWQ" and window.state_label.text() == "Ready",
                    timeout=120_000)
    assert window.pages.currentWidget() is window.quantize_page
    assert window.quantize_page.stack.currentIndex() == REPORT
    assert f"{STARTER}-AWQ is ready" in window.quantize_page.report_view.heading.text()
    notes = [label.text() for label in window.quantize_page.report_view.findChildren(QLabel)]
    assert any("expanded when the model loads" in text for text in notes), notes
    select(models, f"{STARTER}-AWQ")
    assert models.selected().weight_type == "AWQ 4-bit, group 64"
    assert not models.quantize_button.isVisibleTo(models)  # already 4-bit
    assert not models.quantize_status.isVisibleTo(models)
    click(qtbot, window.quantize_page.report_view.load_chat_button)  # loaded already: straight to the chat
    assert window.pages.currentWidget() is window.chat and window.model_label.text() == f"{STARTER}-AWQ"


def test_the_wizard_uses_its_settings_and_cancel_leaves_nothing_behind(qtbot, window, tmp_path) -> None:
    page, library = window.quantize_page, paths.models_dir()
    before = sorted(p.name for p in library.iterdir())
    window.show_page(page)
    assert page.selected_model().name == STARTER
    click(qtbot, page.next_button)
    text = tmp_path / "notes.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    page.data_step.add_files([text])  # what the file picker hands over
    click(qtbot, page.next_button)
    assert page.stack.currentIndex() == SETTINGS and page.settings_step.group_size.currentData() == 64
    page.settings_step.samples.setValue(8)
    page.settings_step.seqlen.setValue(64)
    page.settings_step.out_name.setText("my-4bit")
    assert page.next_button.text() == "Quantize" and page.next_button.isEnabled()

    with qtbot.waitSignal(window.quantizer.progress, timeout=120_000,  # mid-way: its layers are being worked on
                          check_params_cb=lambda p: p["stage"] == "scales") as working:
        click(qtbot, page.next_button)
    assert working.args[0]["layers"] == 30 and page.stack.currentIndex() == RUN
    assert "notes.txt" in page.run_step.settings.text() and "8 samples × 64 tokens" in page.run_step.settings.text()
    with qtbot.waitSignal(window.quantizer.cancelled, timeout=60_000):
        click(qtbot, page.run_step.status.cancel_button)
    qtbot.waitUntil(lambda: page.run_step.outcome.text() == "Cancelled; nothing was written.")
    assert sorted(p.name for p in library.iterdir()) == before  # no output folder, no hidden partial one
    assert not window.quantizer.running and window.quantizer._process.exitcode == 0
    assert page.back_button.isEnabled()
    click(qtbot, page.back_button)
    assert page.stack.currentIndex() == SETTINGS


def test_bad_input_is_one_clear_message_and_nothing_is_written(qtbot, window) -> None:
    page, library = window.quantize_page, paths.models_dir()
    window.show_page(page)
    click(qtbot, page.next_button)
    page.data_step.files_radio.setChecked(True)
    assert page.problem.text() == "Add at least one .txt or .jsonl file, or use the built-in text."
    assert not page.next_button.isEnabled()
    page.data_step.add_files([paths.models_dir() / "linked_models.json"])
    assert page.data_step.refused.text() == "Not a .txt or .jsonl file: linked_models.json."
    page.data_step.builtin_radio.setChecked(True)
    click(qtbot, page.next_button)
    page.settings_step.group_size.setCurrentIndex(page.settings_step.group_size.findData(128))
    assert page.problem.text() == (f"Group size 128 does not divide 576, the hidden size of {STARTER}: "
                                   "choose 64 or 32.")
    assert not page.next_button.isEnabled()
    page.settings_step.group_size.setCurrentIndex(page.settings_step.group_size.findData(64))
    (library / "taken").mkdir()
    page.settings_step.out_name.setText("taken")
    assert page.problem.text().startswith(f"A folder named taken already exists in {library}")
    assert not page.next_button.isEnabled()
    page.settings_step.out_name.setText("free")
    assert page.problem.text() == "" and page.next_button.isEnabled()
    before = sorted(p.name for p in library.iterdir())

    # The quantizer refuses too, should the folder appear between the check and the run.
    model = describe_model(window.models.models[0].path)
    with qtbot.waitSignal(window.quantizer.failed, timeout=60_000) as failed:
        window.quantizer.start(page.job(model, library / "taken", False, {"group_size": 64}))
    assert failed.args[0] == f"{library / 'taken'} already exists; choose a new output folder (nothing is overwritten)"
    qtbot.waitUntil(lambda: page.run_step.outcome.text() == f"Could not quantize: {failed.args[0]}")
    assert window.models.message.text() == f"Could not quantize: {failed.args[0]}"
    assert sorted(p.name for p in library.iterdir()) == before and not any((library / "taken").iterdir())


def test_defaults_follow_the_model(starter_model, tmp_path) -> None:
    assert default_group_size(read_config(describe_model(starter_model))) == 64
    (tmp_path / f"{STARTER}-AWQ").mkdir()
    assert output_folder(tmp_path, STARTER) == tmp_path / f"{STARTER}-AWQ-2"
