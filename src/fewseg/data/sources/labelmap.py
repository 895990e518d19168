r"""Datasets of photos with class-id label maps (CCP, CamVid, PASCAL-style), split into class folds.

The files are read by :mod:`fewseg.data.sources.labelmap_scan` (the class list, and the cached scan of the label
maps that gives the dataset its usable classes, folds and per-class image lists); this module is the dataset.

Layout::

    ROOT/images/<stem>.<jpg|png>   the photo
    ROOT/labels/<stem>.png         class ids, same size; 255 = ignore; an id not in classes.txt = background
    ROOT/classes.txt               "<id> <name>" per line
    ROOT/splits/<name>.txt         optional lists of stems (``image_split=<name>``)

The per-image foreground fraction of every class is scanned once per label folder and cached in memory
and on disk (``$FEWSEG_CACHE`` or ``~/.cache/fewseg``), so later constructions take milliseconds.

Example (two 10x6 label maps made on the spot; a real root is e.g. ``../shared/data/ccp``):
    >>> import os, tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from fewseg.data.sources.labelmap import LabelMapDataset
    >>> root = Path(tempfile.mkdtemp()); os.environ["FEWSEG_CACHE"] = str(root / "cache")  # scans kept here
    >>> (root / "images").mkdir(); (root / "labels").mkdir()
    >>> _ = (root / "classes.txt").write_text("0 background\n1 road\n2 car\n3 tree\n4 sky\n")
    >>> labels = np.arange(5, dtype=np.uint8).repeat(2)[None].repeat(6, 0)   # [6,10]: two columns per id
    >>> for stem in ("a", "b"):
    ...     Image.new("RGB", (10, 6)).save(root / "images" / f"{stem}.jpg")
    ...     Image.fromarray(labels).save(root / "labels" / f"{stem}.png")
    >>> ds = LabelMapDataset(root, split="test", fold=0, n_folds=4, image_size=16)
    >>> c = ds.class_ids()[0]
    >>> s = ds.load(ds.items(c)[0], c)  # image [3,16,16] float32 in [0,1], mask [1,16,16], ignore [1,16,16]
    >>> ds.describe()["fold"], ds.describe()["classes"], tuple(s.mask.shape)
    (0, {1: 'road'}, (1, 16, 16))
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from fewseg.data.base import Sample, SegmentationDataset
from fewseg.data.io import IMAGE_EXTS, read_image, read_label_map
from fewseg.data.patches import PatchSource
from fewseg.data.sources.labelmap_scan import (  # noqa: F401  (cache_dir: still importable from here)
    IGNORE,
    cache_dir,
    files_by_stem,
    label_fractions,
    read_classes,
    read_small_text,
)
from fewseg.data.transforms import RESIZE_MODES, content_box, resize_arrays
from fewseg.errors import DataError
from fewseg.registry import DATASETS

SPLITS = ("train", "val", "test", "all")


# --- class folds ------------------------------------------------------------------------------------
def fold_blocks(ids: Sequence[int], n_folds: int) -> list[list[int]]:
    """Sorted ``ids`` cut into ``n_folds`` contiguous blocks whose sizes differ by at most one."""
    ids = sorted(ids)
    q, r = divmod(len(ids), n_folds)
    blocks, start = [], 0
    for k in range(n_folds):
        size = q + (1 if k < r else 0)
        blocks.append(ids[start:start + size])
        start += size
    return blocks


class LabelMapDataset(PatchSource, SegmentationDataset):
    """Binary tasks "class c vs the rest" from multi-class label maps, with PASCAL-5i-style class folds.

    Usable classes: ids of ``classes.txt`` minus ``background_ids`` and ``exclude_classes`` (ids or names)
    whose foreground fraction is >= ``min_foreground`` in at least ``min_images`` images (default 2).
    Sorted, they are cut into ``n_folds`` contiguous blocks: block ``fold`` is *test*; of the rest a seeded
    ``val_classes`` share (a fraction, at least 1; or an explicit list of ids/names) is *val*, the others
    *train*. ``fold="all"``: every usable class is train. ``image_split`` limits the images (not the folds).
    ``cache=True`` keeps each resized (image, labels) pair in memory (with ``patch``: each decoded image and
    label map at its own size). ``patch``, ``patches_per_image``, ``separate_sources``, ``query_patches``: episodes
    of random crops of the images at their own resolution (:mod:`fewseg.data.patches`).

    For example, ``LabelMapDataset("data/camvid", split="train", fold=1, background_ids=(),
    image_split="train")`` keeps every listed class (id 0 too), leaves fold 1 out for testing and reads only
    the stems listed in ``splits/train.txt``.
    The folds of seven usable classes:

        >>> from fewseg.data.sources.labelmap import fold_blocks
        >>> fold_blocks([1, 2, 3, 4, 5, 6, 7], 4)
        [[1, 2], [3, 4], [5, 6], [7]]
    """

    name = "labelmap"
    default_root: str | None = None  # subclasses: folder under ../shared/data

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", fold: int | str = 0,
                 n_folds: int = 4, image_size: int = 64, resize: str = "pad", min_foreground: float = 0.01,
                 min_images: int | None = None, image_split: str | None = None,
                 background_ids: Sequence[int] = (0,), exclude_classes: Sequence[int | str] = (),
                 val_classes: float | Sequence[int | str] = 0.2, seed: int = 0, cache: bool = False,
                 patch: int | None = None, patches_per_image: int = 1, separate_sources: bool | None = None,
                 query_patches: str = "foreground"):
        self.init_patches(patch, patches_per_image, separate_sources, query_patches)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if isinstance(fold, str) and fold.isdigit():
            fold = int(fold)
        if n_folds < 1 or not (fold == "all" or (isinstance(fold, int) and 0 <= fold < n_folds)):
            raise ValueError(f"fold must be 'all' or an integer in [0, {n_folds}), got {fold!r}")
        if root is None:
            if self.default_root is None:
                raise DataError(f"dataset {self.name!r} needs root=<folder with images/, labels/, "
                                f"classes.txt>")
            root = (Path.cwd() / ".." / "shared" / "data" / self.default_root).resolve()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} is not a folder")
        self.split, self.fold, self.n_folds, self.seed = split, fold, int(n_folds), seed
        self.image_size, self.resize, self.cache = int(image_size), resize, bool(cache)
        self.min_foreground = float(min_foreground)
        self.min_images = 2 if min_images is None else int(min_images)
        self.image_split, self.background_ids = image_split, tuple(int(b) for b in background_ids)
        self.listed = read_classes(self.root / "classes.txt")
        self._image_paths = files_by_stem(self.root / "images", IMAGE_EXTS)
        self._label_paths = files_by_stem(self.root / "labels", (".png",))
        stems = sorted(set(self._image_paths) & set(self._label_paths))
        unpaired = len(self._image_paths) + len(self._label_paths) - 2 * len(stems)
        if unpaired:
            warnings.warn(f"{self.root}: {unpaired} image(s)/label map(s) without a partner are skipped",
                          stacklevel=2)
        if not stems:
            raise DataError(f"{self.root} holds no image with a label map "
                            f"(images/<stem>.jpg + labels/<stem>.png)")
        pool = self._read_image_split() if image_split is not None else stems
        fractions = label_fractions(self.root / "labels")
        self.excluded = self._resolve(exclude_classes, "exclude_classes")
        candidates = [c for c in sorted(self.listed)
                      if c not in self.background_ids and c not in self.excluded]
        self.usable = [c for c in candidates if self._count(fractions, stems, c) >= self.min_images]
        if not self.usable:
            raise DataError(f"{self.root}: no class covers >= {self.min_foreground} of the pixels in >= "
                            f"{self.min_images} images")
        chosen = self._split_classes(val_classes)
        self._items: dict[int, list[str]] = {}
        for c in chosen:
            keep = [s for s in pool if self._fg(fractions, s, c)]
            if len(keep) >= self.min_images:
                self._items[c] = keep
        self.class_names = {c: self.listed[c] for c in self._items}
        self._stems = set(pool)
        self._cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._native_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # --- construction helpers ----------------------------------------------------------------------------
    def _fg(self, fractions, stem: str, c: int) -> bool:
        f = fractions.get(stem, {}).get(c, 0.0)
        return f > 0 and f >= self.min_foreground

    def _count(self, fractions, stems, c: int) -> int:
        return sum(1 for s in stems if self._fg(fractions, s, c))

    def _read_image_split(self) -> list[str]:
        path = self.root / "splits" / f"{self.image_split}.txt"
        if not path.is_file():
            raise DataError(f"split file {path} does not exist")
        stems = [s.strip() for s in read_small_text(path).splitlines() if s.strip()]
        for s in stems:
            if s not in self._image_paths:
                raise DataError(f"split file {path} names {s!r} but {self.root / 'images'} has no such image")
            if s not in self._label_paths:
                raise DataError(f"split file {path} names {s!r} but {self.root / 'labels'} has no {s}.png")
        return sorted(set(stems))

    def _resolve(self, classes: Sequence[int | str], what: str) -> list[int]:
        by_name = {n: c for c, n in self.listed.items()}
        out = []
        for c in classes:
            if isinstance(c, str) and not c.isdigit():
                if c not in by_name:
                    raise ValueError(f"{what}: {c!r} is not a class of {self.root / 'classes.txt'}")
                out.append(by_name[c])
            else:
                out.append(int(c))
        return out

    def _split_classes(self, val_classes) -> list[int]:
        if self.split == "all":
            return list(self.usable)
        if self.fold == "all":
            return list(self.usable) if self.split == "train" else []
        if self.n_folds > len(self.usable):
            raise DataError(f"{self.root}: {len(self.usable)} usable classes cannot fill "
                            f"{self.n_folds} folds")
        test = fold_blocks(self.usable, self.n_folds)[self.fold]
        rest = [c for c in self.usable if c not in test]
        if isinstance(val_classes, (int, float)) and not isinstance(val_classes, bool):
            n_val = min(max(1, round(val_classes * len(rest))), len(rest) - 1) if val_classes > 0 else 0
            perm = np.random.default_rng(self.seed).permutation(len(rest))
            val = sorted(rest[i] for i in perm[:max(n_val, 0)])
        else:
            val = self._resolve(val_classes, "val_classes")
            bad = [c for c in val if c not in rest]
            if bad:
                raise ValueError(f"val_classes {bad} are not usable non-test classes of fold {self.fold}")
        parts = {"test": test, "val": sorted(val), "train": [c for c in rest if c not in val]}
        return parts[self.split]

    # --- the dataset contract -------------------------------------------------------------------------
    def items(self, class_id: int) -> Sequence[Hashable]:
        """Stems of the images where ``class_id`` covers >= ``min_foreground`` of the pixels."""
        if class_id not in self._items:
            raise DataError(f"class {class_id} is not in the {self.split} split (fold {self.fold}) "
                            f"of {self.root}")
        return self.patch_keys(list(self._items[class_id]))

    def holds_class(self, key: Hashable, own_class: int, class_id: int) -> bool:
        """Whether the label map of image ``key`` has any pixel of ``class_id`` (support negatives are images
        without it; :class:`fewseg.data.sampler.EpisodeSampler`)."""
        stem = self.source_of(key)
        fractions = self.__dict__.get("_all_fractions")
        if fractions is None:  # the scan behind the class lists (cached), read once per dataset
            fractions = self._all_fractions = label_fractions(self._label_paths[stem].parent)
        return fractions.get(stem, {}).get(int(class_id), 0.0) > 0

    def native(self, stem: str, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 [H,W,3] and labels uint8 [H,W] (1 = ``class_id``, 255 = ignore, 0 = the rest) at the
        image's own size (for patches)."""
        if stem in self._native_cache:
            image, labels = self._native_cache[stem]
        else:
            image, labels = self._read(stem)
            if self.cache:
                self._native_cache[stem] = image, labels
        binary = np.where(labels == IGNORE, IGNORE, labels == class_id).astype(np.uint8)
        return image, binary

    def _read(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """The photo uint8 [H,W,3] and label map [H,W] of ``stem``, checked to be of one size."""
        img_path, lab_path = self._image_paths[stem], self._label_paths[stem]
        image, labels = read_image(img_path), read_label_map(lab_path)
        if labels.shape != image.shape[:2]:
            raise DataError(f"label map {lab_path} is {labels.shape[1]}x{labels.shape[0]} but image "
                            f"{img_path} is {image.shape[1]}x{image.shape[0]}")
        return image, labels

    def _arrays(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """Resized image uint8 [S,S,3] and labels [S,S] (255 = ignore, also in the pad region)."""
        if stem in self._cached:
            return self._cached[stem]
        image, labels = self._read(stem)
        out = resize_arrays(image, labels, self.image_size, self.resize, fill_label=IGNORE)
        if self.cache:
            self._cached[stem] = out
        return out

    def load(self, key: Hashable, class_id: int) -> Sample:
        """Image ``key`` with mask = (label == class_id), ignore = (label == 255), at ``image_size``."""
        if self.patch is not None:
            return self.load_patch(key, class_id)
        return self._load_whole(key, class_id)

    def load_patch(self, key: Hashable, class_id: int, generator: torch.Generator | None = None,
                   role: str = "support") -> Sample:
        self._check_key(self.source_of(key), class_id)
        return super().load_patch(key, class_id, generator, role)

    def _check_key(self, stem: Hashable, class_id: int) -> None:
        if stem not in self._stems:
            raise DataError(f"image {stem!r} is not part of {self.root} ({self.image_split or 'all images'})")
        if class_id not in self.listed:
            raise DataError(f"class {class_id} is not listed in {self.root / 'classes.txt'}")

    def _load_whole(self, key: Hashable, class_id: int) -> Sample:
        self._check_key(key, class_id)
        im, lab = self._arrays(key)
        image = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div_(255.0)  # [3,S,S]
        lab_t = torch.from_numpy(lab.astype(np.int64))                                            # [S,S]
        mask = (lab_t == class_id).to(torch.float32)[None]                                        # [1,S,S]
        return Sample(image.contiguous(), mask, (lab_t == IGNORE)[None])

    def full_resolution(self, key: Hashable, class_id: int):
        """(mask [1,1,H,W] float, ignore [1,1,H,W] bool, box) of image ``key`` at its label map's own size, and
        where the photo lies in the network input (see ``content_box``); None when ``resize="crop"`` or with
        ``patch`` (a crop has no label map of its own: patch episodes are scored at the network's size)."""
        if self.patch is not None:
            return None
        labels = read_label_map(self._label_paths[key])
        box = content_box(labels.shape[0], labels.shape[1], self.image_size, self.resize)
        if box is None:
            return None
        # compared in the file's own dtype: no int64 copy of a full-resolution map (memory: README, Reliability)
        mask = torch.from_numpy(labels == class_id)[None, None].to(torch.float32)
        return mask, torch.from_numpy(labels == IGNORE)[None, None], box

    def describe(self) -> dict:
        d = super().describe()
        d.update(root=str(self.root), split=self.split, fold=self.fold, n_folds=self.n_folds,
                 min_foreground=self.min_foreground, min_images=self.min_images, image_split=self.image_split,
                 background_ids=list(self.background_ids), exclude_classes=self.excluded, resize=self.resize,
                 seed=self.seed, n_images=len(self._stems), n_usable_classes=len(self.usable))
        if self.patch is not None:
            d.update(patch=self.patch, patches_per_image=self.patches_per_image,
                     separate_sources=self.separate_sources, query_patches=self.query_patches)
        return d


class CCPDataset(LabelMapDataset):
    """Clothing Co-Parsing (``../shared/data/ccp`` by default); 0 = background."""

    name = "ccp"
    default_root = "ccp"


class CamVidDataset(LabelMapDataset):
    """CamVid 11 classes (``../shared/data/camvid`` by default); id 0 is *sky*, so no background id."""

    name = "camvid"
    default_root = "camvid"

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", *,
                 background_ids: Sequence[int] = (), **kwargs):
        super().__init__(root, split, background_ids=background_ids, **kwargs)


DATASETS.register("labelmap")(LabelMapDataset)
DATASETS.register("ccp")(CCPDataset)
DATASETS.register("camvid")(CamVidDataset)
