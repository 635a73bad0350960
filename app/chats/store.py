"""Conversations on disk: SQLite in WAL mode, images as files named by their content hash.

Every message is written when it is sent, and a streaming reply is flushed as it grows (see
ReplyWriter), so a crash or a kill -9 in the middle of a reply loses at most the last second
of it. No Qt and no torch here: the UI and the tests use it alike.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    images TEXT NOT NULL DEFAULT '[]',
    stats TEXT,
    complete INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    model TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


@dataclass
class Conversation:
    id: int
    title: str
    system_prompt: str
    created: float
    updated: float


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str  # "user" | "assistant"
    content: str
    images: list[str] = field(default_factory=list)  # content hashes (see ChatStore.image_path)
    stats: dict | None = None  # TTFT, tok/s, token counts of a reply
    complete: bool = True  # False: a reply still streaming, or cut off by a crash
    created: float = 0.0
    model: str | None = None  # the model that wrote a reply, as the chat's model list named it


class ChatStore:
    """One SQLite database; safe to call from several threads (one connection, one lock)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "chats.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed write survives a crash
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(messages)")}
            if "model" not in columns:  # a database from before replies named their model
                self._db.execute("ALTER TABLE messages ADD COLUMN model TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # ---- conversations -----------------------------------------------------------------------
    def new_conversation(self, title: str = "New chat", system_prompt: str = "") -> Conversation:
        now = time.time()
        cur = self._run("INSERT INTO conversations (title, system_prompt, created, updated) VALUES (?, ?, ?, ?)",
                        (title, system_prompt, now, now))
        return Conversation(cur.lastrowid, title, system_prompt, now, now)

    def conversation(self, conversation_id: int) -> Conversation:
        row = self._run("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return Conversation(**dict(row))

    def conversations(self, search: str = "") -> list[Conversation]:
        """Newest activity first; ``search`` matches titles and message text, case-insensitively."""
        if not search:
            rows = self._run("SELECT * FROM conversations ORDER BY updated DESC, id DESC").fetchall()
        else:
            pattern = f"%{search}%"
            rows = self._run(
                "SELECT * FROM conversations c WHERE c.title LIKE ? OR EXISTS "
                "(SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ?) "
                "ORDER BY updated DESC, id DESC", (pattern, pattern)).fetchall()
        return [Conversation(**dict(row)) for row in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        self._run("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def set_system_prompt(self, conversation_id: int, text: str) -> None:
        self._run("UPDATE conversations SET system_prompt = ? WHERE id = ?", (text, conversation_id))

    def delete(self, conversation_id: int) -> None:
        self._run("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # ---- messages ------------------------------------------------------------------------------
    def add_message(self, conversation_id: int, role: str, content: str, images: list[str] | None = None,
                    complete: bool = True, model: str | None = None) -> Message:
        now = time.time()
        cur = self._run(
            "INSERT INTO messages (conversation_id, role, content, images, complete, created, model) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, role, content, json.dumps(images or []), int(complete), now, model))
        self._run("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return Message(cur.lastrowid, conversation_id, role, content, list(images or []), None, complete, now, model)

    def update_message(self, message_id: int, content: str, complete: bool, stats: dict | None = None) -> None:
        self._run("UPDATE messages SET content = ?, complete = ?, stats = ? WHERE id = ?",
                  (content, int(complete), json.dumps(stats) if stats is not None else None, message_id))

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._run("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)).fetchall()
        return [Message(row["id"], row["conversation_id"], row["role"], row["content"], json.loads(row["images"]),
                        json.loads(row["stats"]) if row["stats"] else None, bool(row["complete"]), row["created"],
                        row["model"])
                for row in rows]

    def truncate_from(self, conversation_id: int, message_id: int) -> None:
        """Deletes a message and everything after it (regenerate; edit and resend)."""
        self._run("DELETE FROM messages WHERE conversation_id = ? AND id >= ?", (conversation_id, message_id))

    def reply_writer(self, message_id: int, flush_seconds: float = 0.5) -> ReplyWriter:
        return ReplyWriter(self, message_id, flush_seconds)

    # ---- images --------------------------------------------------------------------------------
    def store_image(self, data: bytes, suffix: str) -> str:
        """Keeps the file once, named by its SHA-256; returns that name."""
        name = hashlib.sha256(data).hexdigest() + suffix.lower()
        path = self.images_dir / name
        if not path.exists():
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        return name

    def image_path(self, name: str) -> Path:
        return self.images_dir / name

    # ---- export --------------------------------------------------------------------------------
    def export_json(self, conversation_id: int) -> dict:
        conv = self.conversation(conversation_id)
        return {**asdict(conv), "messages": [asdict(m) for m in self.messages(conversation_id)]}

    def export_markdown(self, conversation_id: int) -> str:
        conv = self.conversation(conversation_id)
        parts = [f"# {conv.title}\n"]
        if conv.system_prompt:
            parts.append(f"*System prompt:* {conv.system_prompt}\n")
        for m in self.messages(conversation_id):
            parts.append(f"## {'You' if m.role == 'user' else 'Assistant'}\n\n{m.content}\n")
            parts += [f"![image]({self.image_path(name).as_uri()})\n" for name in m.images]
        return "\n".join(parts)


class ReplyWriter:
    """Stores a streaming reply as it grows: each append keeps the text in memory and writes it
    out when flush_seconds have passed since the last write; finish() writes the whole reply."""

    def __init__(self, store: ChatStore, message_id: int, flush_seconds: float):
        self.store, self.message_id, self.flush_seconds = store, message_id, flush_seconds
        self.text = ""
        self._last_flush = time.monotonic()

    def append(self, text: str) -> None:
        self.text += text
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.store.update_message(self.message_id, self.text, complete=False)
            self._last_flush = time.monotonic()

    def finish(self, stats: dict | None = None, complete: bool = True) -> None:
        self.store.update_message(self.message_id, self.text, complete=complete, stats=stats)
