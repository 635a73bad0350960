"""Remote endpoints in the real window (offscreen): `lmstation serve` on 127.0.0.1 (the starter model,
with an API key) is added in Settings → Connections, its model is picked in the chat and answers
there, streamed and stored like a local reply; a wrong key or a dead endpoint is said in the chat
and nothing is lost. The window's own engine holds a tiny random model meanwhile, so a reply that
says Paris can only have come from the server."""

from __future__ import annotations

import json
import stat
import time

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app import paths
from app.chats.store import ChatStore
from app.downloader import TokenStore
from app.remote import Endpoint, EndpointStore, new_endpoint_id
from app.ui.connections_page import ConnectionsPage
from app.ui.engine_bridge import start_bridge, stop_bridge
from app.ui.main_window import MainWindow
from app.ui.settings import AppSettings
from tests.remote.servers import KEY, closed_port, lmstation_serve, loaded_engine, logged, serving
from tests.ui.heartbeat import Heartbeat
from tests.ui.test_chat_page import answer_next_dialog, write
from tests.ui.test_main_window import CPU, send

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def lab(starter_model, lmstation_home, tmp_path_factory) -> str:
    """The base URL of `lmstation serve --api-key KEY` on the starter model."""
    with lmstation_serve(starter_model, lmstation_home, tmp_path_factory.mktemp("serve") / "log.txt") as url:
        yield url


@pytest.fixture
def open_window(qtbot, tmp_path, tiny_model_factory):
    """Opens the window on a tiny random model, its settings, chats and tokens in tmp_path (the
    same ones each time: a second window is the app started again)."""
    folder, _ = tiny_model_factory("llama")
    opened = []

    def open_() -> MainWindow:
        store = ChatStore(tmp_path / "chats")
        bridge, thread = start_bridge()
        window = MainWindow(store, bridge, folder, CPU, AppSettings(tmp_path / "settings.ini"),
                            tokens=TokenStore(tmp_path / "tokens.json", use_keyring=False))
        qtbot.addWidget(window)
        window.show()
        qtbot.waitUntil(lambda: window.state_label.text() == "Ready", timeout=120_000)
        opened.append((window, bridge, thread, store))
        return window

    yield open_
    for window, bridge, thread, store in opened:
        window.close()
        stop_bridge(bridge, thread)
        store.close()
    paths.use_models_dir(None)


def connections(window: MainWindow) -> ConnectionsPage:
    window.show_page(window.settings_tabs)
    window.settings_tabs.setCurrentWidget(window.connections_page)
    return window.connections_page


def answered(page: ConnectionsPage) -> bool:
    return page.result.text().startswith("Connected") or bool(page.problem.text())


