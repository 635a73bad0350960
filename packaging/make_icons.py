"""Renders assets/icons/lmstation.svg to the PNG sizes the launchers use and to a Windows .ico,
and docs/screenshots/icon.png: the app's window icon (QIcon over those PNGs) as Qt draws it at
each size, on a light and a dark strip. Run after changing the SVG: python packaging/make_icons.py."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ICONS = ROOT / "assets" / "icons"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def main() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PIL import Image
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 (Qt's painting needs one)
    renderer = QSvgRenderer(str(ICONS / "lmstation.svg"))
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        image.save(str(ICONS / f"lmstation-{size}.png"))
    largest = Image.open(ICONS / "lmstation-256.png")
    largest.save(ICONS / "lmstation.ico", sizes=[(s, s) for s in SIZES if s <= 256])
    _screenshot(ROOT / "docs" / "screenshots" / "icon.png")


def _screenshot(out: Path) -> None:
    from PySide6.QtGui import QColor, QImage, QPainter

    from app.ui.app import app_icon

    icon, shown = app_icon(), [s for s in SIZES if s <= 256]
    width, row = sum(shown) + 24 * (len(shown) + 1), max(shown) + 48
    image = QImage(width, 2 * row, QImage.Format.Format_ARGB32)
    painter = QPainter(image)
    for band, color in enumerate(("#f4f4f5", "#18181b")):
        painter.fillRect(0, band * row, width, row, QColor(color))
        x = 24
        for size in shown:
            painter.drawPixmap(x, band * row + 24 + (max(shown) - size), icon.pixmap(size, size))
            x += size + 24
    painter.end()
    image.save(str(out))


if __name__ == "__main__":
    main()
