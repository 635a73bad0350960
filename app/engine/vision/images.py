"""Images as requests bring them: a file path, bytes, a data URL or a PIL image, opened, checked
and identified by content.

The identity (``ImageInput.digest``) hashes the decoded RGB pixels, so the same picture reaches
the same cached blocks however it was sent, and two different pictures never share them. Every
way an image can be wrong ends in one ImageInputError that says what and how to fix it: a
missing file, something that is not an image or is cut short, a picture too large to decode
safely, a web address (nothing is fetched: the app works offline).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from app.engine.errors import RequestError

MAX_FILE_BYTES = 64 * 2**20
MAX_PIXELS = 64_000_000  # beyond this a picture is refused before it is decoded (decompression bombs)


class ImageInputError(RequestError):
    """An image a request brought cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageInput:
    image: Image.Image = field(repr=False)  # RGB
    digest: str  # sha256 of the size and the RGB pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def load_image(source, max_pixels: int = MAX_PIXELS) -> ImageInput:
    """An ImageInput from a path (str or Path), bytes, a ``data:image/...;base64,`` URL, a PIL
    image or an ImageInput (returned as it is)."""
    if isinstance(source, ImageInput):
        return source
    if isinstance(source, Image.Image):
        return _checked(source, "the image", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), "the image data", max_pixels)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ImageInputError(f"{source[:80]} is a web address: LM Station works offline and does not fetch "
                              "images; save the picture and attach the file")
    if isinstance(source, str) and source.startswith("data:"):
        return _decode(_data_url(source), "the data URL", max_pixels)
    if isinstance(source, str) and source.startswith("file://"):
        source = source.removeprefix("file://")
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        try:
            size = path.stat().st_size
        except OSError:
            raise ImageInputError(f"no image file at {path}") from None
        if size > MAX_FILE_BYTES:
            raise ImageInputError(f"{path.name} is {size / 2**20:.0f} MB; images up to "
                                  f"{MAX_FILE_BYTES // 2**20} MB are taken")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageInputError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
        return _decode(data, path.name, max_pixels)
    raise ImageInputError(f"an image must be a file path, bytes, a data URL or a PIL image, not {type(source).__name__}")


def _data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ImageInputError("a data URL must look like data:image/png;base64,... (base64 image data)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("the data URL's base64 payload is malformed") from None


def _decode(data: bytes, what: str, max_pixels: int) -> ImageInput:
    if len(data) > MAX_FILE_BYTES:
        raise ImageInputError(f"{what} is {len(data) / 2**20:.0f} MB; images up to {MAX_FILE_BYTES // 2**20} MB "
                              "are taken")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageInputError(f"{what} is not an image this app can read (PNG, JPEG, WebP, GIF, BMP…)") from None
    return _checked(image, what, max_pixels)


def _checked(image: Image.Image, what: str, max_pixels: int) -> ImageInput:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageInputError(f"{what} has no pixels")
    if width * height > max_pixels:
        raise ImageInputError(f"{what} is {width}×{height} pixels; images up to {max_pixels / 1e6:.0f} megapixels "
                              "are taken (scale it down first)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image.load()
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{what} is damaged or cut short ({exc})") from None
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    return ImageInput(rgb, digest)
