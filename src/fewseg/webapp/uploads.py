"""Uploaded files -> checked images and masks: size, count, type (decoded, never trusted by name or by
declared content type) and pixel count, each refusal a one-line :class:`UploadError` shown in the page.

Example:
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (8, 6)).save(buf, "PNG")
    >>> read_upload(buf.getvalue(), "a.png", "image").size
    (8, 6)
    >>> read_upload(b"not an image", "b.png", "image")
    Traceback (most recent call last):
    ...
    fewseg.webapp.uploads.UploadError: b.png is not an image fewseg can read (PNG, JPEG, BMP, TIFF, WEBP)
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from fewseg.errors import DataError

FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class UploadError(DataError):
    """A refused upload: the page shows the message."""


@dataclass(frozen=True)
class Limits:
    file_bytes: int = 16 * 2**20     # one file
    request_bytes: int = 64 * 2**20  # the whole upload
    pixels: int = 12_000_000         # one image (4000x3000), from its header, before decoding
    support: int = 10                # support images (the documented 1-10)
    queries: int = 20                # images to segment per request


def display_name(filename: str | None, fallback: str) -> str:
    """A name to show and to use inside the zip: the file name only, safe characters only (no path)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    return base[:80] or fallback


def read_upload(data: bytes, name: str, what: str, limits: Limits | None = None) -> Image.Image:
    """The decoded PIL image in ``data``, or an UploadError naming ``name``."""
    limits = limits or Limits()
    if not data:
        raise UploadError(f"{name} is empty")
    if len(data) > limits.file_bytes:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MB; the limit per file is "
                          f"{limits.file_bytes / 2**20:.0f} MB")
    try:
        im = Image.open(io.BytesIO(data))
        if im.format not in FORMATS:
            raise UploadError(f"{name} is a {im.format} file; upload {', '.join(FORMATS)}")
        if im.width * im.height > limits.pixels:
            raise UploadError(f"{name} has {im.width}x{im.height} pixels; the limit is "
                              f"{limits.pixels / 1e6:.0f} megapixels")
        im.load()
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise UploadError(f"{name} is not an image fewseg can read ({', '.join(FORMATS)})") from None
    return im
