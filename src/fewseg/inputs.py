"""What users hand to :mod:`fewseg.segmenter` -> plain arrays: images [H,W,C] and masks (foreground, ignore).

Images may be file paths (any format :func:`~fewseg.data.io.read_image` reads, or ``.npy`` arrays), PIL
images, NumPy arrays (``HxW``, ``HxWxC``; uint8 0-255, uint16 0-65535, bool, or float in [0, 1]) or torch
tensors (``HxW``, ``CxHxW``; same dtypes). Float images outside [0, 1] are refused (a 0-255 float image
would saturate every probability). Masks take every encoding of :func:`~fewseg.data.io.read_binary_mask`
(0/1, 0/255, {0,k}, anti-aliased, palette, RGB(A), 16-bit, void = 255), as files, PIL images or arrays;
float masks are foreground above 0.5.

Example:
    >>> import numpy as np
    >>> as_image(np.zeros((4, 6), np.uint8)).shape            # grey -> [H,W,1]
    (4, 6, 1)
    >>> as_image(np.full((2, 2, 3), 255, np.uint8)).max()     # uint8 stays uint8 (0-255)
    np.uint8(255)
    >>> fg, ignore = as_mask(np.array([[0, 255], [255, 0]], np.uint8))
    >>> fg.tolist(), bool(ignore.any())
    ([[False, True], [True, False]], False)
    >>> as_image(np.full((2, 2), 200.0))
    Traceback (most recent call last):
    ...
    fewseg.errors.DataError: image is a float image with values up to 200, but float images must lie in [0, 1] (pass uint8 for 0-255)
"""
from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fewseg.data.io import read_binary_mask, read_image
from fewseg.errors import DataError
from fewseg.image_files import ImageSet, collect_images  # noqa: F401  (ImageSet importable from here)


def is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def describe(x: Any, fallback: str) -> str:
    """How an input is named in messages: its path, else ``fallback`` (e.g. "support image 2")."""
    return str(x) if is_path(x) else fallback


def as_list(items: Any) -> list:
    """One input or several -> a list: a list/tuple, a 4-D array or tensor (a batch) or a single item."""
    if isinstance(items, (list, tuple)):
        return list(items)
    if hasattr(items, "ndim") and items.ndim == 4:  # [N,C,H,W] tensor or [N,H,W,C] array
        return list(items)
    return [items]


def is_batch(items: Any) -> bool:
    """Whether :func:`as_list` read ``items`` as several inputs (then results come back as a list)."""
    return isinstance(items, (list, tuple)) or (hasattr(items, "ndim") and items.ndim == 4)


def _to_numpy(x: Any, name: str, channels_first: bool) -> np.ndarray:
    """A PIL image, tensor or array -> a NumPy array, channels last."""
    try:
        import torch
        if isinstance(x, torch.Tensor):
            a = x.detach().cpu()
            a = (a.float() if a.dtype in (torch.float16, torch.bfloat16) else a).numpy()
            return np.moveaxis(a, 0, -1) if (channels_first and a.ndim == 3) else a
    except ImportError:  # pragma: no cover
        pass
    from PIL import Image
    if isinstance(x, Image.Image):
        return np.asarray(x)
    if isinstance(x, np.ndarray):
        return x
    raise DataError(f"{name} must be a file path, PIL image, NumPy array or torch tensor, got {type(x).__name__}")


def _pil_image(x) -> np.ndarray:
    """A PIL image as an array the way :func:`read_image` decodes files (RGB; grey kept as one channel)."""
    if x.mode in ("L", "I;16", "I;16L", "I;16B", "I", "F"):
        return np.asarray(x)
    return np.asarray(x.convert("RGB"))


