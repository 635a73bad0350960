"""One message in the conversation view: its Markdown (code highlighted) and a Copy button."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QToolButton

from app.ui.markdown_view import MarkdownView


class MessageBubble(QFrame):
    def __init__(self, role: str, text: str = "", message_id: int | None = None):
        super().__init__(objectName="userBubble" if role == "user" else "assistantBubble")
        self.role, self.message_id = role, message_id
        self.view = MarkdownView(text)
        self.copy_button = QToolButton(text="Copy", toolTip="Copy this message")
        self.copy_button.clicked.connect(lambda: QApplication.clipboard().setText(self.text()))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)

    def text(self) -> str:
        return self.view.text()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's naming, as QLabel)
        self.view.setText(text)
