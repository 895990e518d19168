r"""COCO-20i, the few-shot segmentation benchmark on COCO 2014, in HSNet's convention, masks from the JSON.

Reference: juhongm999/hsnet, ``data/coco.py`` (``build_class_ids``: ``class_ids_val = [self.fold + self.nfolds * v
for v in range(nclass_trn)]`` with ``nfolds = 4``, 80 classes, 0-based; a mask value is ``class + 1``). That is
the *interleaved* split: fold ``i`` tests the classes ``4k + i + 1`` (k = 0..19, 1-based positions in the 80
categories sorted by category id), e.g. fold 0 = 1, 5, 9, ..., 77 (person, airplane, boat, ...). The other
COCO-20i split, contiguous blocks of 20 (fold ``i`` = classes ``20i+1 .. 20i+20``, used by PFENet and others),
exists too; this dataset is HSNet's. Class ids here are those 1-based positions (``describe()["category_ids"]``
maps them to COCO category ids).

Layout (``root`` is the COCO folder, or a folder holding ``COCO2014/`` as HSNet's ``Datasets_HSN``)::

    ROOT/train2014/*.jpg, ROOT/val2014/*.jpg
    ROOT/annotations/instances_train2014.json, ROOT/annotations/instances_val2014.json

Masks come from the instance annotations, not from HSNet's pre-rendered PNGs: all instances of a class in an
image merged into one binary mask (decoded by :mod:`fewseg.data.sources.coco_annotations`: polygons rasterised
with Pillow at 5x5 sub-pixels, a pixel in when at least half of it is covered; uncompressed and compressed RLE
decoded in numpy; ``decoder="auto"`` uses pycocotools when it is installed, ``"own"`` never). Crowd regions (``iscrowd``): HSNet's COCO loader has no ignore label
(no ``ignore_idx`` in its COCO batches), every pixel of its masks counts; how its PNGs drew crowds is not in its
code. fewseg's default ``crowd="mask"`` merges a crowd region into the class mask like any instance (as
pycocotools' ``annToMask`` over a class's annotations does); ``crowd="ignore"`` marks it ignore instead (and
lists an image only for its non-crowd instances).

Construction reads one annotation JSON (the per-class image index is built from the annotations alone, kept in
memory per file, so train and val of one run parse it once; ``instances_train2014.json`` takes a while and a few
GB while parsing); masks are rasterised when an image is loaded. An image is listed for class c when it has an
annotation of c (``min_foreground``: a minimum summed ``area`` as a fraction of the image). HSNet's fixed lists
(``splits/coco/{trn,val}/fold*.pkl``) are not read.

Splits: ``train`` = the 60 non-test classes on train2014, ``test`` = the fold's 20 classes on val2014 (HSNet's
trn/val). ``val`` (settings chosen on it): by default three of the 60 held out of ``train``, the first class of
each other fold (fold 0: classes 2, 3, 4), on train2014; ``val_classes=[ids or names]`` others;
``val_classes="images"`` trains on all 60 as HSNet and validates on their val2014 images (the test images, with
training-class masks only). ``all`` = the 80 classes on val2014 (cross-dataset testing).

Test episodes: HSNet scores 1,000 one-query episodes per fold with a fixed seed (``test.py``:
``utils.fix_randseed(0)``; ``__len__`` = 1000, a class drawn uniformly per episode). fewseg draws its own fixed,
seeded, class-balanced episodes: ``fewseg evaluate --checkpoint RUN --shots 1 5 --episodes 1000 --queries 1``.

Example (the RLE decoder; a dataset needs the files, see ``tests/test_pascal_coco.py``):
    >>> from fewseg.data.sources.coco20i import rle_mask
    >>> rle_mask({"counts": [1, 2, 3], "size": [2, 3]}, 2, 3).astype(int).tolist()  # column-major runs 0,1,0
    [[0, 1, 0], [1, 0, 0]]
"""
from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from fewseg.data.base import Sample, SegmentationDataset
from fewseg.data.io import read_image
from fewseg.data.sources.coco_annotations import (  # noqa: F401  (rle_mask ...: still importable from here)
    DECODERS,
    N_CLASSES,
    SUPERSAMPLE,
    _pycocotools,
    annotation_index,
    polygons_mask,
    rle_mask,
    rle_string_counts,
    segmentation_mask,
)
from fewseg.data.sources.pascal5i import (
    N_FOLDS,
    benchmark_split,
    check_fold,
    find_root,
    hsnet_folds,
    image_set_of,
)
from fewseg.data.transforms import RESIZE_MODES, content_box, resize_arrays
from fewseg.errors import DataError
from fewseg.registry import DATASETS

