"""The conversation store: real SQLite files, a real process killed mid-reply."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from app.chats.store import ChatStore
from tests.processes import kill_after_marker


@pytest.fixture
def store(tmp_path: Path) -> ChatStore:
    s = ChatStore(tmp_path)
    yield s
    s.close()


def test_conversations_messages_search_and_order(store: ChatStore) -> None:
    a = store.new_conversation("Capitals", system_prompt="Be brief.")
    b = store.new_conversation()
    store.add_message(a.id, "user", "What is the capital of France?")
    reply = store.add_message(a.id, "assistant", "Paris.")
    store.update_message(reply.id, "Paris.", complete=True, stats={"ttft_s": 0.1, "completion_tokens": 3})
    store.add_message(b.id, "user", "Write a haiku about snow")
    assert [c.id for c in store.conversations()] == [b.id, a.id]  # newest activity first
    assert [c.id for c in store.conversations(search="paris")] == [a.id]
    assert [c.id for c in store.conversations(search="HAIKU")] == [b.id]
    store.rename(b.id, "Snow poem")
    assert store.conversation(b.id).title == "Snow poem"
    messages = store.messages(a.id)
    assert [(m.role, m.content) for m in messages] == [("user", "What is the capital of France?"),
                                                        ("assistant", "Paris.")]
    assert messages[1].stats == {"ttft_s": 0.1, "completion_tokens": 3} and messages[1].complete
    store.delete(a.id)
    assert [c.id for c in store.conversations()] == [b.id] and store.messages(a.id) == []
    with pytest.raises(KeyError):
        store.conversation(a.id)


def test_truncate_for_regenerate_and_edit(store: ChatStore) -> None:
    c = store.new_conversation()
    first = store.add_message(c.id, "user", "one")
    store.add_message(c.id, "assistant", "reply one")
    second = store.add_message(c.id, "user", "two")
    store.add_message(c.id, "assistant", "reply two")
    store.truncate_from(c.id, second.id)
    assert [m.content for m in store.messages(c.id)] == ["one", "reply one"]
    store.truncate_from(c.id, first.id)
    assert store.messages(c.id) == []


def test_survives_reopening_and_exports(tmp_path: Path) -> None:
    store = ChatStore(tmp_path)
    c = store.new_conversation("Trip", system_prompt="You plan trips.")
    image = store.store_image(b"\x89PNG fake bytes", ".PNG")
    assert store.store_image(b"\x89PNG fake bytes", ".png") == image  # one file per content
    store.add_message(c.id, "user", "Where is this?", images=[image])
    store.add_message(c.id, "assistant", "Somewhere **sunny**.")
    store.close()
    again = ChatStore(tmp_path)
    messages = again.messages(c.id)
    assert messages[0].images == [image] and again.image_path(image).read_bytes() == b"\x89PNG fake bytes"
    md = again.export_markdown(c.id)
    assert md.startswith("# Trip") and "You plan trips." in md and "Somewhere **sunny**." in md and image in md
    exported = json.loads(json.dumps(again.export_json(c.id)))
    assert exported["title"] == "Trip" and [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    again.close()


_STREAMER = """
import sys, time
from app.chats.store import ChatStore
from tests.processes import kill_after_marker
store = ChatStore(sys.argv[1])
c = store.new_conversation()
store.add_message(c.id, "user", "Tell me a long story")
reply = store.add_message(c.id, "assistant", "", complete=False)
writer = store.reply_writer(reply.id, flush_seconds=0.05)
for i in range(100000):
    writer.append(f"word{i} ")
    if i == 200:
        print("streaming", flush=True)
    time.sleep(0.001)
"""


def test_replies_name_their_model_and_an_older_database_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "chats.sqlite3")  # the schema before replies named their model
    old.executescript("""
        CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id)
            ON DELETE CASCADE, role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), content TEXT NOT NULL,
            images TEXT NOT NULL DEFAULT '[]', stats TEXT, complete INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL);
        INSERT INTO conversations VALUES (1, 'Capitals', '', 0, 0);
        INSERT INTO messages (conversation_id, role, content, created) VALUES (1, 'user', 'Capital of France?', 0);
    """)
    old.close()
    store = ChatStore(tmp_path)
    store.add_message(1, "assistant", "Paris.", model="SmolLM2-135M-Instruct — Lab server")
    store.close()
    again = ChatStore(tmp_path)
    assert [(m.content, m.model) for m in again.messages(1)] == [("Capital of France?", None),
                                                                ("Paris.", "SmolLM2-135M-Instruct — Lab server")]
    assert again.export_json(1)["messages"][1]["model"] == "SmolLM2-135M-Instruct — Lab server"
    again.close()


def test_kill_9_mid_reply_keeps_the_question_and_the_partial_reply(tmp_path: Path) -> None:
    kill_after_marker([sys.executable, "-c", _STREAMER, str(tmp_path)], "streaming", then_s=0.3)
    store = ChatStore(tmp_path)
    (conv,) = store.conversations()
    question, reply = store.messages(conv.id)
    assert question.content == "Tell me a long story" and question.complete
    assert reply.role == "assistant" and not reply.complete
    words = reply.content.split()
    assert len(words) > 200 and words == [f"word{i}" for i in range(len(words))]  # a clean prefix, no torn write
    store.close()
