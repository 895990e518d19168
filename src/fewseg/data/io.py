"""Decoding image files into numpy arrays: photos, binary masks and class-id label maps.

Every failure is a :class:`~fewseg.errors.DataError` with one line that names the file.

Example:
    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> from fewseg.data.io import read_binary_mask, read_image, read_label_map
    >>> d = tempfile.mkdtemp()
    >>> Image.new("RGB", (4, 2), (200, 30, 30)).save(os.path.join(d, "1.jpg"))
    >>> Image.fromarray(np.array([[0, 255, 255, 0]] * 2, np.uint8)).save(os.path.join(d, "1.png"))
    >>> Image.fromarray(np.array([[0, 1, 7, 255]] * 2, np.uint8)).save(os.path.join(d, "0001.png"))
    >>> read_image(os.path.join(d, "1.jpg")).shape               # uint8 [H,W,3]
    (2, 4, 3)
    >>> fg, ignore = read_binary_mask(os.path.join(d, "1.png"))  # bool [H,W], bool [H,W]
    >>> fg[0].tolist(), bool(ignore.any())
    ([False, True, True, False], False)
    >>> read_label_map(os.path.join(d, "0001.png"))[0].tolist()  # uint8 class ids (int64 for 16-bit files)
    [0, 1, 7, 255]
    >>> read_image(os.path.join(d, "2.jpg"))
    Traceback (most recent call last):
    ...
    fewseg.errors.DataError: image .../2.jpg does not exist
"""
from __future__ import annotations

import functools
import os
import re
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewseg.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # the image files fewseg reads
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; ``FEWSEG_MAX_PIXELS`` changes it


def max_pixels() -> int:
    """The largest image (width x height) fewseg decodes: ``$FEWSEG_MAX_PIXELS``, default 64 million.

    Checked from the file header before any decoding, so a huge or forged header costs no memory; the bound
    keeps reading, resizing and full-resolution scoring of one image in bounded memory (README, Reliability).
    """
    try:
        return max(1, int(os.environ.get("FEWSEG_MAX_PIXELS") or DEFAULT_MAX_PIXELS))
    except ValueError:
        return DEFAULT_MAX_PIXELS


def _check_regular(path: str | os.PathLike, what: str) -> None:
    """A FIFO or device would block or never end: only regular files (through symlinks) are read."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except OSError as exc:  # a symlink loop, a permission problem
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{what} {path} is not a regular file")


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """The fully decoded PIL image at ``path``, or a DataError naming it."""
    im = None
    try:
        _check_regular(path, what)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # fewseg's own limit applies
            im = Image.open(path)
            limit = max_pixels()
            if im.width * im.height > limit:
                raise DataError(f"{what} {path} is {im.width}x{im.height} = {im.width * im.height:,} pixels, "
                                f"above fewseg's limit of {limit:,} (FEWSEG_MAX_PIXELS): downscale it first")
            if im.width < 1 or im.height < 1:
                raise DataError(f"{what} {path} has no pixels ({im.width}x{im.height})")
            im.load()  # decode now: truncated or corrupt data fails here, not later
        return im
    except DataError:
        if im is not None:
            im.close()
        raise
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except UnidentifiedImageError:
        raise DataError(f"{what} {path} is not a readable image file") from None
    except Image.DecompressionBombError as exc:  # over 2x Image.MAX_IMAGE_PIXELS: refused before decoding
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise DataError(f"{what} {path} has {size}, over Pillow's decompression-bomb limit of "
                        f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels: downscale it first "
                        "(fewseg resizes every image to the network's size anyway)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated, bad CRC, permission, ...
        if im is not None:
            im.close()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {what} {path}: {reason}") from None
    except Exception as exc:  # noqa: BLE001  (a decoder's struct.error, IndexError, ... on a forged file)
        if im is not None:
            im.close()
        raise DataError(f"cannot read {what} {path}: corrupt file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _decoding(what: str):
    """Decorator of a reader ``f(path)``: any failure past :func:`_open` (a pixel layout numpy or a mode
    conversion cannot take) is a DataError naming the file, never another exception type."""
    def wrap(read):
        @functools.wraps(read)
        def reader(path):
            try:
                return read(path)
            except DataError:
                raise
            except MemoryError:
                raise DataError(f"{what} {path} does not fit in memory") from None
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"cannot decode {what} {path}: {_reason(exc)}") from None
        return reader
    return wrap


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit integer or float grey array to uint8."""
    if a.dtype.kind == "f":
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        return np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    if a.size and a.max() > 255:
        return (np.clip(a, 0, 65535) / 257.0).round().astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


@_decoding("image")
def read_image(path: str | os.PathLike) -> np.ndarray:
    """The photo at ``path`` as uint8 [H,W,3] RGB, whatever its mode (L, RGBA, CMYK, P, I;16, ...).

    Alpha is dropped; 16-bit grey is scaled to 8 bits. EXIF orientation is *not* applied, so the
    pixels stay aligned with masks drawn on the stored pixel grid.
    """
    im = _open(path, "image")
    try:
        if im.mode in _HIGH_BIT_MODES:
            grey = _to_uint8(np.asarray(im))
            return np.repeat(grey[:, :, None], 3, axis=2)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot convert image {path} (mode {im.mode}) to RGB: {exc}") from None


