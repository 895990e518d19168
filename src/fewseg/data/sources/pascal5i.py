r"""PASCAL-5i, the few-shot segmentation benchmark on PASCAL VOC 2012 + SBD, in HSNet's convention.

Reference: juhongm999/hsnet, ``data/pascal.py`` (``build_class_ids``: ``class_ids_val = [fold * 5 + i for i in
range(5)]`` over the 0-based VOC classes; masks ``VOC2012/SegmentationClassAug/<name>.png`` whose value
``class + 1`` is the class and 255 the boundary, which HSNet returns as ``ignore_idx``; image lists
``data/splits/pascal/{trn,val}/fold{f}.txt`` of ``<name>__<class id, 1-based>`` lines; training reads the ``trn``
lists of the three other folds, testing the ``val`` list of its own fold).

Layout (``root`` is the ``VOC2012`` folder, or a folder holding ``VOC2012/`` as HSNet's ``Datasets_HSN``)::

    ROOT/JPEGImages/<name>.jpg               the photos
    ROOT/SegmentationClassAug/<name>.png     SBD-augmented masks: index (or palette) PNG, 0 background,
                                             1..20 the VOC classes, 255 boundary (ignored)
    ROOT/splits/{trn,val}/fold{0..3}.txt     optional: HSNet's lists (also ROOT/splits/pascal/..., or split_dir=)
    ROOT/ImageSets/Segmentation/val.txt      without the lists: the VOC val images (the evaluation images)

Folds: 4; fold ``i`` tests the VOC classes ``5i+1 .. 5i+5`` (1-based ids, as in the masks): 0 = aeroplane, bicycle,
bird, boat, bottle; 1 = bus, car, cat, chair, cow; 2 = diningtable, dog, horse, motorbike, person; 3 =
pottedplant, sheep, sofa, train, tvmonitor. A task is "class c vs the rest": mask = (pixel == c), 255 = ignore,
every other class is background (also a test class inside a training image, as in HSNet).

Image lists. With HSNet's list files they are used as they are (train: ``trn/fold{j}.txt`` for the three
``j != fold``; test: ``val/fold{fold}.txt``). Without them they are built by scanning the masks once (cached like
:mod:`~fewseg.data.sources.labelmap`): an image is listed for class c when its mask holds *any* pixel of c
(``min_foreground`` sets a minimum fraction); training images are the masks not in VOC's
``ImageSets/Segmentation/val.txt`` (SBD "trainaug"), test images those in it. HSNet's lists were made with a
minimum object size, so scanned lists hold somewhat more (small-object) images than HSNet's.

Splits: ``test`` = the fold's 5 classes on the VOC val images (HSNet's "val"); ``train`` = the other 15 on the
training images (HSNet's "trn"). fewseg chooses settings on a ``val`` split: by default (``val_classes=None``)
three of the 15 classes are held out of ``train`` for it, the first class of each other fold (fold 0: bus,
diningtable, pottedplant), on the training images; test classes never enter train or val. ``val_classes=[ids or
names]`` holds out others; ``val_classes="images"`` trains on all 15 classes exactly as HSNet and validates on
the VOC val images of those 15 classes (the test images, with training-class masks only). ``all`` = all 20
classes on the evaluation images (for cross-dataset testing).

Test episodes: HSNet scores 1,000 episodes per fold with one query each and a fixed seed (``test.py``:
``utils.fix_randseed(0)``, ``__len__`` = 1000). fewseg's EpisodeSampler draws its own fixed, seeded episodes
balanced over the classes: ``fewseg evaluate --checkpoint RUN --shots 1 5 --episodes 1000 --queries 1`` gives
1,000 one-query episodes per shot count (HSNet walks its list, so its classes follow their image counts).

Example (the fold classes; a dataset needs the files, see ``tests/test_pascal_coco.py``):
    >>> from fewseg.data.sources.pascal5i import pascal_fold_classes
    >>> pascal_fold_classes(1)
    {6: 'bus', 7: 'car', 8: 'cat', 9: 'chair', 10: 'cow'}
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path

from fewseg.data.base import Sample, SegmentationDataset
from fewseg.data.sources.labelmap import SPLITS, LabelMapDataset
from fewseg.data.sources.labelmap_scan import files_by_stem, label_fractions, read_small_text
from fewseg.data.transforms import RESIZE_MODES
from fewseg.errors import DataError
from fewseg.registry import DATASETS

N_FOLDS = 4
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_NAMES = {i + 1: n for i, n in enumerate(VOC_CLASSES)}  # 1-based ids, the mask values


# --- folds and class splits (shared with coco20i) ---------------------------------------------------
def hsnet_folds(n_classes: int, interleaved: bool) -> list[list[int]]:
    """The 4 test-class lists (1-based ids) of HSNet: contiguous blocks (PASCAL) or every 4th class (COCO).

        >>> from fewseg.data.sources.pascal5i import hsnet_folds
        >>> hsnet_folds(8, interleaved=False), hsnet_folds(8, interleaved=True)
        ([[1, 2], [3, 4], [5, 6], [7, 8]], [[1, 5], [2, 6], [3, 7], [4, 8]])
    """
    per = n_classes // N_FOLDS
    if interleaved:
        return [[f + N_FOLDS * v + 1 for v in range(per)] for f in range(N_FOLDS)]
    return [[f * per + i + 1 for i in range(per)] for f in range(N_FOLDS)]


def pascal_fold_classes(fold: int) -> dict[int, str]:
    """{VOC class id: name} of the 5 test classes of PASCAL-5i fold ``fold``."""
    return {c: VOC_NAMES[c] for c in hsnet_folds(len(VOC_CLASSES), interleaved=False)[fold]}


def check_fold(fold, n_folds: int) -> int:
    """``fold`` as an int in [0, 4) (HSNet's 4 folds), else a ValueError."""
    if isinstance(fold, str) and fold.isdigit():
        fold = int(fold)
    if int(n_folds) != N_FOLDS:
        raise ValueError(f"n_folds must be {N_FOLDS} (the benchmark's folds), got {n_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < N_FOLDS:
        raise ValueError(f"fold must be an integer in [0, {N_FOLDS}), got {fold!r}")
    return fold


def benchmark_split(folds: list[list[int]], fold: int, split: str, val_classes, names: dict[int, str],
                    ) -> tuple[list[int], str]:
    """(class ids of ``split``, image set "trn" or "val") under the rules of the module docstrings.

    ``val_classes``: None (the first class of each other fold), "images" (val = the training classes on the
    evaluation images), or a list of non-test class ids or names.
    """
    image_set = image_set_of(split, val_classes)
    everything = sorted(names)
    if split == "all":
        return everything, image_set
    test = list(folds[fold])
    if split == "test":
        return test, image_set
    rest = [c for c in everything if c not in test]
    if isinstance(val_classes, str) and val_classes == "images":
        return rest, image_set
    if val_classes is None:
        val = [folds[j][0] for j in range(len(folds)) if j != fold]
    elif isinstance(val_classes, (str, int)):
        raise ValueError(f"val_classes must be null, 'images' or a list of class ids or names, got {val_classes!r}")
    else:
        by_name = {n: c for c, n in names.items()}
        val = []
        for v in val_classes:
            c = by_name.get(v) if isinstance(v, str) and not v.isdigit() else int(v)
            if c is None or c not in rest:
                raise ValueError(f"val_classes: {v!r} is not a training class of fold {fold} "
                                 f"(test classes: {', '.join(names[t] for t in test)})")
            val.append(c)
    if split == "val":
        return sorted(set(val)), image_set
    return [c for c in rest if c not in val], image_set


def image_set_of(split: str, val_classes) -> str:
    """Which images a split reads: "trn" (training images) or "val" (the evaluation images)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split in ("test", "all") or (split == "val" and isinstance(val_classes, str) and val_classes == "images"):
        return "val"
    return "trn"


def find_root(root: str | os.PathLike | None, subdir: str, marker: str, what: str) -> Path:
    """``root`` itself, or ``root/subdir`` (HSNet's dataset folder), whichever holds ``marker``."""
    if root is None:
        raise DataError(f"dataset {what!r} needs root=<folder with {marker}/> (data.root)")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder")
    if not (root / marker).is_dir() and (root / subdir / marker).is_dir():
        return root / subdir
    return root


# --- the dataset ------------------------------------------------------------------------------------
def _read_list(path: Path) -> list[tuple[str, int]]:
    """[(image name, VOC class id)] of an HSNet list file of ``<name>__<id>`` lines."""
    if not path.is_file():
        raise DataError(f"image list {path} does not exist")
    out = []
    for n, line in enumerate(read_small_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        name, sep, cid = line.rpartition("__")
        if not sep or not name or not cid.isdigit() or int(cid) not in VOC_NAMES:
            raise DataError(f"{path} line {n}: expected '<image name>__<class id 1..20>', got {line!r}")
        out.append((name, int(cid)))
    return out


class Pascal5iDataset(LabelMapDataset):
    """PASCAL-5i (HSNet's folds and lists): binary tasks "VOC class c vs the rest" of SBD-augmented masks.

    Options: ``fold`` (0-3), ``val_classes`` (None, "images" or a list; see the module docstring), ``split_dir``
    (a folder with HSNet's ``trn/`` and ``val/`` lists; default: ``ROOT/splits`` or ``ROOT/splits/pascal`` when
    present, else the lists are scanned), ``min_foreground`` (0: any pixel), ``resize`` ("pad"), ``cache``.
    Loading, resizing and full-resolution scoring are those of :class:`LabelMapDataset`.
    """

    name = "pascal5i"

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", fold: int | str = 0,
                 n_folds: int = N_FOLDS, image_size: int = 64, resize: str = "pad", seed: int = 0,
                 val_classes: str | Sequence[int | str] | None = None, split_dir: str | os.PathLike | None = None,
                 min_foreground: float = 0.0, cache: bool = False):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.fold, self.n_folds = check_fold(fold, n_folds), N_FOLDS
        self.folds = hsnet_folds(len(VOC_CLASSES), interleaved=False)
        classes, self.image_set = benchmark_split(self.folds, self.fold, split, val_classes, VOC_NAMES)
        self.root = find_root(root, "VOC2012", "JPEGImages", self.name)
        self.split, self.seed, self.image_size, self.resize = split, seed, int(image_size), resize
        self.cache, self.min_foreground, self.val_classes = bool(cache), float(min_foreground), val_classes
        self.listed = dict(VOC_NAMES)
        self.image_split = None
        self._image_paths = files_by_stem(self.root / "JPEGImages", (".jpg", ".jpeg"))
        self._label_paths = files_by_stem(self.root / "SegmentationClassAug", (".png",))
        lists = self._list_dir(split_dir)
        self.source = str(lists) if lists is not None else "scanned masks"
        if lists is not None:
            pairs = self._listed_pairs(lists, classes)
        else:
            pairs = self._scanned_pairs(classes)
        if self.min_foreground > 0:
            fractions = label_fractions(self.root / "SegmentationClassAug")
            pairs = [(s, c) for s, c in pairs if fractions.get(s, {}).get(c, 0.0) >= self.min_foreground]
        items: dict[int, set[str]] = {}
        for stem, c in pairs:
            items.setdefault(c, set()).add(stem)
        self._items = {c: sorted(items[c]) for c in classes if items.get(c)}
        self.class_names = {c: VOC_NAMES[c] for c in self._items}
        self._stems = {s for stems in self._items.values() for s in stems}
        self._cached = {}

    # --- the image lists ------------------------------------------------------------------------------
    def _list_dir(self, split_dir) -> Path | None:
        if split_dir is not None:
            folder = Path(split_dir)
            if not (folder / "trn").is_dir() or not (folder / "val").is_dir():
                raise DataError(f"split_dir {folder} must hold HSNet's trn/ and val/ folders of fold<k>.txt lists")
            return folder
        for folder in (self.root / "splits" / "pascal", self.root / "splits"):
            if (folder / "trn").is_dir() and (folder / "val").is_dir():
                return folder
        return None

    def _listed_pairs(self, folder: Path, classes: list[int]) -> list[tuple[str, int]]:
        wanted = set(classes)
        folds = [j for j in range(N_FOLDS) if any(c in wanted for c in self.folds[j])]
        pairs = []
        for j in folds:
            path = folder / self.image_set / f"fold{j}.txt"
            for name, c in _read_list(path):
                if c not in wanted:
                    continue
                if name not in self._image_paths:
                    raise DataError(f"{path} names {name!r} but {self.root / 'JPEGImages' / (name + '.jpg')} "
                                    f"does not exist")
                if name not in self._label_paths:
                    raise DataError(f"{path} names {name!r} but "
                                    f"{self.root / 'SegmentationClassAug' / (name + '.png')} does not exist")
                pairs.append((name, c))
        return pairs

    def _scanned_pairs(self, classes: list[int]) -> list[tuple[str, int]]:
        val_list = self.root / "ImageSets" / "Segmentation" / "val.txt"
        if not val_list.is_file():
            raise DataError(f"{val_list} does not exist: it (or HSNet's splits/trn, splits/val lists) "
                            f"tells the evaluation images from the training images")
        val_names = {s.strip() for s in read_small_text(val_list).splitlines() if s.strip()}
        missing = sorted(val_names - set(self._label_paths))
        if missing:
            raise DataError(f"{val_list} names {missing[0]!r} but "
                            f"{self.root / 'SegmentationClassAug' / (missing[0] + '.png')} does not exist")
        orphans = sorted(set(self._label_paths) - set(self._image_paths))
        if orphans:
            warnings.warn(f"{self.root}: {len(orphans)} mask(s) without a JPEG are skipped "
                          f"(e.g. {orphans[0]})", stacklevel=3)
        stems = sorted(set(self._label_paths) & set(self._image_paths))
        pool = [s for s in stems if (s in val_names) == (self.image_set == "val")]
        fractions = label_fractions(self.root / "SegmentationClassAug")
        wanted = set(classes)
        return [(s, c) for s in pool for c in fractions.get(s, {}) if c in wanted]

    # --- the dataset contract (items, _arrays and full_resolution: LabelMapDataset's) ------------------------
    def load(self, key: Hashable, class_id: int) -> Sample:
        """Image ``key`` with mask = (pixel == class_id), ignore = (pixel == 255), at ``image_size``."""
        if class_id not in VOC_NAMES:
            raise DataError(f"class {class_id} is not a VOC class id (1..20)")
        return super().load(key, class_id)

    def describe(self) -> dict:
        d = SegmentationDataset.describe(self)
        d.update(root=str(self.root), split=self.split, fold=self.fold, n_folds=self.n_folds,
                 test_classes=[VOC_NAMES[c] for c in self.folds[self.fold]], image_set=self.image_set,
                 val_classes=self.val_classes, lists=self.source, min_foreground=self.min_foreground,
                 resize=self.resize, seed=self.seed, n_images=len(self._stems))
        return d


DATASETS.register("pascal5i")(Pascal5iDataset)
