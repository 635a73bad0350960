"""kill -9 of the app in the middle of a reply: the database keeps the question and the part of
the reply streamed so far (the window, bridge, engine and store are the real ones)."""

from __future__ import annotations

import os
import sys


from app.chats.store import ChatStore
from tests.processes import kill_after_marker

APP = """
import sys
from PySide6.QtCore import QObject, Slot
from PySide6.QtWidgets import QApplication
from app.chats.store import ChatStore
from app.ui.engine_bridge import start_bridge
from app.ui.main_window import MainWindow

app = QApplication([])
store = ChatStore(sys.argv[2])
bridge, thread = start_bridge()
window = MainWindow(store, bridge, sys.argv[1], {"device": "cpu", "dtype": "float32", "block_size": 16,
                                                  "num_cache_blocks": 2048})
window.show()
chat = window.chat
chat.sampling.temperature.setValue(0.8)
chat.sampling.max_new_tokens.setValue(30000)
chat.extra_generation["ignore_eos"] = True

class Driver(QObject):  # lives on the GUI thread, so the bridge's signals reach it there
    @Slot(str)
    def ready(self, state):  # connected after the window's own slot, so the window is ready first
        if state == "ready":
            chat.input.setPlainText("Tell me a very long story")
            chat.send()

    @Slot(int, str, int)
    def streamed(self, key, text, n):
        if chat._active is not None and len(chat._active[2].text) > 200 and not hasattr(self, "said"):
            self.said = True
            print("streaming", flush=True)

driver = Driver()
bridge.state_changed.connect(driver.ready)
bridge.delta.connect(driver.streamed)
app.exec()
"""


def test_kill_9_mid_reply_keeps_the_question_and_the_partial_reply(tmp_path, tiny_model_factory) -> None:
    folder, _ = tiny_model_factory("llama", max_position_embeddings=32768)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    kill_after_marker([sys.executable, "-c", APP, str(folder), str(tmp_path)], "streaming", then_s=1.2,
                      env=env)  # 1.2 s: more than a flush interval
    store = ChatStore(tmp_path)
    (conversation,) = store.conversations()
    question, reply = store.messages(conversation.id)
    assert question.role == "user" and question.content == "Tell me a very long story"
    assert reply.role == "assistant" and not reply.complete and len(reply.content) > 200
    store.close()
