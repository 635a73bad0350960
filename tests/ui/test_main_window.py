"""The real window, offscreen, with a real engine: send, stream, stop, persistence."""

from __future__ import annotations

import gc
import shutil
import time

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from app import paths
from app.chats.store import ChatStore
from app.ui.engine_bridge import start_bridge, stop_bridge
from app.ui.main_window import MainWindow
from app.ui.models_page import COLUMNS
from app.ui.settings import AppSettings
from app.ui.theme import apply_theme
from tests.ui.heartbeat import Heartbeat

CPU = {"device": "cpu", "dtype": "float32", "block_size": 16, "num_cache_blocks": 256}


@pytest.fixture
def open_window(qtbot, tmp_path):
    opened = []

    def open_(model, store_dir=tmp_path / "chats", **options):
        store = ChatStore(store_dir)
        bridge, thread = start_bridge()
        window = MainWindow(store, bridge, model, {**CPU, **options}, AppSettings(tmp_path / "settings.ini"))
        qtbot.addWidget(window)
        window.show()
        # The window's own state, not the bridge's signal: waitSignal may see that before the
        # window's queued slots have run.
        qtbot.waitUntil(lambda: window.state_label.text() == "Ready", timeout=120_000)
        opened.append((window, bridge, thread, store))
        return window

    yield open_
    for window, bridge, thread, store in opened:
        window.close()
        stop_bridge(bridge, thread)
        store.close()
    paths.use_models_dir(None)  # a test's Settings may have moved the models folder


def set_generation(chat, temperature=None, max_new_tokens=None, **extra) -> None:
    """Through the sampling panel's own controls; the rest (ignore_eos) as extra settings."""
    if temperature is not None:
        chat.sampling.temperature.setValue(temperature)
    if max_new_tokens is not None:
        chat.sampling.max_new_tokens.setValue(max_new_tokens)
    chat.extra_generation.update(extra)


def send(qtbot, window: MainWindow, text: str, **generation) -> dict:
    """Sends text; returns the reply's end ("info"), the pieces of text its model's bridge streamed
    ("pieces": more than one when it streamed; a short reply can outrun any polling of the window),
    and the distinct texts the reply's bubble showed while it came ("updates")."""
    chat = window.chat
    set_generation(chat, **generation)
    qtbot.keyClicks(chat.input, text)
    bridge = chat.models[chat.model_picker.currentIndex()].bridge
    pieces: list[str] = []

    def heard(_reply: int, piece: str, _tokens: int) -> None:  # on whichever thread streams
        if piece:
            pieces.append(piece)

    bridge.delta.connect(heard)
    updates = []
    try:
        with qtbot.waitSignal(chat.reply_finished, timeout=120_000) as done:
            qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
            while chat._active is not None:
                updates.append(chat.bubbles()[-1].text())
                qtbot.wait(20)
    finally:
        bridge.delta.disconnect(heard)
    return {"info": done.args[0], "pieces": pieces,
            "updates": [u for i, u in enumerate(updates) if u and u != updates[i - 1]]}


def test_starter_model_answers_paris_in_a_streamed_reply(qtbot, open_window, starter_model) -> None:
    window = open_window(starter_model)
    result = send(qtbot, window, "What is the capital of France?", temperature=0.0, max_new_tokens=48)
    assert result["info"]["finish_reason"] in ("stop", "length")
    assert len(result["pieces"]) > 1, "the reply arrived in one piece"
    bubbles = window.chat.bubbles()
    assert [b.role for b in bubbles] == ["user", "assistant"] and "Paris" in bubbles[-1].text()
    assert "tok/s" in window.chat.stats_label.text()