IGNORE = 255
FOLDERS = {"trn": "train2014", "val": "val2014"}
CROWD_MODES = ("mask", "ignore")


# --- the dataset ------------------------------------------------------------------------------------
class Coco20iDataset(SegmentationDataset):
    """COCO-20i (HSNet's interleaved folds): binary tasks "COCO class c vs the rest" from instance annotations.

    Options: ``fold`` (0-3), ``val_classes`` (None, "images" or a list; see the module docstring),
    ``min_foreground`` (0), ``crowd`` ("mask" or "ignore"), ``decoder`` ("auto", "own", "pycocotools"),
    ``resize`` ("pad"), ``cache`` (keep resized pairs in memory). Keys are image file stems.
    """

    name = "coco20i"

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", fold: int | str = 0,
                 n_folds: int = N_FOLDS, image_size: int = 64, resize: str = "pad", seed: int = 0,
                 val_classes: str | Sequence[int | str] | None = None, min_foreground: float = 0.0,
                 crowd: str = "mask", decoder: str = "auto", cache: bool = False):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if crowd not in CROWD_MODES:
            raise ValueError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder == "pycocotools" and _pycocotools() is None:
            raise ValueError("decoder='pycocotools' but pycocotools is not installed")
        self.fold, self.n_folds = check_fold(fold, n_folds), N_FOLDS
        self.image_set = image_set_of(split, val_classes)
        self.root = find_root(root, "COCO2014", "annotations", self.name)
        self.split, self.seed, self.image_size, self.resize = split, seed, int(image_size), resize
        self.val_classes, self.min_foreground, self.crowd, self.decoder = val_classes, float(min_foreground), \
            crowd, decoder
        self.cache = bool(cache)
        self.folder = self.root / FOLDERS[self.image_set]
        if not self.folder.is_dir():
            raise DataError(f"image folder {self.folder} does not exist")
        self.annotation_file = self.root / "annotations" / f"instances_{FOLDERS[self.image_set]}.json"
        self.index = annotation_index(self.annotation_file)
        self.folds = hsnet_folds(N_CLASSES, interleaved=True)
        classes, _ = benchmark_split(self.folds, self.fold, split, val_classes, self.index.names)
        self._items: dict[int, list[str]] = {}
        self._image_of: dict[str, int] = {}
        for c in classes:
            keep = []
            for image_id, anns in self.index.by_class[c].items():
                file_name, h, w = self.index.images[image_id]
                counted = [a for a in anns if not (a[1] and crowd == "ignore")]
                if counted and sum(a[2] for a in counted) >= self.min_foreground * h * w:
                    stem = Path(file_name).stem
                    keep.append(stem)
                    self._image_of[stem] = image_id
            if keep:
                self._items[c] = sorted(keep)
        self._sets = {c: set(v) for c, v in self._items.items()}
        self.class_names = {c: self.index.names[c] for c in self._items}
        self._cached: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    # --- masks --------------------------------------------------------------------------------------------
    def _check(self, key: Hashable, class_id: int) -> int:
        if class_id not in self._items:
            raise DataError(f"class {class_id} is not in the {self.split} split (fold {self.fold}) of {self.root}")
        if key not in self._sets[class_id]:
            raise DataError(f"image {key!r} has no {self.class_names[class_id]!r} instance in "
                            f"{self.annotation_file}")
        return self._image_of[key]

    def holds_class(self, key: Hashable, own_class: int, class_id: int) -> bool:
        """Whether image ``key`` has any annotation of ``class_id``, crowd regions included (support negatives
        are images without one; :class:`fewseg.data.sampler.EpisodeSampler`)."""
        return self._image_of[key] in self.index.by_class.get(class_id, {})

    def labels(self, key: Hashable, class_id: int) -> np.ndarray:
        """uint8 [H,W] at the image's own size: 1 = the class (all instances merged), 255 = ignore, 0 = rest."""
        image_id = self._check(key, class_id)
        _, h, w = self.index.images[image_id]
        fg, ignore = np.zeros((h, w), dtype=bool), np.zeros((h, w), dtype=bool)
        for seg, crowd, _ in self.index.by_class[class_id][image_id]:
            try:
                m = segmentation_mask(seg, h, w, self.decoder)
            except (ValueError, TypeError, KeyError) as exc:
                raise DataError(f"annotation file {self.annotation_file}: a {self.class_names[class_id]!r} "
                                f"segmentation of image {key!r} cannot be decoded: {exc}") from None
            if crowd and self.crowd == "ignore":
                ignore |= m
            else:
                fg |= m
        out = fg.astype(np.uint8)
        out[ignore & ~fg] = IGNORE
        return out

    def _arrays(self, key: str, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        if (key, class_id) in self._cached:
            return self._cached[key, class_id]
        labels = self.labels(key, class_id)
        file_name, h, w = self.index.images[self._image_of[key]]
        path = self.folder / file_name
        image = read_image(path)
        if image.shape[:2] != (h, w):
            raise DataError(f"image {path} is {image.shape[1]}x{image.shape[0]} but {self.annotation_file} "
                            f"says {w}x{h}")
        out = resize_arrays(image, labels, self.image_size, self.resize, fill_label=IGNORE)
        if self.cache:
            self._cached[key, class_id] = out
        return out

    # --- the dataset contract -------------------------------------------------------------------------
    def items(self, class_id: int) -> Sequence[Hashable]:
        """File stems of the images with an instance of ``class_id``."""
        if class_id not in self._items:
            raise DataError(f"class {class_id} is not in the {self.split} split (fold {self.fold}) of {self.root}")
        return list(self._items[class_id])

    def load(self, key: Hashable, class_id: int) -> Sample:
        """Image ``key`` with the merged mask of ``class_id`` (ignore: crowd regions with ``crowd="ignore"``
        and the padding of ``resize="pad"``), at ``image_size``."""
        im, lab = self._arrays(key, class_id)
        image = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div_(255.0)  # [3,S,S]
        lab_t = torch.from_numpy(lab)                                                               # [S,S]
        return Sample(image.contiguous(), (lab_t == 1).to(torch.float32)[None], (lab_t == IGNORE)[None])

    def full_resolution(self, key: Hashable, class_id: int):
        """(mask [1,1,H,W] float, ignore [1,1,H,W] bool, box) at the image's own size (see ``content_box``);
        None when ``resize="crop"``."""
        labels = self.labels(key, class_id)
        box = content_box(labels.shape[0], labels.shape[1], self.image_size, self.resize)
        if box is None:
            return None
        return (torch.from_numpy(labels == 1)[None, None].to(torch.float32),
                torch.from_numpy(labels == IGNORE)[None, None], box)

    def describe(self) -> dict:
        d = super().describe()
        d.update(root=str(self.root), split=self.split, fold=self.fold, n_folds=self.n_folds,
                 test_classes=[self.index.names[c] for c in self.folds[self.fold]], image_set=self.image_set,
                 annotations=str(self.annotation_file), val_classes=self.val_classes,
                 min_foreground=self.min_foreground, crowd=self.crowd, resize=self.resize, seed=self.seed,
                 category_ids={c: self.index.category_ids[c] for c in self.class_ids()},
                 n_images=len(self._image_of))
        return d


DATASETS.register("coco20i")(Coco20iDataset)
