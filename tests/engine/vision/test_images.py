"""Images from every kind of source, with real files: the same picture gets the same identity
whatever way it came and whatever format held it losslessly; each kind of bad input gets one
clear ImageInputError."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from app.engine.vision.images import ImageInput, ImageInputError, load_image


def picture(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7 + seed) % 256, (y * 11) % 256, (x * y + seed) % 256) for y in range(height)
                   for x in range(width)])
    return image


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_every_source_gives_the_same_identity(tmp_path) -> None:
    image = picture()
    png = encoded(image, "PNG")
    (tmp_path / "a.png").write_bytes(png)
    (tmp_path / "a.bmp").write_bytes(encoded(image, "BMP"))
    sources = [image, png, str(tmp_path / "a.png"), tmp_path / "a.png", f"file://{tmp_path / 'a.png'}",
               "data:image/png;base64," + base64.b64encode(png).decode(), tmp_path / "a.bmp",
               image.convert("RGBA")]
    digests = {load_image(s).digest for s in sources}
    assert len(digests) == 1
    loaded = load_image(png)
    assert loaded.size == (40, 30) and loaded.image.mode == "RGB" and load_image(loaded) is loaded


def test_different_pictures_differ() -> None:
    assert load_image(picture(seed=0)).digest != load_image(picture(seed=1)).digest
    assert load_image(picture(40, 30)).digest != load_image(picture(30, 40)).digest


@pytest.mark.parametrize("source, message", [
    ("https://example.com/cat.png", "works offline"),
    (b"not an image at all", "not an image"),
    ("data:text/plain;base64,aGVsbG8=", "data:image/png;base64"),
    ("data:image/png;base64,@@@", "malformed"),
    (12, "not int"),
])
def test_bad_sources(source, message) -> None:
    with pytest.raises(ImageInputError, match=message):
        load_image(source)


def test_missing_cut_short_and_too_large(tmp_path) -> None:
    with pytest.raises(ImageInputError, match="no image file"):
        load_image(tmp_path / "nope.png")
    png = encoded(picture(200, 200), "PNG")
    with pytest.raises(ImageInputError, match="damaged or cut short"):
        load_image(png[: len(png) // 2])
    jpeg = encoded(picture(300, 200), "JPEG")
    with pytest.raises(ImageInputError, match="300×200 pixels"):
        load_image(jpeg, max_pixels=50_000)
    assert isinstance(load_image(jpeg, max_pixels=60_000), ImageInput)
