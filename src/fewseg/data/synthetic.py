"""The embedded default dataset: procedurally generated shapes, no files and no download.

One module: the class space, its fixed splits and the renderer together are the dataset's definition (a class id
means nothing without the renderer that draws it, nor a split without the class space it cuts).

Each class is a (shape family, texture, colour scheme) triple; every image holds one object of the
requested class (the mask) plus distractor objects of *other* classes of the same split, on a dull
textured background. Images are generated on the fly, deterministically from ``(seed, class, key)``.

Example:
    >>> from fewseg.data.synthetic import SyntheticDataset
    >>> ds = SyntheticDataset(split="train", seed=0, image_size=16)
    >>> c = ds.class_ids()[0]
    >>> s = ds.load(0, c)          # image [3,16,16] float32 in [0,1], mask [1,16,16] {0,1}
    >>> tuple(s.image.shape), s.image.dtype, sorted(s.mask.unique().tolist())
    ((3, 16, 16), torch.float32, [0.0, 1.0])
"""
from __future__ import annotations

import operator
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from fewseg.data.base import Sample, SegmentationDataset
from fewseg.errors import ConfigError, DataError
from fewseg.registry import DATASETS

# --- the class space -------------------------------------------------------------------------------
SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
_SYMMETRIC = {"disc", "ring"}  # not rotated
TEXTURES = ("solid", "stripes-h", "stripes-v", "checker", "dots")
COLOURS = {  # saturated object colours (RGB in [0,1]); backgrounds are dull greys, so these stand out
    "red": (0.86, 0.14, 0.14), "orange": (0.96, 0.55, 0.10), "yellow": (0.96, 0.90, 0.16),
    "green": (0.18, 0.68, 0.22), "teal": (0.08, 0.64, 0.64), "blue": (0.14, 0.30, 0.86),
    "purple": (0.56, 0.20, 0.76), "pink": (0.96, 0.46, 0.72), "white": (0.96, 0.96, 0.96),
    "black": (0.07, 0.07, 0.07),
}
# (first, second): textures alternate the two; "solid" uses the first. The first colours are all distinct,
# so solid classes of different schemes differ in colour too.
SCHEMES = (("red", "yellow"), ("orange", "blue"), ("yellow", "black"), ("green", "white"), ("teal", "orange"),
           ("blue", "yellow"), ("purple", "green"), ("pink", "teal"), ("white", "red"), ("black", "pink"))

NUM_CLASSES = len(SHAPES) * len(TEXTURES) * len(SCHEMES)  # 300
SPLIT_SEED = 20240611  # fixed: the class splits never depend on the ``seed`` argument
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
SPLITS = ("train", "val", "test", "all")


def decode_class(class_id: int) -> tuple[int, int, int]:
    """class id -> (shape index, texture index, scheme index); id = (shape*T + texture)*S + scheme."""
    rest, scheme = divmod(int(class_id), len(SCHEMES))
    shape, texture = divmod(rest, len(TEXTURES))
    return shape, texture, scheme


def class_name(class_id: int) -> str:
    """e.g. ``"ring/stripes-h/teal-orange"``; solid classes name one colour: ``"disc/solid/red"``."""
    s, t, c = decode_class(class_id)
    colours = SCHEMES[c][0] if TEXTURES[t] == "solid" else "-".join(SCHEMES[c])
    return f"{SHAPES[s]}/{TEXTURES[t]}/{colours}"