def add_endpoint(qtbot, window: MainWindow, name: str, url: str, key: str) -> ConnectionsPage:
    """As a user does it: New, the three fields, Save; returns once the endpoint answered."""
    page = connections(window)
    qtbot.mouseClick(page.new_button, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(page.name, name)
    qtbot.keyClicks(page.url, url)
    qtbot.keyClicks(page.key, key)
    qtbot.mouseClick(page.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: answered(page), timeout=10_000)
    return page


def change_key(qtbot, page: ConnectionsPage, key: str) -> None:
    page.key.clear()
    qtbot.keyClicks(page.key, key)
    qtbot.mouseClick(page.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: answered(page), timeout=10_000)


def offered(window: MainWindow) -> list[str]:
    picker = window.chat.model_picker
    return [picker.itemText(i) for i in range(picker.count())]


def pick(window: MainWindow, label: str) -> None:
    """Chooses a model in the chat's model list, as a click on it does."""
    window.show_page(window.chat)
    window.chat.model_picker.setCurrentIndex(offered(window).index(label))


def stored(window: MainWindow) -> list[tuple]:
    return [(m.role, m.content, m.model, m.complete) for m in window.chat.store.messages(window.chat.conversation_id)]


def test_a_served_model_is_picked_and_answers_streamed_and_stored_like_a_local_one(qtbot, open_window, lab,
                                                                                   starter_model, tmp_path) -> None:
    window = open_window()
    local = window.model_label.text()
    page = add_endpoint(qtbot, window, "Lab server", lab, KEY)
    assert page.result.text() == f"Connected: 1 model — {starter_model.name}." and page.problem.isHidden()
    remote = f"{starter_model.name} — Lab server (remote)"
    assert offered(window) == [local, remote]
    tokens = tmp_path / "tokens.json"  # the key sits with the hub tokens, only the user can read it
    assert KEY in json.loads(tokens.read_text()).values() and stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert KEY not in (tmp_path / "endpoints.json").read_text()

    pick(window, remote)
    with Heartbeat() as beat:
        result = send(qtbot, window, QUESTION, temperature=0.0, max_new_tokens=48)
    assert beat.longest < 0.1, f"the GUI thread stalled {beat.longest * 1e3:.0f} ms while a remote reply streamed"
    info, chat = result["info"], window.chat
    assert info["finish_reason"] == "stop" and info["error"] is None
    assert len(result["pieces"]) > 1, "the reply arrived in one piece"
    reply = chat.bubbles()[-1].text()
    assert "Paris" in reply and "tok/s" in chat.stats_label.text()
    assert info["stats"]["prompt_tokens"] > 10 and info["stats"]["completion_tokens"] >= 6  # the server's count
    assert stored(window) == [("user", QUESTION, None, True),
                              ("assistant", reply, f"{starter_model.name} — Lab server", True)]
    assert chat.store.messages(chat.conversation_id)[-1].stats == info["stats"]

    pick(window, local)  # the local engine was never unloaded: it answers the same chat
    again = send(qtbot, window, "Hello", temperature=0.0, max_new_tokens=4, ignore_eos=True)
    assert again["info"]["finish_reason"] == "length" and again["info"]["stats"]["completion_tokens"] == 4
    assert [m for _, _, m, _ in stored(window)] == [None, f"{starter_model.name} — Lab server", None, local]

    window.close()  # the connection, its key and its model are there next time
    window = open_window()
    assert offered(window) == [local, remote]
    page = connections(window)
    page.endpoint_list.setCurrentRow(0)
    assert (page.name.text(), page.url.text(), page.key.text()) == ("Lab server", lab, KEY)
    asked = answer_next_dialog(qtbot, QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(page.remove_button, Qt.MouseButton.LeftButton)
    assert asked == ["Remove Lab server and forget its API key? Chats with its models stay."]
    assert offered(window) == [local] and page.endpoint_list.count() == 0
    assert KEY not in tokens.read_text()


def test_a_wrong_key_is_said_in_the_chat_and_nothing_is_lost(qtbot, open_window, lab, starter_model) -> None:
    window = open_window()
    page = add_endpoint(qtbot, window, "Lab server", lab, KEY)
    remote = f"{starter_model.name} — Lab server (remote)"
    pick(window, remote)
    change_key(qtbot, connections(window), "sk-revoked")
    assert page.problem.text() == ("Lab server refused the API key (HTTP 401: incorrect API key). "
                                   "Check the key in Settings → Connections.")
    assert remote in offered(window) and window.chat.model_picker.currentText() == remote  # still there, as it was

    result = send(qtbot, window, QUESTION, temperature=0.0, max_new_tokens=48)
    chat = window.chat
    assert result["info"]["finish_reason"] == "error" and result["info"]["error_type"] == "AuthenticationError"
    assert chat.bubbles()[-1].text().endswith("*Error: Lab server refused the API key (HTTP 401: incorrect API "
                                              "key). Check the key in Settings → Connections.*")
    assert stored(window)[0] == ("user", QUESTION, None, True) and chat.regenerate_button.isEnabled()

    change_key(qtbot, connections(window), KEY)  # fixed: the same question gets its answer
    assert page.result.text().startswith("Connected")
    window.show_page(chat)
    with qtbot.waitSignal(chat.reply_finished, timeout=60_000) as done:
        qtbot.mouseClick(chat.regenerate_button, Qt.MouseButton.LeftButton)
    assert done.args[0]["finish_reason"] == "stop" and "Paris" in chat.bubbles()[-1].text()
    assert [(role, content) for role, content, _, _ in stored(window)] == [
        ("user", QUESTION), ("assistant", chat.bubbles()[-1].text())]


def test_stop_ends_a_remote_reply_at_once_and_keeps_what_came(qtbot, open_window, lab, starter_model) -> None:
    window = open_window()
    add_endpoint(qtbot, window, "Lab server", lab, KEY)
    pick(window, f"{starter_model.name} — Lab server (remote)")
    chat = window.chat
    chat.sampling.max_new_tokens.setValue(400)
    chat.extra_generation["ignore_eos"] = True
    chat.input.setPlainText("Tell me about the sea.")
    qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(chat.bubbles()[-1].text()) > 20, timeout=30_000)
    started = time.perf_counter()
    with qtbot.waitSignal(chat.reply_finished, timeout=5_000) as done:
        qtbot.mouseClick(chat.stop_button, Qt.MouseButton.LeftButton)
    assert time.perf_counter() - started < 0.5 and done.args[0]["finish_reason"] == "cancelled"
    partial = chat.bubbles()[-1].text()
    assert stored(window)[-1] == ("assistant", partial, f"{starter_model.name} — Lab server", True)
    qtbot.wait(300)  # nothing more arrives for it
    assert chat.bubbles()[-1].text() == partial and chat.store.messages(chat.conversation_id)[-1].content == partial


def test_a_remote_model_says_when_the_chat_outgrows_its_context(qtbot, open_window, lab, starter_model) -> None:
    window = open_window()
    add_endpoint(qtbot, window, "Lab server", lab, KEY)
    pick(window, f"{starter_model.name} — Lab server (remote)")
    chat = window.chat
    assert chat.context_meter.isHidden()  # its context length is the server's to know
    short = send(qtbot, window, "Hi", temperature=0.0, max_new_tokens=4, ignore_eos=True)
    assert short["info"]["finish_reason"] == "length" and chat.notice.text() == ""  # cut short, not full
    chat.input.setPlainText("word " * 8300)  # more than the starter model's 8,192 tokens
    with qtbot.waitSignal(chat.reply_finished, timeout=60_000) as done:
        qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    assert done.args[0]["error_type"] == "ContextOverflowError"
    assert chat.notice.text() == ("This conversation no longer fits the model's context. Start a new chat, or use "
                                  "Edit last to shorten your message.")
    assert "this model's context holds 8192" in chat.bubbles()[-1].text()


def test_a_dead_endpoint_is_said_in_the_chat_and_the_window_keeps_working(qtbot, open_window, starter_model,
                                                                          tmp_path) -> None:
    """An endpoint saved last time whose server has since been switched off: its model is still
    offered (as it was last listed), and the chat says plainly why it gets no answer."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    tokens = TokenStore(tmp_path / "tokens.json", use_keyring=False)
    EndpointStore(tmp_path / "endpoints.json", tokens).put(Endpoint(new_endpoint_id(), "Old box", url, "",
                                                                    (starter_model.name,)))
    window = open_window()
    local = window.model_label.text()
    remote = f"{starter_model.name} — Old box (remote)"
    assert offered(window) == [local, remote]
    pick(window, remote)
    with Heartbeat() as beat:
        result = send(qtbot, window, QUESTION, temperature=0.0, max_new_tokens=48)
    assert beat.longest < 0.1, f"the GUI thread stalled {beat.longest * 1e3:.0f} ms"
    chat = window.chat
    said = f"Could not connect to Old box ({url}): connection refused. Is the server running, and is the address right?"
    assert result["info"]["finish_reason"] == "error" and chat.bubbles()[-1].text().endswith(f"*Error: {said}*")
    assert stored(window)[0] == ("user", QUESTION, None, True)

    page = connections(window)  # Test says the same
    page.endpoint_list.setCurrentRow(0)
    assert page.result.text() == f"Models it served when last asked: {starter_model.name}."
    qtbot.mouseClick(page.test_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(page.problem.text()), timeout=10_000)
    assert page.problem.text() == said

    pick(window, local)  # the local model answers the same question meanwhile
    with qtbot.waitSignal(chat.reply_finished, timeout=60_000) as done:
        qtbot.mouseClick(chat.regenerate_button, Qt.MouseButton.LeftButton)
    assert done.args[0]["finish_reason"] in ("stop", "length") and done.args[0]["error"] is None
    assert [(role, content, model) for role, content, model, _ in stored(window)] == [
        ("user", QUESTION, None), ("assistant", chat.bubbles()[-1].text(), local)]


def test_a_picture_goes_to_a_remote_vision_model(qtbot, open_window, tmp_path) -> None:
    from tests.tiny_models import write_tiny_llava

    write_tiny_llava(tmp_path / "tiny-llava")
    # Its model let go without a collection on the engine's thread, which would free the window's Qt
    # objects there too: the one after the test does it, on the GUI thread (tests/ui/conftest.py).
    with loaded_engine(tmp_path / "tiny-llava", collect=lambda: None, dtype="float32") as engine, \
            serving(engine, api_key=None) as server:
        window = open_window()
        add_endpoint(qtbot, window, "Vision box", server.base_url, "")
        chat = window.chat
        chat.attach_files([write(tmp_path, "photo.png", "PNG")])
        chat.input.setPlainText("What is in this picture?")
        chat.send()  # the local model reads text only: the picture stays, and the chat says why
        assert "reads text only" in chat.notice.text() and len(chat.attachments) == 1
        chat.input.clear()
        pick(window, "tiny-llava — Vision box (remote)")
        result = send(qtbot, window, "What is in this picture?", temperature=0.0, max_new_tokens=6, ignore_eos=True)
        assert result["info"]["finish_reason"] == "length" and result["info"]["error"] is None
        assert logged(server, 1)["prompt_tokens"] > 16  # the picture's places were in the prompt
        question = chat.store.messages(chat.conversation_id)[0]
        assert len(question.images) == 1 and chat.attachments == []
