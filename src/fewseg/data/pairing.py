"""Which file is the mask of which image: one rule for class folders (:class:`fewseg.data.sources.folder.
FolderDataset`) and support folders (:func:`fewseg.engine.session.find_support_pairs`).

The images of a folder are its regular files with an image extension (:data:`fewseg.data.io.IMAGE_EXTS`, any
case), hidden files left out. A file whose stem ends in ``_mask`` is a mask, never an image, and files that share
a stem are one image (the first non-PNG in sorted order, else the PNG) unless a mask folder is given. The mask of
image ``<stem>`` is ``<mask_dir>/<stem>.png`` when a mask folder is given (then ``cat.jpg`` and ``cat.png`` are two
images with one mask); else, beside it, ``<stem>_mask.png``, or ``<stem>.png``
when the image itself is not a PNG (a PNG of the same stem beside a photo is its mask).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp())
    >>> for name in ("cat.jpg", "cat.png", "dog.png", "dog_mask.png", "eel.jpg", ".hidden.png", "notes.txt"):
    ...     Image.new("L", (4, 4)).save(d / name, "PNG")
    >>> [(img.name, mask and mask.name) for img, mask in pair_images(d)]
    [('cat.jpg', 'cat.png'), ('dog.png', 'dog_mask.png'), ('eel.jpg', None)]
    >>> [p.name for p in expected_masks(d / "eel.jpg")]
    ['eel_mask.png', 'eel.png']
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fewseg.data.io import IMAGE_EXTS
from fewseg.errors import DataError

__all__ = ["MASK_SUFFIX", "check_pair", "check_positives", "expected_masks", "pair_images"]

MASK_SUFFIX = "_mask"  # ``<stem>_mask.png`` is the mask of image ``<stem>``


def _image_files(folder: Path, what: str) -> dict[str, list[Path]]:
    """{stem: [files]} of the image files in ``folder`` (regular, not hidden)."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {what} {folder}: {exc.strerror or exc}") from None
    by_stem: dict[str, list[Path]] = {}
    for p in entries:
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS and p.is_file():
            by_stem.setdefault(p.stem, []).append(p)
    return by_stem


def _png(paths: list[Path]) -> Path | None:
    return next((p for p in sorted(paths) if p.suffix.lower() == ".png"), None)


def pair_images(folder: Path, mask_dir: Path | None = None, what: str = "folder") -> list[tuple[Path, Path | None]]:
    """[(image, mask or None)] of the images in ``folder``, sorted by stem (see the module's rule).

    ``mask_dir``: the masks are ``mask_dir/<stem>.png`` instead of files beside the images. ``what`` names the
    folder in the error raised when it cannot be listed.
    """
    by_stem = _image_files(Path(folder), what)
    masks = _image_files(Path(mask_dir), what) if mask_dir is not None else None
    pairs = []
    for stem in sorted(by_stem):
        if stem.endswith(MASK_SUFFIX):
            continue  # a mask, not an image
        paths = sorted(by_stem[stem])
        if masks is not None:  # no mask beside the images: every file is an image (cat.jpg, cat.png: two)
            pairs.extend((image, _png(masks.get(stem, []))) for image in paths)
            continue
        photos = [p for p in paths if p.suffix.lower() != ".png"]
        image = photos[0] if photos else paths[0]
        mask = _png(by_stem.get(stem + MASK_SUFFIX, [])) or (_png(paths) if photos else None)
        pairs.append((image, mask))
    return pairs


def expected_masks(image: Path, mask_dir: Path | None = None) -> list[Path]:
    """The masks :func:`pair_images` looks for, for messages: ``mask_dir/<stem>.png``, or ``<stem>_mask.png`` then
    (beside a non-PNG image) ``<stem>.png`` in the image's folder."""
    if mask_dir is not None:
        return [Path(mask_dir) / f"{image.stem}.png"]
    names = [f"{image.stem}{MASK_SUFFIX}.png"] + ([f"{image.stem}.png"] if image.suffix.lower() != ".png" else [])
    return [image.parent / n for n in names]


def check_pair(image: np.ndarray, fg: np.ndarray, image_name: str, mask_name: str,
               need_foreground: bool = True) -> None:
    """A one-line DataError unless the mask ``fg`` [H,W] is the size of ``image`` [H,W,...] and, with
    ``need_foreground`` (a class folder's item: an image of the class without it teaches nothing), holds
    foreground. Support images of :func:`fewseg.load` pass ``need_foreground=False``: an empty mask is a
    negative example (this image shows none of the class), and :func:`check_positives` asks for one positive."""
    if fg.shape != image.shape[:2]:
        raise DataError(f"{mask_name} is {fg.shape[1]}x{fg.shape[0]} but {image_name} is "
                        f"{image.shape[1]}x{image.shape[0]}")
    if need_foreground and not fg.any():
        raise DataError(f"{mask_name} has no foreground pixel")


def check_positives(has_foreground: list[bool], mask_names: list[str]) -> None:
    """A one-line DataError naming the masks when none of a support set's masks holds foreground: images with an
    empty mask are negatives (they show what the class is not), and at least one image must show the class.

    Example:
        >>> check_positives([False, True], ["a.png", "b.png"])
        >>> check_positives([False, False], ["a.png", "b.png"])
        Traceback (most recent call last):
        ...
        fewseg.errors.DataError: no support mask holds foreground (a.png, b.png): at least one image must show the class (images with an empty mask are negatives: they show what it is not)
    """
    if not any(has_foreground):
        few = ", ".join(mask_names[:5]) + (f" ... (+{len(mask_names) - 5})" if len(mask_names) > 5 else "")
        raise DataError(f"no support mask holds foreground ({few}): at least one image must show the class "
                        "(images with an empty mask are negatives: they show what it is not)")
