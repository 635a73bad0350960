"""Renders assets/icons/lmstation.svg to the PNG sizes the launchers use and to a Windows .ico.
Run after changing the SVG: python packaging/make_icons.py (needs PySide6 and Pillow)."""

from __future__ import annotations

import os
from pathlib import Path

ICONS = Path(__file__).resolve().parent.parent / "assets" / "icons"
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


if __name__ == "__main__":
    main()