def _binary_from_values(v: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """fg/ignore from one integer channel: two-valued {0,m} masks -> (v == m); else threshold."""
    ignore = np.zeros(v.shape, dtype=bool)
    if v.size == 0:
        return ignore.copy(), ignore
    vmax = int(v.max())
    if vmax == 0:
        return np.zeros(v.shape, dtype=bool), ignore
    if vmax <= 65535:
        present = np.flatnonzero(np.bincount(v.ravel().astype(np.int64, copy=False), minlength=vmax + 1))
    else:  # 32-bit values: a histogram as long as the largest value would not fit in memory
        present = np.unique(v)
    if len(present) <= 2 and present[0] in (0, vmax):  # {0,m} or {m}: 0/1, 0/255, 0/k masks
        return v == vmax, ignore
    if set(present.tolist()) <= {0, 1, 255}:           # VOC style: 1 = object, 255 = void
        return v == 1, v == 255
    return v > half, ignore                            # anti-aliased: threshold at half the range


@_decoding("mask")
def read_binary_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A class-folder mask as (foreground bool [H,W], ignore bool [H,W]).

    Accepted encodings: 0/1, 0/255 or any {0,k}; anti-aliased 8-bit (> 127) or 16-bit (> 32767; a 16-bit
    file whose values stay <= 255 is read as 8-bit); {0,1,255} = object/void; palette (index != 0 is
    foreground, index 255 is void when other non-zero indices occur); L, LA, RGB, RGBA (max over RGB;
    alpha is used when it varies and RGB is constant); mode "1".
    """
    im = _open(path, "mask")
    mode = im.mode
    if mode == "1":
        fg = np.asarray(im, dtype=bool)
        return fg, np.zeros_like(fg)
    a = np.asarray(im)
    if mode == "P" or mode == "PA":
        idx = a if a.ndim == 2 else a[:, :, 0]
        ignore = np.zeros(idx.shape, dtype=bool)
        if (idx == 255).any() and ((idx != 0) & (idx != 255)).any():
            ignore = idx == 255
        return (idx != 0) & ~ignore, ignore
    if mode in _HIGH_BIT_MODES:
        if a.dtype.kind == "f":
            if np.isnan(a).any():
                raise DataError(f"mask {path} has NaN values")
            a = (a * 255.0 if a.size and a.max() <= 1.0 else a).clip(0, 255).astype(np.uint8)
            return _binary_from_values(a, 127)
        a = a.astype(np.int64)
        if a.size and a.min() < 0:
            raise DataError(f"mask {path} has negative values")
        return _binary_from_values(a, 127 if a.max(initial=0) <= 255 else 32767)
    if mode in ("L", "LA", "RGB", "RGBA"):
        a = a if a.ndim == 3 else a[:, :, None]
        colour, alpha = (a[:, :, :-1], a[:, :, -1]) if mode in ("LA", "RGBA") else (a, None)
        value = colour.max(axis=2)
        if alpha is not None and (alpha != 255).any() and (colour == colour.flat[0]).all():
            value = alpha
        return _binary_from_values(value, 127)
    try:
        return _binary_from_values(np.asarray(im.convert("L")), 127)
    except (OSError, ValueError) as exc:
        raise DataError(f"mask {path} has unsupported mode {mode}: {exc}") from None


@_decoding("label map")
def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Class ids [H,W] from a label-map PNG: uint8 for 8-bit files (P indices, L values, grey RGB),
    int64 for 16-bit files (values kept as they are, 255 still means ignore).

    A colour-coded RGB label map (channels differ) is refused: convert it to class ids first.
    """
    im = _open(path, "label map")
    mode = im.mode
    a = np.asarray(im)
    if mode in ("P", "L", "1"):
        return a.astype(np.uint8)
    if mode in ("PA", "LA"):
        return a[:, :, 0].copy()
    if mode in ("RGB", "RGBA"):
        rgb = a[:, :, :3]
        if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all():
            return rgb[:, :, 0].copy()
        raise DataError(f"label map {path} is a colour-coded RGB image; fewseg needs class ids "
                        f"(one channel, mode L or P, pixel value = class id)")
    if mode in _HIGH_BIT_MODES and a.dtype.kind in "iu":
        a = a.astype(np.int64)
        if a.size and a.min() < 0:
            raise DataError(f"label map {path} has negative class ids")
        return a
    raise DataError(f"label map {path} has unsupported mode {mode}; expected L, P or 16-bit grey")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header only (no decoding)."""
    _check_regular(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except Image.DecompressionBombError:
        raise DataError(f"image {Path(path)} declares more pixels than Pillow's decompression-bomb limit") from None
    except Exception:  # noqa: BLE001  (OSError, SyntaxError, a decoder's struct.error on a forged header)
        raise DataError(f"image {Path(path)} is not a readable image file") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a part: a temporary file
    in the same folder, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
