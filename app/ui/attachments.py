"""Pictures waiting to go with the next message: picked, dropped or pasted, checked by Pillow,
shown as thumbnails with remove buttons; a rejected one is explained, never dropped silently."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QToolButton, QWidget

from app.chats.images import CheckedImage, ImageRejected, check_image

PICTURE_FILTER = "Pictures (*.png *.jpg *.jpeg *.webp *.gif *.bmp)"


def png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data.data())


class ChatInput(QPlainTextEdit):
    """The message box; a pasted picture becomes an attachment instead of text."""

    image_pasted = Signal(bytes)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return source.hasImage() or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        if source.hasImage():
            self.image_pasted.emit(png_bytes(QImage(source.imageData())))
        else:
            super().insertFromMimeData(source)


class Thumbnail(QWidget):
    """A picture waiting to be sent, with its remove button."""

    def __init__(self, image: CheckedImage, on_remove):
        super().__init__()
        pixmap = QPixmap()
        pixmap.loadFromData(image.data)
        picture = QLabel()
        picture.setPixmap(pixmap.scaled(64, 64, Qt.AspectRatioMode.KeepAspectRatio,
                                        Qt.TransformationMode.SmoothTransformation))
        self.remove_button = QToolButton(text="×", toolTip="Remove")
        self.remove_button.clicked.connect(on_remove)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(picture)
        layout.addWidget(self.remove_button)


class AttachmentTray(QWidget):
    """The row of thumbnails above the input. ``rejected`` carries the reason a picture stayed out."""

    rejected = Signal(str)

    def __init__(self):
        super().__init__()
        self.images: list[CheckedImage] = []
        self.row = QHBoxLayout(self)
        self.row.setContentsMargins(0, 0, 0, 0)
        self.row.addStretch(1)

    def attach_files(self, files: list[Path]) -> None:
        for path in files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                self.rejected.emit(f"{path.name} could not be read: {exc.strerror or exc}")
                continue
            self.attach_data(data, path.name)

    def attach_data(self, data: bytes, name: str) -> bool:
        try:
            image = check_image(data, name)
        except ImageRejected as exc:
            self.rejected.emit(str(exc))
            return False
        self.images.append(image)
        thumb = Thumbnail(image, lambda: self._remove(image, thumb))
        self.row.insertWidget(self.row.count() - 1, thumb)
        return True

    def clear(self) -> None:
        """Empties the tray (the pictures went out with a message)."""
        for thumb in self.thumbnails():
            self.row.removeWidget(thumb)
            thumb.deleteLater()
        self.images.clear()

    def thumbnails(self) -> list[Thumbnail]:
        return [w for i in range(self.row.count()) if isinstance(w := self.row.itemAt(i).widget(), Thumbnail)]

    def _remove(self, image: CheckedImage, thumb: QWidget) -> None:
        self.images.remove(image)
        self.row.removeWidget(thumb)
        thumb.deleteLater()