def test_a_picture_dropped_into_the_chat_reaches_a_vision_model(qtbot, open_window, tmp_path) -> None:
    """With a (tiny) LLaVA loaded, a PNG dropped into the chat goes out with the question and the
    reply streams; the picture is kept with the message, and the next question carries it along."""
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    from tests.tiny_models import write_tiny_llava
    from tests.ui.test_chat_page import write

    write_tiny_llava(tmp_path / "tiny-llava")
    window = open_window(tmp_path / "tiny-llava")
    chat = window.chat
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(write(tmp_path, "photo.png", "PNG")))])
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    chat.dropEvent(drop)
    # Freed here, on the GUI thread: left to the garbage collector, Qt objects may be collected on
    # whichever thread allocates next (the engine's), which crashes.
    del drop, mime
    gc.collect()
    assert len(chat.attachments) == 1
    deltas = []
    count = lambda *args: deltas.append(args)  # noqa: E731
    window.bridge.delta.connect(count)
    result = send(qtbot, window, "What is in this picture?", temperature=0.0, max_new_tokens=12, ignore_eos=True)
    assert result["info"]["finish_reason"] == "length" and not chat.notice.text()
    assert len(deltas) > 1 and chat.bubbles()[-1].text(), "the reply was not streamed"  # (too fast to watch)
    stats = result["info"]["stats"]
    assert stats["prompt_tokens"] > 16  # the picture's 16 places are in the prompt
    question = chat.store.messages(chat.conversation_id)[0]
    assert len(question.images) == 1 and chat.store.image_path(question.images[0]).is_file()
    assert chat.attachments == []  # the tray emptied: the picture went with the message
    window.bridge.delta.disconnect(count)
    again = send(qtbot, window, "And now?", temperature=0.0, max_new_tokens=4, ignore_eos=True)
    assert again["info"]["stats"]["prompt_tokens"] > stats["prompt_tokens"] + 12  # the picture is still in the chat


def test_stop_keeps_the_partial_reply_and_chats_survive_a_restart(qtbot, open_window, tiny_model_factory,
                                                                  tmp_path) -> None:
    folder, _ = tiny_model_factory("llama", max_position_embeddings=32768)  # a reply that cannot end soon
    window = open_window(folder)
    chat = window.chat
    set_generation(chat, temperature=0.8, max_new_tokens=30_000, ignore_eos=True)
    qtbot.keyClicks(chat.input, "Tell me everything")
    qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(chat.bubbles()[-1].text()) > 20, timeout=60_000)
    start = time.perf_counter()
    with qtbot.waitSignal(chat.reply_finished, timeout=5_000) as done:
        qtbot.mouseClick(chat.stop_button, Qt.MouseButton.LeftButton)
    assert time.perf_counter() - start < 0.5 and done.args[0]["finish_reason"] == "cancelled"
    partial = chat.bubbles()[-1].text()
    conversation = chat.conversation_id
    window.close()

    again = open_window(folder)
    titles = [again.chat.conversation_list.item(i).text() for i in range(again.chat.conversation_list.count())]
    assert titles == ["Tell me everything"]
    again.chat.open_conversation(conversation)
    user, reply = again.chat.bubbles()
    assert user.text() == "Tell me everything" and reply.text() == partial and len(partial) > 20


def test_regenerate_edit_and_resend_and_a_responsive_window(qtbot, open_window, tiny_model_factory) -> None:
    folder, _ = tiny_model_factory("llama")
    window = open_window(folder)
    chat = window.chat
    with Heartbeat() as beat:
        first = send(qtbot, window, "Hello there", temperature=0.0, max_new_tokens=60, ignore_eos=True)
    assert beat.longest < 0.1, f"the GUI thread stalled {beat.longest * 1e3:.0f} ms while a reply streamed"
    stats = first["info"]["stats"]
    assert stats["completion_tokens"] == 60
    assert chat.context_meter.value() == stats["prompt_tokens"] + 60 and chat.context_meter.maximum() == 256
    reply = chat.bubbles()[-1].text()
    chat.sampling.system_prompt.setText("Answer in French.")
    chat.sampling.system_prompt.editingFinished.emit()
    assert chat.store.conversation(chat.conversation_id).system_prompt == "Answer in French."

    with qtbot.waitSignal(chat.reply_finished, timeout=60_000) as done:
        qtbot.mouseClick(chat.regenerate_button, Qt.MouseButton.LeftButton)
    regenerated = chat.bubbles()[-1].text()
    assert [b.role for b in chat.bubbles()] == ["user", "assistant"] and regenerated and regenerated != reply
    assert done.args[0]["stats"]["prompt_tokens"] > stats["prompt_tokens"]  # the system prompt went in
    stored = chat.store.messages(chat.conversation_id)
    assert [m.content for m in stored] == ["Hello there", regenerated] and stored[-1].complete

    qtbot.mouseClick(chat.edit_button, Qt.MouseButton.LeftButton)
    assert chat.input.toPlainText() == "Hello there" and chat.bubbles() == []
    chat.input.setPlainText("Hello again")
    with qtbot.waitSignal(chat.reply_finished, timeout=60_000):
        qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    assert [m.content for m in chat.store.messages(chat.conversation_id)][0] == "Hello again"
    assert [b.role for b in chat.bubbles()] == ["user", "assistant"]


