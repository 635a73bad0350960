"""The Server page in the real window (offscreen) with the starter model: it starts the server,
an outside openai client's request shows in the log, and a chat in the window streams while an
outside request streams too (one engine, batched together)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import threading
import time

from PySide6.QtCore import Qt

from tests.ui.test_main_window import open_window, set_generation  # noqa: F401 (open_window: a fixture)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_page_serves_beside_the_chat(qtbot, open_window, starter_model) -> None:  # noqa: F811
    from openai import OpenAI

    window = open_window(starter_model)
    page = window.server_page
    window.show_page(page)
    assert page.model == starter_model.name and starter_model.name in page.python.toPlainText()
    page.port.setValue(free_port())
    qtbot.mouseClick(page.toggle, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.running, timeout=30_000)
    assert page.status.text() == f"Running at {page.url}" and not page.host.isEnabled()
    assert page.url in page.curl.toPlainText() and page.url in page.python.toPlainText()

    # An outside client streams a long reply while the window's chat streams its own.
    client = OpenAI(base_url=page.url, api_key="not-needed", max_retries=0, timeout=120)
    outside: dict = {"chunks": [], "chat_lengths": []}
    chat = window.chat

    def outside_request() -> None:
        stream = client.chat.completions.create(
            model=page.model, messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=48,
            temperature=0, stream=True, extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                outside["chunks"].append(time.monotonic())

    set_generation(chat, temperature=0.0, max_new_tokens=48, ignore_eos=True)
    qtbot.keyClicks(chat.input, "What is the capital of France?")
    with qtbot.waitSignal(chat.reply_finished, timeout=120_000):
        qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
        worker = threading.Thread(target=outside_request)
        worker.start()
        while chat._active is not None:
            outside["chat_lengths"].append((time.monotonic(), len(chat.bubbles()[-1].text())))
            qtbot.wait(10)
    worker.join(timeout=120)
    assert len(outside["chunks"]) > 5
    first, last = outside["chunks"][0], outside["chunks"][-1]
    during = [n for t, n in outside["chat_lengths"] if first <= t <= last]
    assert len(set(during)) > 2, "the chat did not stream while the outside request did"

    qtbot.waitUntil(lambda: page.log.rowCount() >= 1, timeout=10_000)
    row = [page.log.item(0, c).text() for c in range(page.log.columnCount())]
    assert row[1] == "127.0.0.1" and row[2] == "chat" and row[4] == "48" and row[6] == "200"

    # The examples work as shown: the Python one run as it is, the curl one in a shell.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(page.python.toPlainText(), {})
    assert "Paris" in printed.getvalue()
    if shutil.which("curl"):
        done = subprocess.run(["bash", "-c", page.curl.toPlainText()], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Paris" in json.loads(done.stdout)["choices"][0]["message"]["content"]

    qtbot.mouseClick(page.toggle, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not page.running, timeout=30_000)
    assert page.status.text() == "Stopped" and page.host.isEnabled()


def test_refused_settings_show_why(qtbot, open_window, starter_model) -> None:  # noqa: F811
    window = open_window(starter_model)
    page = window.server_page
    page.host.setText("0.0.0.0")
    qtbot.mouseClick(page.toggle, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.status.text().startswith("Could not start"), timeout=30_000)
    assert "API key" in page.status.text() and not page.running