def split_class_ids(split: str) -> list[int]:
    """Sorted class ids of ``split`` (a fixed seeded permutation: 60% train, 20% val, 20% test)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown synthetic split {split!r}; choose one of: {', '.join(SPLITS)}")
    if split == "all":
        return list(range(NUM_CLASSES))
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_CLASSES)
    n_train = round(SPLIT_FRACTIONS["train"] * NUM_CLASSES)
    n_val = round(SPLIT_FRACTIONS["val"] * NUM_CLASSES)
    n_tv = n_train + n_val
    bounds = {"train": (0, n_train), "val": (n_train, n_tv), "test": (n_tv, NUM_CLASSES)}
    part = perm[slice(*bounds[split])]
    return sorted(int(c) for c in part)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"synthetic {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Rendered(NamedTuple):
    """One generated image with its masks (numpy, for inspection and tests)."""

    image: np.ndarray  # [3,H,W] float32 in [0,1]
    mask: np.ndarray  # [H,W] bool, visible pixels of the target object
    distractor_mask: np.ndarray  # [H,W] bool, visible pixels of the distractor objects
    distractor_classes: tuple[int, ...]  # class ids of the distractors (same split, never the target)


@DATASETS.register("synthetic")
class SyntheticDataset(SegmentationDataset):
    """Procedural few-shot segmentation data: 300 classes = 6 shapes x 5 textures x 10 colour schemes.

    Splits are disjoint sets of class ids, 180 train / 60 val / 60 test, a fixed permutation drawn with
    ``SPLIT_SEED`` (never the ``seed`` argument, so splits never change between runs); test classes recombine
    shapes, textures and colour schemes that all occur in training classes. ``load(key, class_id)`` draws
    image ``key`` of the class from ``np.random.default_rng([seed, class_id, key])`` alone (no global RNG):
    the same triple (and split: it sets the distractor pool) gives the same image, whatever ``num_classes``.

    Each image: a dull background (gradient + low-contrast waves + noise), ``n_distractors`` = (lo, hi)
    objects of *other* classes of the same split drawn first (each keeps >= 25% visible, may be cut by the
    border), then the target object on top, fully inside the image (size 18-35% of the image side, random
    position, rotation for non-symmetric shapes); small per-object colour jitter and pixel noise. The mask
    is the target's visible pixels; ``ignore`` is all False.

    Args:
        split: "train" | "val" | "test" | "all".
        seed: image seed (>= 0); a different seed gives different images of the same classes.
        image_size: side H = W in pixels (>= 16).
        images_per_class: keys per class, ``items(c) == range(images_per_class)``.
        n_distractors: (lo, hi) distractor objects per image, drawn uniformly; an int n means (n, n).
        num_classes: keep only this many classes of the split (a fixed subset), e.g. for quick runs.

    Example:
        >>> from fewseg.data.synthetic import SyntheticDataset
        >>> ds = SyntheticDataset(split="train", seed=0, image_size=16, images_per_class=200)
        >>> len(ds.class_ids()), ds.class_names[ds.class_ids()[0]]
        (180, 'disc/solid/red')
        >>> s = ds.load(3, ds.class_ids()[0])
        >>> tuple(s.image.shape), tuple(s.mask.shape), tuple(s.ignore.shape)    # [3,H,W], [1,H,W], [1,H,W]
        ((3, 16, 16), (1, 16, 16), (1, 16, 16))
        >>> r = ds.render(ds.class_ids()[0], 3)   # numpy image, target mask, distractor mask, distractor ids
        >>> set(r.distractor_classes) <= set(ds.class_ids()) and ds.class_ids()[0] not in r.distractor_classes
        True
    """

    name = "synthetic"

    def __init__(self, split: str = "train", seed: int = 0, image_size: int = 64, images_per_class: int = 200,
                 n_distractors: tuple[int, int] | int = (1, 3), num_classes: int | None = None):
        if split not in SPLITS:
            raise ConfigError(f"unknown synthetic split {split!r}; choose one of: {', '.join(SPLITS)}")
        self.image_size = _check_int("image_size", image_size, 16)
        self.seed = _check_int("seed", seed, 0)
        self.images_per_class = _check_int("images_per_class", images_per_class, 1)
        pair = n_distractors
        if isinstance(pair, (int, np.integer)):
            pair = (pair, pair)
        try:
            lo, hi = (_check_int("n_distractors", v, 0) for v in pair)
        except (TypeError, ValueError):
            lo = hi = -1
        if not 0 <= lo <= hi:
            raise ConfigError(f"synthetic n_distractors must be an integer or (lo, hi) with 0 <= lo <= hi, "
                              f"got {n_distractors!r}")
        self.split, self.n_distractors = split, (lo, hi)
        # Distractors come from the whole split, so an image never depends on ``num_classes``.
        self._ids = np.asarray(split_class_ids(split), dtype=np.int64)  # [C_split] sorted
        if hi > 0 and len(self._ids) < 2:
            raise ConfigError(f"synthetic split {split!r} has too few classes for distractors")
        self.num_classes = (len(self._ids) if num_classes is None
                            else _check_int("num_classes", num_classes, 1))
        if self.num_classes > len(self._ids):
            raise ConfigError(f"synthetic num_classes={num_classes} exceeds the {len(self._ids)} classes of "
                              f"split {split!r}")
        # A fixed, spread-out subset: the first ``num_classes`` of the split in a fixed order (SPLIT_SEED+1).
        order = [int(c) for c in np.random.default_rng(SPLIT_SEED + 1).permutation(self._ids)]
        self.class_names = {c: class_name(c) for c in sorted(order[: self.num_classes])}
        n = self.image_size
        self._grid = np.arange(n, dtype=np.float32) + 0.5  # pixel centres, [n]
        self._stripe = max(2.0, n / 16.0)  # stripe / checker cell width in pixels (4 at 64)
        # [S,2,3] the two colours of each scheme
        self._colours = np.asarray([[COLOURS[a], COLOURS[b]] for a, b in SCHEMES], dtype=np.float32)

    # --- contract --------------------------------------------------------------------------------------
    def items(self, class_id: int) -> Sequence[Hashable]:
        self._check_class(class_id)
        return range(self.images_per_class)

    def load(self, key: Hashable, class_id: int) -> Sample:
        r = self.render(class_id, key)
        n = self.image_size
        image = torch.from_numpy(r.image)  # [3,H,W] float32
        mask = torch.from_numpy(r.mask.astype(np.float32)).reshape(1, n, n)  # [1,H,W] {0,1}
        return Sample(image, mask, torch.zeros(1, n, n, dtype=torch.bool))

    def describe(self) -> dict:
        d = super().describe()
        d.update(split=self.split, seed=self.seed, images_per_class=self.images_per_class,
                 n_distractors=list(self.n_distractors), num_classes=self.num_classes, split_seed=SPLIT_SEED)
        return d

    # --- generation ------------------------------------------------------------------------------------
    def _check_class(self, class_id) -> int:
        try:
            c = operator.index(class_id)
        except TypeError:
            raise DataError(f"class {class_id!r} is not a class id of synthetic split "
                            f"{self.split!r}") from None
        if c not in self.class_names:
            raise DataError(f"class {class_id!r} is not in synthetic split {self.split!r} "
                            f"({len(self.class_names)} classes)")
        return int(c)

    def _check_key(self, key) -> int:
        try:
            k = operator.index(key)
        except TypeError:
            k = None
        if k is None or not 0 <= k < self.images_per_class:
            raise DataError(f"image key {key!r} is out of range for synthetic (images_per_class="
                            f"{self.images_per_class}: keys 0..{self.images_per_class - 1})")
        return int(k)

    def render(self, class_id: int, key: int) -> Rendered:
        """Generate image ``key`` of ``class_id`` (numpy), with the target and distractor masks."""
        c, k = self._check_class(class_id), self._check_key(key)
        rng = np.random.default_rng([self.seed, c, k])
        n = self.image_size
        image = self._background(rng)  # [3,H,W]

        lo, hi = self.n_distractors
        n_d = int(rng.integers(lo, hi + 1))
        others = self._ids[self._ids != c]
        d_classes = (tuple(int(x) for x in rng.choice(others, size=n_d, replace=len(others) < n_d))
                     if n_d else ())
        classes = d_classes + (c,)  # drawing order: distractors first, target last (on top)

        # Geometry: retry positions until every object keeps >= 50% (target) / 25% (distractors) visible.
        for _attempt in range(8):
            geoms = [self._geometry(rng, cls, is_target=(i == len(classes) - 1))
                     for i, cls in enumerate(classes)]
            shapes = [self._shape_mask(g, cls) for g, cls in zip(geoms, classes)]  # each (box, [h,w] bool)
            full = np.zeros((len(classes), n, n), dtype=bool)  # [O,H,W] in-image pixels of each object
            for i, ((y0, y1, x0, x1), m) in enumerate(shapes):
                full[i, y0:y1, x0:x1] = m
            visible = full.copy()
            for i in range(len(classes) - 1):
                visible[i] &= ~full[i + 1:].any(axis=0)
            own = np.asarray([g[3] for g in geoms])  # nominal area of each object (pixels)
            need = np.full(len(classes), 0.25)
            need[-1] = 0.5
            if np.all(visible.sum(axis=(1, 2)) >= need * own):
                break

        for (box, m), cls in zip(shapes, classes):
            self._paint(image, rng, box, m, cls)
        image += rng.normal(0.0, 0.015, size=image.shape).astype(np.float32)  # sensor noise
        np.clip(image, 0.0, 1.0, out=image)
        return Rendered(image, visible[-1], visible[:-1].any(axis=0), d_classes)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Dull two-colour gradient + smooth low-contrast waves + faint pixel noise: [3,H,W] float32."""
        n, g = self.image_size, self._grid / self.image_size  # g: [n] in (0,1)
        grey = rng.uniform(0.25, 0.6, size=(2, 1)).astype(np.float32)
        tint = rng.uniform(-0.07, 0.07, size=(2, 3)).astype(np.float32)
        base = np.clip(grey + tint, 0, 1)  # [2,3] two dull colours
        a = rng.uniform(0, 2 * np.pi)
        t = np.float32(np.cos(a)) * g[None, :] + np.float32(np.sin(a)) * g[:, None]  # [H,W] linear ramp
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        waves = np.zeros((n, n), dtype=np.float32)
        # sin(f (cos b x + sin b y) + p) is separable: sin(X + Y) = sin X cos Y + cos X sin Y
        for _ in range(3):
            f = rng.uniform(2.0, 7.0) * 2 * np.pi
            b = rng.uniform(0, 2 * np.pi)
            X = np.float32(f * np.cos(b)) * g  # [W]
            Y = np.float32(f * np.sin(b)) * g + np.float32(rng.uniform(0, 2 * np.pi))  # [H]
            waves += np.sin(Y)[:, None] * np.cos(X)[None, :] + np.cos(Y)[:, None] * np.sin(X)[None, :]
        lum = (0.035 * waves / 3.0)[None] + rng.normal(0, 0.02, size=(1, n, n)).astype(np.float32)
        img = base[0][:, None, None] * (1 - t)[None] + base[1][:, None, None] * t[None] + lum  # [3,H,W]
        return img.astype(np.float32)

    def _geometry(self, rng: np.random.Generator, cls: int, is_target: bool):
        """(cy, cx, radius, nominal area, angle); the target lies fully inside the image."""
        n = self.image_size
        r = rng.uniform(0.18, 0.35) * n / 2  # half-extent: size 18-35% of the image side
        m = 1.15 * r if is_target else 0.3 * r  # distractors may be partly cut off by the border
        cy, cx = rng.uniform(m, n - m, size=2)
        shape = SHAPES[decode_class(cls)[0]]
        angle = 0.0 if shape in _SYMMETRIC else rng.uniform(0, 2 * np.pi)
        area_factor = {"disc": np.pi, "square": 4 * 0.8 ** 2, "triangle": 3 * np.sqrt(3) / 4 * 1.15 ** 2,
                       "ring": np.pi * (1 - 0.5 ** 2), "cross": 4 * 0.32 * 2 - 4 * 0.32 ** 2,
                       "diamond": 2 * 0.62}[shape]
        return cy, cx, r, area_factor * r * r, angle

    def _shape_mask(self, geom, cls: int):
        """The object's pixels inside its clipped bounding box: ((y0, y1, x0, x1), [h,w] bool)."""
        cy, cx, r, _, angle = geom
        n, R = self.image_size, 1.2 * r  # every shape lies within 1.15 r of its centre
        y0, y1 = max(0, int(np.floor(cy - R))), min(n, int(np.ceil(cy + R)) + 1)
        x0, x1 = max(0, int(np.floor(cx - R))), min(n, int(np.ceil(cx + R)) + 1)
        dy = (self._grid[y0:y1] - cy)[:, None] / r  # [h,1]
        dx = (self._grid[x0:x1] - cx)[None, :] / r  # [1,w]
        ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        u = ca * dx + sa * dy  # [h,w] object-local coordinates, unit = r
        v = -sa * dx + ca * dy
        shape = SHAPES[decode_class(cls)[0]]
        if shape == "disc":
            m = u * u + v * v <= 1.0
        elif shape == "ring":
            d = u * u + v * v
            m = (d <= 1.0) & (d >= 0.25)
        elif shape == "square":
            m = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
        elif shape == "triangle":  # equilateral, circumradius 1.15 (a bit larger: it is the thinnest shape)
            m = (v <= 0.575) & (0.866 * u - 0.5 * v <= 0.575) & (-0.866 * u - 0.5 * v <= 0.575)
        elif shape == "cross":
            au, av = np.abs(u), np.abs(v)
            m = ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))
        else:  # diamond: an elongated rhombus, so it differs from a rotated square
            m = np.abs(u) / 0.62 + np.abs(v) <= 1.0
        return (y0, y1, x0, x1), m

    def _paint(self, image: np.ndarray, rng: np.random.Generator, box, m: np.ndarray, cls: int) -> None:
        """Fill the object's pixels with its texture in jittered scheme colours (in place)."""
        _, t, s = decode_class(cls)
        y0, y1, x0, x1 = box
        cols = self._colours[s] * rng.uniform(0.95, 1.05, size=(2, 3)).astype(np.float32) \
            + rng.uniform(-0.03, 0.03, size=(1, 1)).astype(np.float32)  # [2,3] jittered
        cols = np.clip(cols, 0.0, 1.0)
        texture = TEXTURES[t]
        w = self._stripe
        py, px = rng.uniform(0, 2 * w, size=2)  # texture phase
        ys = (self._grid[y0:y1] + py)[:, None]  # [h,1] image coordinates: stripes stay horizontal/vertical
        xs = (self._grid[x0:x1] + px)[None, :]  # [1,w]
        if texture == "solid":
            second = np.zeros(m.shape, dtype=bool)
        elif texture == "stripes-h":
            second = np.broadcast_to((np.floor(ys / w) % 2) == 1, m.shape)
        elif texture == "stripes-v":
            second = np.broadcast_to((np.floor(xs / w) % 2) == 1, m.shape)
        elif texture == "checker":
            second = ((np.floor(ys / w) + np.floor(xs / w)) % 2) == 1
        else:  # dots of the second colour on the first, one per 2w x 2w cell
            fy = (ys / (2 * w)) % 1.0 - 0.5
            fx = (xs / (2 * w)) % 1.0 - 0.5
            second = fy * fy + fx * fx <= 0.3 ** 2
        crop = image[:, y0:y1, x0:x1]  # [3,h,w] view
        fill = np.where(second[None], cols[1][:, None, None], cols[0][:, None, None])  # [3,h,w]
        np.copyto(crop, fill, where=m[None])
