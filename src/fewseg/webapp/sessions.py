"""What ``fewseg serve`` keeps between requests: each adaptation's model and each segmented image's
probabilities, so that the page re-cuts masks at another threshold and downloads the model without adapting again.

- **Probabilities** are kept at each image's own size as 16-bit integers (``round(p * 65535)``, 2 bytes a pixel):
  a mask at threshold ``t`` is ``q > t * 65535``, the same as ``p > t`` except for pixels within 1/131070 of
  ``t``. Only previews (at most :data:`PREVIEW_SIDE` pixels a side) travel to the page.
- **Numbers shown**, each defined at the threshold: the share of the image's pixels in the mask, the mean
  probability of the pixels inside the mask (None when the mask is empty) and the highest probability anywhere
  (so that an empty mask says how far from the threshold the image is).
- **Bounded**: a :class:`Store` keeps the last ``keep`` entries and at most ``budget`` bytes (the newest is
  always kept), evicting the least recently used first.

Example:
    >>> import numpy as np
    >>> q = quantize(np.array([[0.1, 0.6], [0.7, 0.9]], np.float32))
    >>> stats(q, 0.5)
    {'foreground_fraction': 0.75, 'mask_mean_probability': 0.7333, 'max_probability': 0.9}
    >>> stats(q, 0.95)
    {'foreground_fraction': 0.0, 'mask_mean_probability': None, 'max_probability': 0.9}
"""
from __future__ import annotations

import base64
import copy
import io
import secrets
import tempfile
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fewseg.engine.folders import display_rgb

SCALE = 65535               # probabilities kept as round(p * SCALE), uint16
PREVIEW_SIDE = 1024         # previews shown in the page; masks in the zip keep each image's size
KEEP = 16                   # adaptations (and results) kept
BUDGET_BYTES = 512 * 2**20  # probabilities kept, all results together (the newest result always stays)
MODEL_FOLDER = "fewseg_adapted"  # the folder inside the model zip (``fewseg predict --adapted fewseg_adapted``)


def quantize(p: np.ndarray) -> np.ndarray:
    """Probabilities float [H,W] in [0, 1] -> uint16 ``round(p * 65535)``."""
    return (np.clip(p, 0.0, 1.0) * SCALE + 0.5).astype(np.uint16)


def cut(q: np.ndarray, threshold: float) -> np.ndarray:
    """The mask (bool) of kept probabilities ``q`` at ``threshold``: probability above it."""
    return q > threshold * SCALE


def stats(q: np.ndarray, threshold: float) -> dict:
    """The numbers the page shows for one image at ``threshold`` (see the module's docstring)."""
    mask = cut(q, threshold)
    n = int(np.count_nonzero(mask))
    return {"foreground_fraction": round(n / q.size, 4) if q.size else 0.0,
            "mask_mean_probability": round(float(q[mask].mean(dtype=np.float64)) / SCALE, 4) if n else None,
            "max_probability": round(int(q.max(initial=0)) / SCALE, 4)}


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def preview_size(height: int, width: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """(width, height) of a preview: at most ``side`` pixels on the longer side, never enlarged."""
    if max(height, width) <= side:
        return width, height
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def photo_preview(image: np.ndarray) -> str:
    """The photo as the page shows it under the mask: a JPEG data URL at preview size."""
    shown = Image.fromarray(display_rgb(image))
    size = preview_size(image.shape[0], image.shape[1])
    if size != shown.size:
        shown = shown.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    shown.save(buf, "JPEG", quality=90)
    return data_url(buf.getvalue(), "image/jpeg")


def probability_preview(p: np.ndarray) -> str:
    """The probabilities at preview size as an 8-bit grey PNG data URL (value = round(255 p)): the page
    thresholds it to redraw the overlay while the slider moves."""
    size = preview_size(p.shape[0], p.shape[1])
    small = p if size == (p.shape[1], p.shape[0]) else \
        np.asarray(Image.fromarray(p.astype(np.float32), "F").resize(size, Image.BILINEAR))
    return data_url(png((np.clip(small, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)))


@dataclass
class Item:
    """One segmented image: its name (shown), its file stem in the zip, and its kept probabilities."""

    name: str
    stem: str
    q: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.q.nbytes)


@dataclass
class Result:
    """One request's images; ``model_id``: the :class:`Store` key of the adapted model that segmented them (kept
    apart, so that at most ``keep`` models live however many results share them)."""

    model_id: str
    threshold: float
    items: list[Item] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.items)

    def masks_zip(self, threshold: float) -> bytes:
        """The masks at ``threshold`` as a zip (``masks/<stem>.png``, 0/255, each image's size)."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for item in self.items:
                z.writestr(f"masks/{item.stem}.png", png(cut(item.q, threshold).astype(np.uint8) * 255))
        return buf.getvalue()

    def stats(self, threshold: float) -> list[dict]:
        return [{"name": i.name, **stats(i.q, threshold)} for i in self.items]


def model_zip(adapted, threshold: float, folder: str = MODEL_FOLDER) -> bytes:
    """``adapted`` saved by :meth:`~fewseg.adapted.AdaptedSegmenter.save` with ``threshold`` as its threshold,
    zipped as ``<folder>/...`` (unzip, then ``fewseg predict --adapted <folder>`` or ``fewseg.load_adapted``)."""
    chosen = copy.copy(adapted)  # the same network; only the stored threshold differs
    chosen.threshold = float(threshold)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="fewseg-serve-") as tmp:
        saved = Path(chosen.save(Path(tmp) / folder))
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(saved.rglob("*")):
                if path.is_file():
                    z.write(path, f"{folder}/{path.relative_to(saved).as_posix()}")
    return buf.getvalue()


class Store:
    """At most ``keep`` entries and ``budget`` bytes (``size(entry)``; the newest entry always stays), least
    recently used evicted first; thread-safe."""

    def __init__(self, keep: int = KEEP, budget: int | None = None, size=lambda entry: 0):
        self.keep, self.budget, self.size = keep, budget, size
        self.items: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.Lock()

    def add(self, entry, key: str | None = None) -> str:
        key = key or secrets.token_urlsafe(12)
        with self.lock:
            self.items[key] = entry
            while len(self.items) > max(1, self.keep):
                self.items.popitem(last=False)
            if self.budget is not None:
                while len(self.items) > 1 and sum(self.size(e) for e in self.items.values()) > self.budget:
                    self.items.popitem(last=False)
        return key

    def get(self, key: str):
        with self.lock:
            entry = self.items.get(key)
            if entry is not None:
                self.items.move_to_end(key)
            return entry

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)