def test_a_model_that_cannot_load_is_reported_and_nothing_can_be_sent(qtbot, tmp_path) -> None:
    store = ChatStore(tmp_path / "chats")
    bridge, thread = start_bridge()
    try:
        window = MainWindow(store, bridge, tmp_path / "no-such-model", CPU, AppSettings(tmp_path / "settings.ini"))
        qtbot.addWidget(window)
        window.show()
        qtbot.waitUntil(lambda: "Could not load the model" in window.statusBar().currentMessage(), timeout=60_000)
        assert "no-such-model" in window.statusBar().currentMessage()
        assert window.state_label.text() == "No model" and not window.chat.send_button.isEnabled()
    finally:
        window.close()
        stop_bridge(bridge, thread)
        store.close()


def test_a_conversation_that_outgrows_the_context_is_told_so(qtbot, open_window, starter_model) -> None:
    window = open_window(starter_model, max_model_len=64)
    chat = window.chat
    first = send(qtbot, window, "Tell me a long story about a dragon.", temperature=0.0, max_new_tokens=500,
                 ignore_eos=True)
    assert first["info"]["finish_reason"] == "length"
    assert "filled the model's context (64 tokens)" in chat.notice.text()
    assert chat.context_meter.value() == 64
    second = send(qtbot, window, "Go on.")
    assert second["info"]["error_type"] == "ContextOverflowError"
    assert "no longer fits the model's context (64 tokens)" in chat.notice.text()
    assert "Edit last" in chat.notice.text() and chat.edit_button.isEnabled()


def test_first_launch_loads_the_starter_and_the_library_loads_and_unloads(qtbot, open_window, tiny_model_factory,
                                                                         tmp_path) -> None:
    AppSettings(tmp_path / "settings.ini").models_dir = str(tmp_path / "fresh-models")  # nothing converted yet
    window = open_window(None)  # no dialog: the bundled starter is converted and loaded
    models = window.models
    assert [m.name for m in models.models] == ["SmolLM2-135M-Instruct"]
    assert models.models[0].path.parent == tmp_path / "fresh-models"
    assert models.table.item(0, len(COLUMNS) - 1).text() == "● Loaded"
    assert window.model_label.text() == "SmolLM2-135M-Instruct"

    folder, _ = tiny_model_factory("llama")
    shutil.copytree(folder, tmp_path / "elsewhere" / "my-llama")
    models.import_folder(tmp_path / "elsewhere" / "my-llama")
    models.table.selectRow([m.name for m in models.models].index("my-llama"))
    qtbot.mouseClick(models.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.model_label.text() == "my-llama" and window.state_label.text() == "Ready",
                    timeout=60_000)
    loaded = [m.name for row, m in enumerate(models.models) if models.table.item(row, len(COLUMNS) - 1).text()]
    assert loaded == ["my-llama"]

    qtbot.mouseClick(models.unload_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.state_label.text() == "No model", timeout=30_000)
    assert window.model_label.text() == "No model" and not window.chat.send_button.isEnabled()
    assert models.loaded_path is None and not models.unload_button.isEnabled()
    qtbot.waitUntil(lambda: window.device_label.text().startswith("RAM: "), timeout=10_000)
    assert window.device_label.text().endswith(" GB used")


