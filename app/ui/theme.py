"""Light and dark looks: Qt's Fusion style with a palette of our own, and a little styling for
message bubbles and code blocks. "system" follows the desktop's colour scheme."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

_COLOURS = {
    "light": {"window": "#f4f5f7", "base": "#ffffff", "text": "#1d1f23", "button": "#e9ebef", "highlight": "#2f6fde",
              "muted": "#6b7280", "user": "#dbe8ff", "assistant": "#ffffff", "code": "#f6f8fa", "border": "#d5d9e0"},
    "dark": {"window": "#1e2025", "base": "#26292f", "text": "#e6e8eb", "button": "#30343b", "highlight": "#4c8dff",
             "muted": "#9aa1ad", "user": "#27406b", "assistant": "#2a2d33", "code": "#1b1d21", "border": "#3a3f47"},
}

_STYLE = """
#userBubble {{ background: {user}; border-radius: 10px; }}
#assistantBubble {{ background: {assistant}; border: 1px solid {border}; border-radius: 10px; }}
#codeBlock {{ background: {code}; border: 1px solid {border}; border-radius: 6px; }}
#notice {{ color: #c2410c; }}
#sidebar {{ background: {window}; border: none; font-size: 14px; outline: 0; }}
#sidebar::item {{ padding: 10px 12px; border-radius: 6px; }}
#sidebar::item:selected {{ background: {highlight}; color: white; }}
#muted {{ color: {muted}; }}
QListWidget {{ outline: 0; }}
QListWidget::item {{ padding: 4px 2px; }}
QStatusBar QLabel {{ padding: 0 8px; }}
#step {{ color: {muted}; padding: 3px 10px; }}
#stepDone {{ color: {text}; padding: 3px 10px; }}
#stepCurrent {{ background: {highlight}; color: white; border-radius: 11px; padding: 3px 10px; font-weight: bold; }}
QPushButton#primary {{ background: {highlight}; color: white; border: 1px solid {highlight}; border-radius: 4px;
                       padding: 5px 16px; }}
QPushButton#primary:disabled {{ background: {button}; color: {muted}; border-color: {border}; }}
#better {{ color: #16a34a; }}
#worse {{ color: #d97706; }}
"""


def is_dark(theme: str) -> bool:
    if theme == "system":
        return QApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
    return theme == "dark"


def apply_theme(app: QApplication, theme: str) -> None:
    """Applies at once to every open window."""
    colours = _COLOURS["dark" if is_dark(theme) else "light"]
    app.setStyle("Fusion")
    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: "window", QPalette.ColorRole.Base: "base", QPalette.ColorRole.AlternateBase: "window",
        QPalette.ColorRole.Button: "button", QPalette.ColorRole.Highlight: "highlight", QPalette.ColorRole.Text: "text",
        QPalette.ColorRole.WindowText: "text", QPalette.ColorRole.ButtonText: "text", QPalette.ColorRole.ToolTipBase: "base",
        QPalette.ColorRole.ToolTipText: "text", QPalette.ColorRole.PlaceholderText: "muted",
    }
    for role, key in roles.items():
        palette.setColor(role, QColor(colours[key]))
    palette.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    palette.setColor(QPalette.ColorRole.Link, QColor(colours["highlight"]))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(colours["muted"]))
    app.setPalette(palette)
    app.setStyleSheet(_STYLE.format(**colours))
