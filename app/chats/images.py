"""Checking pictures before they join a message: a real image of a supported kind and a sane size.

Pillow reads only the header to learn the size, so a 200-megapixel file is refused before
anything is decoded; then the whole image is decoded once, so a truncated file is caught here
and not by the model later.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MAX_PIXELS = 40_000_000  # 40 megapixels; vision models downscale far below this anyway
MAX_BYTES = 50_000_000


@dataclass
class CheckedImage:
    data: bytes
    suffix: str  # from the detected format, not the file name
    width: int
    height: int


class ImageRejected(ValueError):
    """The file cannot be attached; the message says why, for the user."""


def check_image(data: bytes, name: str = "the file") -> CheckedImage:
    if len(data) > MAX_BYTES:
        raise ImageRejected(f"{name} is {len(data) / 1e6:.0f} MB; pictures up to {MAX_BYTES // 1_000_000} MB can be attached")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            if kind not in FORMATS:
                raise ImageRejected(f"{name} is a {kind} image; attach PNG, JPEG, WebP, GIF or BMP")
            if width * height > MAX_PIXELS:
                raise ImageRejected(f"{name} is {width}×{height} ({width * height / 1e6:.0f} megapixels); "
                                    f"pictures up to {MAX_PIXELS // 1_000_000} megapixels can be attached")
            image.load()  # decode it all: a truncated or corrupt file fails here
    except UnidentifiedImageError:
        raise ImageRejected(f"{name} is not a picture LM Station can read") from None
    except Image.DecompressionBombError as exc:  # Pillow's own guard, past twice its pixel limit
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(pixels.group(1)) / 1e6:.0f} megapixels)" if pixels else ""
        raise ImageRejected(f"{name} is too large{size}; pictures up to {MAX_PIXELS // 1_000_000} megapixels "
                            "can be attached") from None
    except (OSError, SyntaxError) as exc:
        raise ImageRejected(f"{name} is damaged or incomplete ({exc})") from None
    return CheckedImage(data, FORMATS[kind], width, height)