def test_settings_are_kept_and_applied(qtbot, open_window, tiny_model_factory, tmp_path) -> None:
    folder, _ = tiny_model_factory("llama")
    window = open_window(folder)
    page = window.settings_page
    conv = window.chat.store.new_conversation()
    window.chat.store.add_message(conv.id, "assistant", "```python\nimport os\n```")
    window.chat.open_conversation(conv.id)
    code = window.chat.bubbles()[0].view.code_blocks()[0]
    light_html = code.code_label.text()
    qtbot.waitUntil(lambda: page.device.findData("cpu") > 0, timeout=10_000)  # the engine's device list arrived
    try:
        page.theme.setCurrentIndex(page.theme.findData("dark"))
        assert QApplication.palette().window().color().lightness() < 128
        assert code.code_label.text() != light_html  # open code blocks recolour for the new theme
        page.device.setCurrentIndex(page.device.findData("cpu"))
        page.cache_percent.setValue(20)
        page.max_context.setValue(96)
        page.kv_cache_dtype.setCurrentIndex(page.kv_cache_dtype.findData("int8"))
        loads = []
        window.bridge.loaded.connect(loads.append)
        qtbot.mouseClick(page.reload_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: window.chat.context_meter.maximum() == 96, timeout=60_000)
        qtbot.waitUntil(lambda: bool(loads), timeout=10_000)
        assert loads[-1]["kv_cache_dtype"] == "int8"
        kept = AppSettings(tmp_path / "settings.ini")  # as the next launch reads them
        assert (kept.theme, kept.device, kept.cache_percent, kept.max_context) == ("dark", "cpu", 20, 96)
        assert kept.engine_options() == {"device": "cpu", "cache_memory_fraction": 0.2, "max_model_len": 96,
                                         "kv_cache_dtype": "int8"}
    finally:
        apply_theme(QApplication.instance(), "light")


def test_picking_gpus_splits_the_next_load(qtbot, open_window, tiny_model_factory, tmp_path) -> None:
    """With several GPUs listed, Settings offers to split models over them: 2, 4 or 8 picked make
    the next load tensor-parallel on exactly those (rank 0 on the first), any other count none,
    and the Models page's memory column turns per GPU."""
    folder, _ = tiny_model_factory("llama")
    window = open_window(folder)
    page = window.settings_page
    gpus = [{"id": f"cuda:{i}", "name": "Test GPU", "memory_bytes": 24 * 2**30} for i in range(4)]
    page.set_devices([{"id": "cpu", "name": "CPU", "memory_bytes": 16 * 2**30}, *gpus])
    assert page.gpu_row.isVisibleTo(page) and sorted(page.gpu_boxes) == [0, 1, 2, 3]
    page.gpu_boxes[1].setChecked(True)
    page.gpu_boxes[3].setChecked(True)
    options = AppSettings(tmp_path / "settings.ini").engine_options()
    assert (options["tensor_parallel"], options["gpus"], options["device"]) == (2, (1, 3), "cuda:1")
    assert window.models.split == 2 and window.models.table.item(0, 5).text().endswith("× 2 GPUs")
    assert "split over these 2 GPUs" in page.split_note.text()
    page.gpu_boxes[0].setChecked(True)  # 3: no split, and the note says why
    assert "tensor_parallel" not in AppSettings(tmp_path / "settings.ini").engine_options()
    assert window.models.split == 1 and "3 picked" in page.split_note.text()
    page.set_devices([{"id": "cpu", "name": "CPU", "memory_bytes": 16 * 2**30}, gpus[0]])  # one GPU left
    assert not page.gpu_row.isVisibleTo(page) and AppSettings(tmp_path / "settings.ini").gpus == [0]


def test_every_page_fits_1280_by_800(qtbot, open_window, tiny_model_factory) -> None:
    """The screenshots' size: no page may force the window wider or taller (Qt would overlap or
    clip what does not fit)."""
    folder, _ = tiny_model_factory("llama")
    window = open_window(folder)
    for row in range(window.sidebar.count()):
        window.sidebar.setCurrentRow(row)
        qtbot.wait(20)
        hint = window.minimumSizeHint()
        assert hint.width() <= 1280 and hint.height() <= 800, (window.sidebar.item(row).text(), hint)
        assert (window.width(), window.height()) == (1280, 800)
