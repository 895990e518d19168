"""Class-folder datasets in the FSS-1000 layout: ``ROOT/<class>/<n>.jpg`` with mask ``ROOT/<class>/<n>.png``.

Construction only lists folders; masks are decoded the first time a class's ``items()`` is asked for
(to drop empty masks) and images in ``load()``.

Example (a tiny class folder made on the spot; a real root is e.g. ``data/fss``):
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from fewseg.data.sources.folder import FolderDataset
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat", "dog"):
    ...     os.mkdir(os.path.join(root, name))
    ...     Image.new("RGB", (12, 8)).save(os.path.join(root, name, "1.jpg"))
    ...     Image.new("L", (12, 8), 255).save(os.path.join(root, name, "1.png"))  # mask: all foreground
    >>> ds = FolderDataset(root, split="all", image_size=16, seed=0)
    >>> c = ds.class_ids()[0]
    >>> ds.class_names, ds.items(c)
    ({0: 'cat', 1: 'dog'}, ['cat/1.jpg'])
    >>> s = ds.load(ds.items(c)[0], c)   # image [3,16,16] float32 in [0,1], mask [1,16,16], ignore [1,16,16]
    >>> tuple(s.image.shape), tuple(s.mask.shape), tuple(s.ignore.shape)
    ((3, 16, 16), (1, 16, 16), (1, 16, 16))

A downloaded FSS-1000 loads with ``create_dataset("fss1000", root="data/FSS-1000", split="test")``, in the
520/240/240 class split of HSNet (:class:`FSS1000Dataset`).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from fewseg.data.base import Sample, SegmentationDataset
from fewseg.data.io import IMAGE_EXTS, read_binary_mask, read_image
from fewseg.data.pairing import check_pair, pair_images
from fewseg.data.patches import PatchSource
from fewseg.data.transforms import RESIZE_MODES, content_box, resize_pair
from fewseg.errors import DataError
from fewseg.registry import DATASETS

SPLITS = ("train", "val", "test", "all")
SPLIT_FILES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(map(str, names[:n])) + (f" ... (+{len(names) - n})" if len(names) > n else "")


def _read_names(path: Path | str, text: str | None = None) -> list[str]:
    if text is None:
        try:
            if Path(path).stat().st_size > 50_000_000:
                raise DataError(f"split file {path} is larger than 50 MB: not a list of class names")
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"split file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class FolderDataset(PatchSource, SegmentationDataset):
    """Binary masks in one folder per class; class ids are indices in the sorted folder names of ``root``.

    Classes of a split come from ``classes`` (explicit names, split ignored), else ``split_files`` (a folder
    with ``trn.txt``/``val.txt``/``test.txt``), else a seeded random split of the sorted names into disjoint
    train/val/test by ``val_fraction``/``test_fraction``. ``split="all"`` takes every class.

    Images whose mask is missing are skipped with a warning; masks with no foreground (or less than
    ``min_foreground`` of the pixels) are left out of ``items()`` with a warning.

    ``patch``, ``patches_per_image``, ``separate_sources``, ``query_patches``: episodes of random crops of the
    images at their own resolution (:mod:`fewseg.data.patches`).

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> from fewseg.data.sources.folder import FolderDataset
        >>> root = tempfile.mkdtemp()   # five class folders of one 12x8 image and its mask each
        >>> for name in ("ant", "bee", "cat", "dog", "eel"):
        ...     os.mkdir(os.path.join(root, name))
        ...     Image.new("RGB", (12, 8)).save(os.path.join(root, name, "1.jpg"))
        ...     Image.new("L", (12, 8), 255).save(os.path.join(root, name, "1.png"))
        >>> ds = FolderDataset(root, split="val", image_size=16, resize="pad")
        >>> ds.describe()["classes"]    # {id: name} of the val classes (a seeded random split)
        {4: 'eel'}
        >>> int(ds.load("eel/1.jpg", 4).ignore.sum())   # the padding above and below the photo is ignored
        80
    """

    name = "folder"

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 64,
                 resize: str = "stretch", seed: int = 0, classes: Sequence[str] | None = None,
                 split_files: str | os.PathLike | None = None, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, min_foreground: float = 0.0, patch: int | None = None,
                 patches_per_image: int = 1, separate_sources: bool | None = None, query_patches: str = "foreground"):
        self.init_patches(patch, patches_per_image, separate_sources, query_patches)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be in [0,1) with a sum < 1, got "
                             f"{val_fraction} and {test_fraction}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} is not a folder")
        self.split, self.image_size, self.resize, self.seed = split, int(image_size), resize, seed
        self.min_foreground = float(min_foreground)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        try:
            entries = list(self.root.iterdir())
        except OSError as exc:
            raise DataError(f"cannot list dataset root {self.root}: {exc.strerror or exc}") from None
        all_names = sorted(p.name for p in entries if p.is_dir() and not p.name.startswith("."))
        if not all_names:
            raise DataError(f"dataset root {self.root} holds no class folders")
        self.all_class_names = all_names
        names = self._select(all_names, classes, split_files)
        index = {n: i for i, n in enumerate(all_names)}
        self.class_names = {index[n]: n for n in sorted(names)}
        self._pairs: dict[int, list[tuple[Path, Path]]] = {}
        self._paths: dict[str, tuple[int, Path, Path]] = {}
        for c, name in self.class_names.items():
            self._pairs[c] = self._scan_class(name)
            for img, mask in self._pairs[c]:
                self._paths[f"{name}/{img.name}"] = (c, img, mask)
        self._items: dict[int, list[str]] = {}

    # --- which classes --------------------------------------------------------------------------------
    def _split_names(self, split_files: str | os.PathLike | None) -> dict[str, list[str]] | None:
        """{"train"|"val"|"test": class names} from ``split_files``, or None for a random split."""
        if split_files is None:
            return None
        folder = Path(split_files)
        out = {}
        for split, fname in SPLIT_FILES.items():
            if not (folder / fname).is_file():
                raise DataError(f"split file {folder / fname} does not exist")
            out[split] = _read_names(folder / fname)
        return out

    def _select(self, all_names: list[str], classes, split_files) -> list[str]:
        present = set(all_names)
        if classes is not None:
            wanted = [str(c) for c in classes]
        else:
            by_split = self._split_names(split_files)
            if by_split is None:
                wanted = self._random_split(all_names)
            elif self.split == "all":
                wanted = sorted({n for names in by_split.values() for n in names})
            else:
                wanted = by_split[self.split]
        missing = [n for n in wanted if n not in present]
        if missing:
            raise DataError(f"{len(missing)} of {len(wanted)} {self.split} class(es) have no folder under "
                            f"{self.root}: {_few(missing)}")
        if not wanted:
            raise DataError(f"no {self.split} classes in {self.root}")
        return wanted

    def _random_split(self, names: list[str]) -> list[str]:
        if self.split == "all":
            return list(names)
        n = len(names)
        n_test = round(n * self.test_fraction)
        n_val = round(n * self.val_fraction)
        if n >= 3:  # every non-zero fraction gets at least one class while train keeps one
            n_test = max(n_test, 1 if self.test_fraction > 0 else 0)
            n_val = max(n_val, 1 if self.val_fraction > 0 else 0)
        if n - n_test - n_val < 1:
            raise DataError(f"{self.root} has {n} class folder(s): too few to split into train/val/test "
                            f"(fractions {self.val_fraction}/{self.test_fraction}); "
                            f"pass split='all' or classes=")
        perm = np.random.default_rng(self.seed).permutation(n)
        parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        return [names[i] for i in sorted(parts[self.split])]

    # --- files ----------------------------------------------------------------------------------------
    def _scan_class(self, name: str) -> list[tuple[Path, Path]]:
        """[(image, mask)] of one class folder (:func:`fewseg.data.pairing.pair_images`)."""
        folder = self.root / name
        pairs = pair_images(folder, what="class folder")
        if not pairs:
            any_file = any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())
            raise DataError(f"class folder {folder} is empty (no images)" if not any_file else
                            f"class folder {folder} holds no images ({', '.join(IMAGE_EXTS)})")
        with_mask = [p for p in pairs if p[1] is not None]
        if not with_mask:
            raise DataError(f"class folder {folder} has images but no masks (expected <name>.png beside "
                            f"each <name>.jpg)")
        orphans = [img.name for img, mask in pairs if mask is None]
        if orphans:
            warnings.warn(f"class folder {folder}: skipping {len(orphans)} image(s) without a mask: "
                          f"{_few(orphans)}", stacklevel=3)
        return with_mask

    def _fraction(self, mask_path: Path) -> float:
        fg, _ = read_binary_mask(mask_path)
        return float(fg.mean()) if fg.size else 0.0

    def items(self, class_id: int) -> Sequence[Hashable]:
        """Keys ``"<class>/<file>"`` of images whose mask covers >= ``min_foreground`` (> 0); decoded once."""
        if class_id not in self.class_names:
            raise DataError(f"class {class_id} is not in the {self.split} split of {self.root}")
        if class_id not in self._items:
            name = self.class_names[class_id]
            keep, empty = [], []
            for img, mask in self._pairs[class_id]:
                frac = self._fraction(mask)
                (keep if frac > 0 and frac >= self.min_foreground else empty).append(img.name)
            if empty:
                what = "no foreground" if self.min_foreground <= 0 else f"foreground < {self.min_foreground}"
                warnings.warn(f"class folder {self.root / name}: leaving out {len(empty)} image(s) whose "
                              f"mask has {what}: {_few(empty)}", stacklevel=2)
            self._items[class_id] = [f"{name}/{f}" for f in keep]
        return self.patch_keys(list(self._items[class_id]))

    def holds_class(self, key: Hashable, own_class: int, class_id: int) -> bool:
        """Whether image ``key`` shows ``class_id``: a class folder labels its images for its own class only, and
        they are taken to show no other (as in FSS-1000), so only ``own_class`` (support negatives of a class are
        other folders' images; :class:`fewseg.data.sampler.EpisodeSampler`)."""
        return int(class_id) == int(own_class)

    def _native_pair(self, key: Hashable, class_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Path]:
        """(image uint8 [H,W,3], fg bool [H,W], ignore bool [H,W], mask path) of item ``key``, checked."""
        if key not in self._paths or self._paths[key][0] != class_id:
            raise DataError(f"image {key!r} is not an item of class {class_id} in {self.root}")
        _, img_path, mask_path = self._paths[key]
        image = read_image(img_path)                         # uint8 [H,W,3]
        fg, ignore = read_binary_mask(mask_path)             # bool [H,W] x2
        check_pair(image, fg, f"image {img_path}", f"mask {mask_path}")
        return image, fg, ignore, mask_path

    def native(self, key: Hashable, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 [H,W,3] and labels uint8 [H,W] (1 = the class, 255 = ignore) at the image's own size."""
        image, fg, ignore, _ = self._native_pair(key, class_id)
        return image, np.where(ignore, 255, fg).astype(np.uint8)

    def load(self, key: Hashable, class_id: int) -> Sample:
        """The image ``key`` with its mask, resized to ``image_size`` (image [3,S,S], mask/ignore [1,S,S]); with
        ``patch``, a random crop of it (:meth:`load_patch`)."""
        if self.patch is not None:
            return self.load_patch(key, class_id)
        image, fg, ignore, _ = self._native_pair(key, class_id)
        labels = np.where(ignore, 255, fg).astype(np.uint8)  # [H,W] 0/1/255
        x, lab = resize_pair(image, labels, self.image_size, self.resize)
        return Sample(x, (lab == 1).to(torch.float32)[None], (lab == 255)[None])

    def full_resolution(self, key: Hashable, class_id: int):
        """(mask [1,1,H,W], ignore [1,1,H,W], box) at the mask file's own size (see ``content_box``);
        None when ``resize="crop"`` or with ``patch`` (patch episodes are scored at the network's size)."""
        if self.patch is not None:
            return None
        _, _, mask_path = self._paths[key]
        fg, ignore = read_binary_mask(mask_path)
        box = content_box(fg.shape[0], fg.shape[1], self.image_size, self.resize)
        if box is None:
            return None
        return (torch.from_numpy(fg).to(torch.float32)[None, None], torch.from_numpy(ignore)[None, None], box)

    def describe(self) -> dict:
        d = super().describe()
        d.update(root=str(self.root), split=self.split, resize=self.resize, seed=self.seed,
                 min_foreground=self.min_foreground, n_class_folders=len(self.all_class_names))
        if self.patch is not None:
            d.update(patch=self.patch, patches_per_image=self.patches_per_image,
                     separate_sources=self.separate_sources, query_patches=self.query_patches)
        return d


class FSS1000Dataset(FolderDataset):
    """FSS-1000 with the 520/240/240 class split of HSNet (shipped in ``fewseg/splits/fss1000_*.txt``).

    ``FSS1000Dataset("data/FSS-1000", split="test")`` takes the 240 test classes of a downloaded FSS-1000:

        >>> from importlib.resources import files
        >>> len((files("fewseg") / "splits" / "fss1000_test.txt").read_text().split())
        240
    """

    name = "fss1000"

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 64,
                 resize: str = "stretch", seed: int = 0, min_foreground: float = 0.0):
        super().__init__(root, split=split, image_size=image_size, resize=resize, seed=seed,
                         split_files="<fewseg/splits>", min_foreground=min_foreground)

    def _split_names(self, split_files) -> dict[str, list[str]]:
        pkg = resources.files("fewseg") / "splits"
        return {split: _read_names("", (pkg / f"fss1000_{f}").read_text())
                for split, f in SPLIT_FILES.items()}


DATASETS.register("folder")(FolderDataset)
DATASETS.register("fss1000")(FSS1000Dataset)
