r"""The files of a label-map dataset (:mod:`fewseg.data.sources.labelmap`): its class list, folder listings, and
the once-per-folder scan of which classes each label map holds.

The per-image foreground fraction of every class is scanned once per label folder and cached in memory and on
disk (``$FEWSEG_CACHE`` or ``~/.cache/fewseg``, keyed by the files' names, sizes and modification times), so later
constructions take milliseconds. Also used by :mod:`fewseg.data.sources.pascal5i` for its masks.

Example:
    >>> import os, tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp()); os.environ["FEWSEG_CACHE"] = str(d / "cache")
    >>> Image.fromarray(np.array([[0, 1, 1, 255]], np.uint8)).save(d / "a.png")
    >>> label_fractions(d)                          # {stem: {class id: fraction of the pixels}}, 255 left out
    {'a': {0: 0.25, 1: 0.5}}
    >>> _ = (d / "classes.txt").write_text("0 background\n1 road\n")
    >>> read_classes(d / "classes.txt")
    {0: 'background', 1: 'road'}
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from fewseg.data.io import read_label_map, write_text_atomic
from fewseg.errors import DataError

__all__ = ["IGNORE", "cache_dir", "files_by_stem", "label_fractions", "read_classes", "read_small_text"]

IGNORE = 255
_CACHE_VERSION = 1


# --- the once-per-folder scan of label maps -----------------------------------------------------------
def cache_dir() -> Path:
    """Where scans are kept: ``$FEWSEG_CACHE`` or ``~/.cache/fewseg``."""
    return Path(os.environ.get("FEWSEG_CACHE") or Path.home() / ".cache" / "fewseg")


def _signature(labels: dict[str, Path]) -> str:
    """A digest of the label files' names, sizes and modification times."""
    h = hashlib.sha1()
    for stem in sorted(labels):
        try:
            st = labels[stem].stat()
        except OSError as exc:  # a dangling or looping symlink
            raise DataError(f"cannot read label map {labels[stem]}: {exc.strerror or exc}") from None
        h.update(f"{stem}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _fractions_of(path: Path) -> dict[int, float]:
    """{class id: fraction of the pixels} of one label map (ignore 255 left out)."""
    counts = None
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "P"):
                counts = np.asarray(im.histogram()[:256], dtype=np.int64)
    except Exception:  # noqa: BLE001 - read_label_map below gives the one-line DataError
        counts = None
    if counts is None:
        labels = read_label_map(path)
        if labels.size and int(labels.max()) > 65535:  # 32-bit ids: no histogram as long as the largest id
            ids, n = np.unique(labels, return_counts=True)
            total = int(n.sum())
            return {int(i): round(int(k) / total, 6) for i, k in zip(ids, n) if i != IGNORE}
        counts = np.bincount(labels.ravel())
    total = int(counts.sum())
    return {int(i): round(int(counts[i]) / total, 6) for i in np.flatnonzero(counts) if i != IGNORE} \
        if total else {}


def _write_atomic(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(data, separators=(",", ":")))
    except OSError as exc:
        warnings.warn(f"could not write the label scan cache {path}: {exc}", stacklevel=3)


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc.strerror or exc}") from None


def _pngs(folder: Path) -> list[Path]:
    return [p for p in _listdir(folder) if p.suffix.lower() == ".png" and not p.name.startswith(".")]


@lru_cache(maxsize=16)
def _scan(labels_dir: str, signature: str) -> dict[str, dict[int, float]]:
    disk = cache_dir() / f"labelmap-{hashlib.sha1(labels_dir.encode()).hexdigest()[:16]}.json"
    try:
        data = json.loads(disk.read_text())
        if data.get("version") == _CACHE_VERSION and data.get("signature") == signature:
            cached = {s: {int(k): v for k, v in fr.items()} for s, fr in data["fractions"].items()}
            if all(isinstance(s, str) and all(isinstance(v, float | int) and not isinstance(v, bool)
                                              and 0 <= v <= 1 for v in fr.values()) for s, fr in cached.items()):
                return cached  # else a damaged or tampered cache: scan again
    except (OSError, ValueError, KeyError, AttributeError, TypeError, RecursionError):
        pass
    folder = Path(labels_dir)
    fractions = {p.stem: _fractions_of(p) for p in _pngs(folder)}
    _write_atomic(disk, {"version": _CACHE_VERSION, "labels_dir": labels_dir, "signature": signature,
                         "fractions": {s: {str(k): v for k, v in fr.items()} for s, fr in fractions.items()}})
    return fractions


def label_fractions(labels_dir: str | os.PathLike) -> dict[str, dict[int, float]]:
    """{stem: {class id: foreground fraction}} of every ``labels_dir/*.png``, cached (read-only result)."""
    folder = Path(labels_dir).resolve()
    labels = {p.stem: p for p in _pngs(folder)}
    return _scan(str(folder), _signature(labels))


# --- the class list and listings ------------------------------------------------------------------
def read_small_text(path: Path) -> str:
    """A small UTF-8 text file (class list, split file), or a one-line DataError."""
    try:
        if path.stat().st_size > 50_000_000:
            raise DataError(f"{path} is larger than 50 MB: not a class or split list")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_classes(path: Path) -> dict[int, str]:
    """{id: name} from a ``classes.txt`` of "<id> <name>" lines (blank and # lines skipped)."""
    if not path.is_file():
        raise DataError(f"class list {path} does not exist")
    out: dict[int, str] = {}
    for n, line in enumerate(read_small_text(path).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path} line {n}: expected '<id> <name>', got {line!r}")
        cid = int(parts[0])
        if cid in out:
            raise DataError(f"{path} line {n}: class id {cid} is listed twice")
        if cid != IGNORE:  # 255 always means ignore
            out[cid] = parts[1].strip()
    return out


def files_by_stem(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    """{stem: file} of the non-hidden files of ``folder`` with one of ``exts`` (any case; the first per stem in
    sorted order)."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    out: dict[str, Path] = {}
    for p in _listdir(folder):
        if p.suffix.lower() in exts and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out
