"""Image facts the annotation tools need: size from the header, and a full decode check."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from annotations.records import AnnotationError

# Refuse decompression bombs loudly rather than with Pillow's warning.
Image.MAX_IMAGE_PIXELS = 200_000_000


def image_size(path: Path | str) -> tuple[int, int, int]:
    """(width, height, depth) read from the image header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            depth = len(image.getbands())
            return image.width, image.height, depth
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise AnnotationError(path, f"image unreadable ({error})") from None


def verify_image(path: Path | str) -> tuple[int, int, int]:
    """Decode every pixel (catches truncated files) and return (width, height, depth)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.width, image.height, len(image.getbands())
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as error:
        raise AnnotationError(path, f"image unreadable ({error})") from None
