r"""COCO instance annotations: the masks they describe and a per-class index of one instances JSON.

Masks (:func:`segmentation_mask`): polygons rasterised with Pillow at ``SUPERSAMPLE`` x ``SUPERSAMPLE``
sub-pixels, a pixel in when at least half of it is covered; uncompressed and compressed RLE decoded in numpy;
``decoder="auto"`` uses pycocotools when it is installed, ``"own"`` never. The index (:func:`annotation_index`)
holds categories, images and, per class, each image's (segmentation, crowd, area) annotations; it is kept in
memory per file. Used by :class:`fewseg.data.sources.coco20i.Coco20iDataset`.

Example (the RLE decoder):
    >>> from fewseg.data.sources.coco_annotations import rle_mask
    >>> rle_mask({"counts": [1, 2, 3], "size": [2, 3]}, 2, 3).astype(int).tolist()  # column-major runs 0,1,0
    [[0, 1, 0], [1, 0, 0]]
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fewseg.errors import DataError

__all__ = ["DECODERS", "N_CLASSES", "SUPERSAMPLE", "annotation_index", "polygons_mask", "rle_mask",
           "rle_string_counts", "segmentation_mask"]

N_CLASSES = 80
DECODERS = ("auto", "own", "pycocotools")
SUPERSAMPLE = 5  # polygon rasterisation: sub-pixels per pixel side


# --- masks from annotations ---------------------------------------------------------------------------
def rle_string_counts(s: str | bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (6 bits a character, offset 48; from the third run
    on each value is stored as the difference to the run two before)."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign extension
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_mask(rle: dict, h: int, w: int) -> np.ndarray:
    """bool [h,w] of an RLE ``{"counts": [ints] | str, "size": [h, w]}`` (runs of 0,1,0,... in column order)."""
    size = rle.get("size", (h, w))
    if not isinstance(size, (list, tuple)) or [int(v) for v in size] != [h, w]:
        raise ValueError(f"RLE size {size!r} is not the image's {[h, w]}")
    counts = rle["counts"]
    counts = np.asarray(rle_string_counts(counts) if isinstance(counts, (str, bytes)) else counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != h * w:
        raise ValueError(f"RLE runs sum to {int(counts.sum())}, not {h}x{w} = {h * w} pixels")
    flat = np.repeat((np.arange(len(counts)) % 2).astype(bool), counts)
    return flat.reshape(w, h).T.copy()


def polygons_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """bool [h,w]: the union of COCO polygons ``[x1, y1, x2, y2, ...]`` (pixel (x, y) spans [x, x+1) x [y, y+1));
    drawn with Pillow at ``SUPERSAMPLE``^2 sub-pixels per pixel, in where at least half is covered."""
    out = np.zeros((h, w), dtype=bool)
    s = SUPERSAMPLE
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64)
        xy = xy[: len(xy) // 2 * 2].reshape(-1, 2)
        if len(xy) < 3:
            continue
        x0, y0 = max(int(np.floor(xy[:, 0].min())), 0), max(int(np.floor(xy[:, 1].min())), 0)
        x1, y1 = min(int(np.ceil(xy[:, 0].max())) + 1, w), min(int(np.ceil(xy[:, 1].max())) + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        bw, bh = x1 - x0, y1 - y0
        canvas = Image.new("L", (bw * s, bh * s), 0)
        # sub-pixel j covers [j, j+1) / s; Pillow's pixel centres are integers: shift by half a sub-pixel
        pts = (xy - (x0, y0)) * s - 0.5
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts.tolist()], fill=1)
        cover = np.asarray(canvas).reshape(bh, s, bw, s).sum(axis=(1, 3), dtype=np.int32)
        out[y0:y1, x0:x1] |= 2 * cover >= s * s
    return out


def _pycocotools():
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        return None
    return coco_mask


def segmentation_mask(seg, h: int, w: int, decoder: str = "auto") -> np.ndarray:
    """bool [h,w] of one annotation's ``segmentation`` (polygon list, or RLE dict with list or string counts)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    cm = _pycocotools() if decoder != "own" else None
    if decoder == "pycocotools" and cm is None:
        raise ValueError("decoder='pycocotools' but pycocotools is not installed")
    if isinstance(seg, dict):
        size = seg.get("size")
        if not isinstance(size, (list, tuple)) or [int(v) for v in size] != [h, w]:
            raise ValueError(f"RLE size {size!r} is not the image's {[h, w]}")
        if cm is None:
            return rle_mask(seg, h, w)
        counts = seg["counts"]
        if isinstance(counts, (str, bytes)):
            rle = {"counts": counts.encode("ascii") if isinstance(counts, str) else counts, "size": [h, w]}
        else:
            rle = cm.frPyObjects({"counts": [int(c) for c in counts], "size": [h, w]}, h, w)
        return cm.decode(rle).astype(bool)
    polys = [p for p in seg if len(p) >= 6]
    if cm is None or not polys:
        return polygons_mask(polys, h, w)
    rles = cm.frPyObjects([np.asarray(p, dtype=np.float64)[: len(p) // 2 * 2] for p in polys], h, w)
    return cm.decode(cm.merge(rles)).astype(bool)


# --- the annotation index -------------------------------------------------------------------------------
class _Index:
    """What one annotation JSON says: categories, images, and per class {image id: [(segmentation, crowd,
    area)]}; polygons are kept as float64 arrays (far smaller than JSON's lists of floats)."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise DataError(f"annotation file {path} does not exist")
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"annotation file {path} is not valid JSON: {str(exc).splitlines()[0]}") from None
        except OSError as exc:
            raise DataError(f"cannot read annotation file {path}: {exc.strerror or exc}") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise DataError(f"annotation file {path} is not a COCO instances file "
                            f"(needs 'images', 'annotations' and 'categories' lists)")
        try:
            cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
            self.images = {int(im["id"]): (str(im["file_name"]), int(im["height"]), int(im["width"]))
                           for im in data["images"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"annotation file {path}: a category or image entry lacks {exc}") from None
        if len(cats) != N_CLASSES or len({c for c, _ in cats}) != N_CLASSES:
            raise DataError(f"annotation file {path} lists {len(cats)} categories; COCO-20i needs the 80 of "
                            f"COCO instances")
        self.category_ids = {i + 1: cid for i, (cid, _) in enumerate(cats)}
        self.names = {i + 1: name for i, (_, name) in enumerate(cats)}
        position = {cid: i for i, cid in self.category_ids.items()}
        self.by_class: dict[int, dict[int, list]] = {c: {} for c in self.names}
        for ann in data["annotations"]:
            try:
                c, image_id, seg = position.get(int(ann["category_id"])), int(ann["image_id"]), ann["segmentation"]
                crowd, area = bool(ann.get("iscrowd", 0)), float(ann.get("area", 0.0))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"annotation file {path}: annotation {_ann_id(ann)} lacks or mangles {exc}") from None
            if c is None or image_id not in self.images:
                raise DataError(f"annotation file {path}: annotation {_ann_id(ann)} names an unknown "
                                f"{'category' if c is None else 'image'}")
            compact = _compact(seg)
            if compact is None:
                raise DataError(f"annotation file {path}: annotation {_ann_id(ann)} has an unreadable segmentation")
            if compact:  # an empty polygon list draws nothing
                self.by_class[c].setdefault(image_id, []).append((compact, crowd, area))


def _ann_id(ann) -> str:
    return repr(ann.get("id")) if isinstance(ann, dict) else "(not an object)"


def _compact(seg):
    """A polygon list as a tuple of float64 arrays, an RLE dict as is (list counts as uint32), None if bad."""
    if isinstance(seg, dict):
        counts = seg.get("counts")
        if isinstance(counts, str):
            return {"counts": counts, "size": seg.get("size")}
        if isinstance(counts, list):
            try:
                return {"counts": np.asarray(counts, dtype=np.uint32), "size": seg.get("size")}
            except (TypeError, ValueError, OverflowError):
                return None
        return None
    if isinstance(seg, list):
        try:
            return tuple(np.asarray(p, dtype=np.float64) for p in seg if len(p) >= 6)
        except (TypeError, ValueError):
            return None
    return None


@lru_cache(maxsize=2)
def _cached_index(path: str, size: int, mtime_ns: int) -> _Index:
    return _Index(Path(path))


def annotation_index(path: Path) -> _Index:
    """The (cached) index of an instances JSON; a changed file is read again."""
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"annotation file {path} does not exist") from None
    return _cached_index(str(path.resolve()), st.st_size, st.st_mtime_ns)
