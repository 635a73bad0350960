"""Attachable pictures, checked with real files of each kind."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.chats.images import ImageRejected, check_image


def encoded(kind: str, size=(64, 48), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color=0).save(out, format=kind)
    return out.getvalue()


@pytest.mark.parametrize("kind, suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_valid_pictures_are_accepted(kind, suffix) -> None:
    checked = check_image(encoded(kind), "photo")
    assert (checked.suffix, checked.width, checked.height) == (suffix, 64, 48)


def test_truncated_huge_and_non_images_are_refused_with_a_reason() -> None:
    png = encoded("PNG", size=(300, 300))
    with pytest.raises(ImageRejected, match="damaged or incomplete"):
        check_image(png[: len(png) // 2], "cut.png")
    huge = encoded("PNG", size=(20_000, 10_000), mode="1")  # 200 megapixels, a small file
    assert len(huge) < 5_000_000
    with pytest.raises(ImageRejected, match="200 megapixels"):
        check_image(huge, "huge.png")
    with pytest.raises(ImageRejected, match="not a picture"):
        check_image(b"just some text, not an image", "notes.txt")
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    with pytest.raises(ImageRejected, match="TIFF"):
        check_image(tiff.getvalue(), "scan.tiff")
