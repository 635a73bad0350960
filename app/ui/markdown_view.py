"""Message text as the reader wants it: Markdown prose, and code blocks highlighted by pygments,
each with its own Copy button.

A reply is re-rendered while it streams, so the view keeps its pieces and redraws only the
ones whose text changed (in practice the last one).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name, guess_lexer
from pygments.util import ClassNotFound
from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget

_FENCE = re.compile(r"^ {0,3}(```+|~~~+)[ \t]*([\w+#.-]*)[^\n]*$", re.MULTILINE)


@dataclass(frozen=True)
class Segment:
    kind: str  # "prose" | "code"
    text: str
    language: str = ""


def split_segments(text: str) -> list[Segment]:
    """Prose and fenced code blocks, in order. A fence still open (a reply mid-stream) runs to the end."""
    segments: list[Segment] = []
    pos = 0
    while (opening := _FENCE.search(text, pos)) is not None:
        fence = opening.group(1)
        if opening.start() > pos and text[pos:opening.start()].strip():
            segments.append(Segment("prose", text[pos:opening.start()].strip("\n")))
        body_start = opening.end() + 1
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE)
        close = closing.search(text, body_start)
        body_end = close.start() if close else len(text)
        segments.append(Segment("code", text[body_start:body_end].rstrip("\n"), opening.group(2).lower()))
        pos = close.end() if close else len(text)
    if text[pos:].strip():
        segments.append(Segment("prose", text[pos:].strip("\n")))
    return segments


def highlight_html(code: str, language: str, dark: bool) -> str:
    """The code as HTML with inline colours (Qt's rich text knows no CSS classes)."""
    try:
        lexer = get_lexer_by_name(language) if language else guess_lexer(code)
    except ClassNotFound:
        lexer = TextLexer()
    formatter = HtmlFormatter(noclasses=True, nowrap=True, style="monokai" if dark else "friendly")
    body = highlight(code, lexer, formatter) if code else html.escape(code)
    return f'<pre style="margin:0; font-family: monospace;">{body}</pre>'


class CodeBlock(QFrame):
    """A highlighted code block with a header: its language and a Copy button for the code alone."""

    def __init__(self, segment: Segment):
        super().__init__(objectName="codeBlock")
        self.segment = segment
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.language_label = QLabel(segment.language or "code")
        self.copy_button = QToolButton(text="Copy code", toolTip="Copy this code block")
        self.copy_button.clicked.connect(lambda: QApplication.clipboard().setText(self.segment.text))
        self.code_label = QLabel(textFormat=Qt.TextFormat.RichText)
        self.code_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        header = QHBoxLayout()
        header.addWidget(self.language_label, 1)
        header.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 8)
        layout.addLayout(header)
        layout.addWidget(self.code_label)
        self.update_segment(segment)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt's naming)
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:  # the theme changed: recolour for it
            self.update_segment(self.segment)

    def update_segment(self, segment: Segment) -> None:
        self.segment = segment
        self.language_label.setText(segment.language or "code")
        dark = self.palette().window().color().lightness() < 128
        self.code_label.setText(highlight_html(segment.text, segment.language, dark))


def _prose_label(text: str) -> QLabel:
    label = QLabel(textFormat=Qt.TextFormat.MarkdownText, wordWrap=True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse | Qt.TextInteractionFlag.LinksAccessibleByMouse)
    label.setOpenExternalLinks(True)
    label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    label.setText(text)
    return label


class MarkdownView(QWidget):
    """Renders Markdown text as a column of prose labels and code blocks."""

    def __init__(self, text: str = ""):
        super().__init__()
        self._text = ""
        self._segments: list[Segment] = []
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.setText(text)

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's naming, as QLabel)
        self._text = text
        segments = split_segments(text)
        keep = 0  # pieces before the first change stay as they are
        while keep < min(len(segments), len(self._segments)) and segments[keep] == self._segments[keep]:
            keep += 1
        for index in range(keep, len(segments)):
            widget = self._layout.itemAt(index).widget() if index < self._layout.count() else None
            segment = segments[index]
            if isinstance(widget, CodeBlock) and segment.kind == "code":
                widget.update_segment(segment)
            elif isinstance(widget, QLabel) and segment.kind == "prose":
                widget.setText(segment.text)
            else:
                self._drop_from(index)
                self._layout.addWidget(CodeBlock(segment) if segment.kind == "code" else _prose_label(segment.text))
        self._drop_from(len(segments))
        self._segments = segments

    def _drop_from(self, index: int) -> None:
        while self._layout.count() > index:
            self._layout.takeAt(index).widget().deleteLater()

    def code_blocks(self) -> list[CodeBlock]:
        return [w for i in range(self._layout.count()) if isinstance(w := self._layout.itemAt(i).widget(), CodeBlock)]
