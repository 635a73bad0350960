"""One message in the conversation view: its Markdown (code highlighted), a Copy button, an Edit
button on the user's messages, and under a reply its speed and token counts."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QApplication, QFrame, QGridLayout, QLabel, QToolButton, QVBoxLayout

from app.ui.markdown_view import MarkdownView


def describe_reply(stats: dict | None, finish_reason: str | None = None) -> str:
    """"first token 82 ms · 93.9 tok/s · 67 prompt + 49 reply tokens" (what is known of it)."""
    stats = stats or {}
    parts = []
    if stats.get("ttft_s") is not None:
        parts.append(f"first token {stats['ttft_s'] * 1e3:.0f} ms")
    if stats.get("decode_tokens_per_s"):
        parts.append(f"{stats['decode_tokens_per_s']:.1f} tok/s")
    if stats.get("completion_tokens") is not None:
        parts.append(f"{stats['prompt_tokens']} prompt + {stats['completion_tokens']} reply tokens")
    if finish_reason == "cancelled":
        parts.append("stopped")
    return " · ".join(parts)


class MessageBubble(QFrame):
    edit_requested = Signal()  # the user's message goes back into the input, to change and resend

    def __init__(self, role: str, text: str = "", message_id: int | None = None, stats: dict | None = None):
        super().__init__(objectName="userBubble" if role == "user" else "assistantBubble")
        self.role, self.message_id = role, message_id
        self.view = MarkdownView(text)
        self.copy_button = QToolButton(text="Copy", toolTip="Copy this message")
        self.copy_button.clicked.connect(lambda: QApplication.clipboard().setText(self.text()))
        self.footer = QLabel("", objectName="muted")
        buttons = QVBoxLayout()
        buttons.addWidget(self.copy_button)
        if role == "user":
            self.edit_button = QToolButton(text="Edit", toolTip="Change this message and ask again")
            self.edit_button.clicked.connect(self.edit_requested)
            buttons.addWidget(self.edit_button)
        buttons.addStretch(1)
        layout = QGridLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.addWidget(self.view, 0, 0)
        layout.addLayout(buttons, 0, 1)
        layout.addWidget(self.footer, 1, 0)
        layout.setColumnStretch(0, 1)
        self.set_stats(stats)

    def text(self) -> str:
        return self.view.text()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's naming, as QLabel)
        self.view.setText(text)

    def set_stats(self, stats: dict | None, finish_reason: str | None = None) -> None:
        self.footer.setText(describe_reply(stats, finish_reason))
        self.footer.setVisible(bool(self.footer.text()))
