"""Sets of image files as people name them: a file, several files, a glob pattern, a folder (its subfolders too
with ``recursive``), collected in order with what was left out and why (:func:`collect_images`). Used wherever
fewseg segments a set of images (``fewseg adapt --images``, ``fewseg predict --images``,
:func:`fewseg.engine.folders.predict_folder`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fewseg.data.io import IMAGE_EXTS
from fewseg.errors import DataError

__all__ = ["NOT_IMAGE", "SUBFOLDER", "ImageSet", "collect_images"]

SUBFOLDER, NOT_IMAGE = "subfolder", "not an image"
_GLOB_CHARS = frozenset("*?[")


@dataclass
class ImageSet:
    """The image files a user named (:func:`collect_images`), in order, and what was left out: ``skipped`` holds
    (path, reason) pairs, reason :data:`SUBFOLDER`, :data:`NOT_IMAGE` or why an entry could not be read."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def report(self, limit: int = 3) -> list[str]:
        """One line per kind of skipped entry, naming up to ``limit`` of them: what was left out and why."""
        by_reason: dict[str, list[Path]] = {}
        for path, reason in self.skipped:
            by_reason.setdefault(reason, []).append(path)
        lines = []
        for reason, paths in by_reason.items():
            shown = ", ".join(str(p) for p in paths[:limit]) + (f" and {len(paths) - limit} more"
                                                                 if len(paths) > limit else "")
            n = len(paths)
            if reason == SUBFOLDER:
                lines.append(f"skipped {n} subfolder{'s' * (n > 1)} (searched only with --recursive): {shown}")
            elif reason == NOT_IMAGE:
                lines.append(f"skipped {n} file{'s' * (n > 1)} that {'are' if n > 1 else 'is'} not an image "
                             f"({', '.join(IMAGE_EXTS)}, .npy): {shown}")
            else:
                lines.append(f"skipped {n} entr{'ies' if n > 1 else 'y'} ({reason}): {shown}")
        return lines


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in (*IMAGE_EXTS, ".npy")


def _unreadable(path: Path, exc: OSError) -> str:
    """Why ``os.stat`` failed on ``path``, in words."""
    import errno
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if path.is_symlink() and isinstance(exc, FileNotFoundError):
        return "broken symbolic link"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__


class _Collector:
    def __init__(self, recursive: bool):
        self.recursive, self.out = recursive, ImageSet()
        self.files: set[tuple[int, int]] = set()
        self.folders: set[tuple[int, int]] = set()

    def add(self, path: Path, named: bool) -> None:
        """``path`` named by the user (``named``: refuse it if unreadable) or found in a folder (skip it)."""
        try:
            st = path.stat()
        except OSError as exc:
            if named:
                raise DataError(f"cannot read {path}: {_unreadable(path, exc)}") from None
            self.out.skipped.append((path, _unreadable(path, exc)))
            return
        import stat
        key = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            if key in self.folders:  # a link back to a folder already searched
                self.out.skipped.append((path, "a link back to a folder already searched"))
                return
            self.folders.add(key)
            self.walk(path)
        elif not stat.S_ISREG(st.st_mode):
            self.out.skipped.append((path, "not a regular file"))
        elif not _is_image_name(path):
            self.out.skipped.append((path, NOT_IMAGE))
        elif not os.access(path, os.R_OK):
            if named:
                raise DataError(f"cannot read {path}: permission denied")
            self.out.skipped.append((path, "permission denied"))
        elif key not in self.files:  # the same file named twice (a folder and a glob) is segmented once
            self.files.add(key)
            self.out.paths.append(path)

    def walk(self, folder: Path) -> None:
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            self.out.skipped.append((folder, _unreadable(folder, exc)))
            return
        for child in children:
            if not self.recursive and _is_dir(child):
                self.out.skipped.append((child, SUBFOLDER))
            else:
                self.add(child, named=False)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a symbolic link loop: reported by add()
        return False


def collect_images(specs: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool = False,
                   what: str = "images") -> ImageSet:
    """The image files named by ``specs``: each a file, a folder (its images; subfolders too with
    ``recursive``) or a glob pattern (``photos/*.jpg``; ``**`` spans folders with ``recursive``). Files are
    kept in the order given, each folder's sorted, each file once. Non-image files, subfolders (without
    ``recursive``) and entries that cannot be read (broken symbolic links, link loops, no permission) are left
    out and listed in ``skipped``. A name that does not exist, a glob matching nothing, a named file that
    cannot be read or no image at all is a one-line DataError.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); (d / "sub").mkdir()
        >>> for name in ("a.png", "b.jpg", "sub/c.png"): Image.new("RGB", (4, 4)).save(d / name)
        >>> _ = (d / "notes.txt").write_text("")
        >>> found = collect_images(d)
        >>> [p.name for p in found.paths], [(p.name, why) for p, why in found.skipped]
        (['a.png', 'b.jpg'], [('notes.txt', 'not an image'), ('sub', 'subfolder')])
        >>> [p.name for p in collect_images([d / "b.jpg", str(d / "**" / "*.png")], recursive=True).paths]
        ['b.jpg', 'a.png', 'c.png']
    """
    import glob
    specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    if not specs:
        raise DataError(f"no {what} given")
    collector = _Collector(recursive)
    for spec in specs:
        path = Path(spec)
        if _GLOB_CHARS & set(str(spec)) and not os.path.lexists(path):
            matches = sorted(glob.glob(str(spec), recursive=recursive))
            if not matches:
                raise DataError(f"no file or folder matches {spec}")
            for match in matches:
                collector.add(Path(match), named=False)
        elif not os.path.lexists(path):
            raise DataError(f"{what} folder or file {path} does not exist")
        else:
            collector.add(path, named=True)
    found = collector.out
    if not found.paths:
        why = "; ".join(found.report()) or "empty"
        raise DataError(f"no {what} in {', '.join(str(s) for s in specs)} ({why})")
    return found