def as_image(x: Any, name: str = "image") -> np.ndarray:
    """An image in any accepted form -> ``[H,W,C]`` uint8 (0-255) or float32 in [0, 1]."""
    from PIL import Image
    if is_path(x):
        if Path(x).suffix.lower() == ".npy":
            try:
                a = np.load(x, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read image {x}: {str(exc).splitlines()[0]}") from None
        else:
            return read_image(x)
        name = str(x)
    elif isinstance(x, Image.Image):
        a = _pil_image(x)
    else:
        a = _to_numpy(x, name, channels_first=True)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1 or a.shape[2] < 1:
        raise DataError(f"{name} must be HxW or HxWxC (tensors: CxHxW), got shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype.kind in "iu":
        top = 65535.0 if a.dtype.itemsize >= 2 and a.max(initial=0) > 255 else 255.0
        if a.min(initial=0) < 0:
            raise DataError(f"{name} has negative pixel values")
        return (a.astype(np.float32) / top).clip(0, 1) if top > 255 else a.clip(0, 255).astype(np.uint8)
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"{name} holds NaN or infinite values")
        lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
        if hi > 1.0 + 1e-3 or lo < -1e-3:
            raise DataError(f"{name} is a float image with values {'up to ' + format(hi, 'g') if hi > 1 else 'down to ' + format(lo, 'g')}, "
                            "but float images must lie in [0, 1] (pass uint8 for 0-255)")
        return a.clip(0, 1)
    raise DataError(f"{name} has unsupported pixel type {a.dtype}")


def as_mask(x: Any, name: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    """A mask in any accepted form -> (foreground bool [H,W], ignore bool [H,W])."""
    from PIL import Image
    if is_path(x):
        return read_binary_mask(x)
    if isinstance(x, Image.Image):
        return _mask_through_png(x, name)
    a = _to_numpy(x, name, channels_first=False)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]                                   # [1,H,W] tensors
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype == bool:
        return a.copy(), np.zeros(a.shape, bool)
    if a.dtype.kind == "f":
        if a.size and float(np.nanmax(a)) > 1.0:  # a 0-255 float mask: read as its integers
            a = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
        else:
            return np.nan_to_num(a) > 0.5, np.zeros(a.shape, bool)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise DataError(f"{name} must be HxW (or HxWx3/4 colour), got shape {tuple(a.shape)}")
    if a.dtype.kind in "iu":
        if a.min(initial=0) < 0:
            raise DataError(f"{name} has negative values")
        a = a.astype(np.uint16 if a.max(initial=0) > 255 else np.uint8)
        if a.dtype == np.uint16 and a.ndim == 3:
            raise DataError(f"{name}: colour masks must be 8-bit")
        return _mask_through_png(Image.fromarray(a), name)
    raise DataError(f"{name} has unsupported dtype {a.dtype}")


def _mask_through_png(im, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode an in-memory mask with the file reader's rules (one set of rules for files and arrays): written
    losslessly to a temporary PNG (mode kept: P, L, RGB(A), I;16, 1) and read back."""
    with tempfile.TemporaryDirectory(prefix="fewseg-mask-") as tmp:
        path = os.path.join(tmp, "mask.png")
        try:
            im.save(path, format="PNG")
        except (OSError, ValueError) as exc:
            raise DataError(f"{name}: unsupported mask image (mode {im.mode}): {exc}") from None
        try:
            return read_binary_mask(path)
        except DataError as exc:
            raise DataError(str(exc).replace(f"mask {path}", name).replace(path, name)) from None


def list_images(images: str | os.PathLike | Sequence[str | os.PathLike], what: str = "images",
                recursive: bool = False) -> list[Path]:
    """The image files of ``images`` (:func:`collect_images`: a folder, a file, several, a glob; a warning line
    per kind of entry left out), or a DataError if there are none."""
    found = collect_images(images, recursive, what)
    for line in found.report():
        warnings.warn(line, UserWarning, stacklevel=2)
    return found.paths


def output_names(paths: Sequence[Path]) -> list[str]:
    """File names for results, ``<stem>.png``; images sharing a stem (cat.jpg, cat.png) keep their
    extension (``cat.jpg.png``, ``cat.png.png``) so that neither overwrites the other, and images sharing a name
    in different folders (``--recursive``) are prefixed with their folders (``a__cat.jpg.png``).

    Example:
        >>> output_names([Path("x/cat.jpg"), Path("x/cat.png"), Path("a/dog.png"), Path("b/dog.png")])
        ['cat.jpg.png', 'cat.png.png', 'a__dog.png.png', 'b__dog.png.png']
    """
    from collections import Counter
    stems = Counter(p.stem for p in paths)
    names = [f"{p.stem}.png" if stems[p.stem] == 1 else f"{p.name}.png" for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth <= max((len(p.parts) for p in paths), default=0):
        counts = Counter(names)
        names = [n if counts[n] == 1 else "__".join((*_folders(p)[-depth:], p.name)) + ".png"
                 for n, p in zip(names, paths)]
        depth += 1
    if len(set(names)) < len(names):  # folders that differ only in what _folders leaves out: number them
        names = [f"{i}__{n}" for i, n in enumerate(names)]
    return names


def _folders(path: Path) -> tuple[str, ...]:
    """The folder names above ``path`` (no root or drive)."""
    return tuple(part for part in path.parent.parts if part != path.anchor and part not in (".", ".."))
