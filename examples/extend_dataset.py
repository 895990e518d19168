"""A new dataset source: photos with one NumPy label map each (``<stem>.png`` + ``<stem>.npy``), classes in JSON.

    python examples/extend_dataset.py          # a few seconds on one CPU core; writes only to a temporary folder

A source only lists (image, mask, class) records and loads one image with the binary mask of one class: it
subclasses ``fewseg.SegmentationDataset``, fills ``class_names`` with the classes of its split, implements
``items(class_id)`` and ``load(key, class_id)``, and registers a factory that takes ``root``, ``split``, ``seed`` and
``image_size``. Episodes, meta-batches and training come from fewseg. The script writes a tiny folder in that
layout, lists its records, samples episodes with ``fewseg.EpisodeSampler``, meta-trains two iterations with the
Python API, then two with the trainer from a config that names the source (``data.name``), and shows the one-line
error for a class with too few images.
"""
import json
import tempfile
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fewseg
from fewseg.data.io import read_image
from fewseg.data.transforms import resize_pair
from fewseg.errors import DataError
from fewseg.registry import DATASETS

IGNORE = 255  # label value excluded from loss and metrics


@DATASETS.register("npy-labelmaps")
class NpyLabelMaps(fewseg.SegmentationDataset):
    """ROOT/<stem>.png photos, ROOT/<stem>.npy integer label maps of the same size (0 background, 255 ignore) and
    ROOT/classes.json: {"train"|"val"|"test": {"<id>": "<name>"}}; the splits hold disjoint classes."""

    name = "npy-labelmaps"

    def __init__(self, root, split: str = "train", image_size: int = 64, seed: int = 0, resize: str = "stretch"):
        self.root, self.split, self.image_size, self.resize = Path(root), split, int(image_size), resize
        splits = json.loads((self.root / "classes.json").read_text())
        if split not in splits:
            raise DataError(f"split must be one of {', '.join(splits)}, got {split!r}")
        self.class_names = {int(c): name for c, name in splits[split].items()}  # this split's classes only
        self._items: dict[int, list[str]] = {c: [] for c in self.class_names}
        for labels in sorted(self.root.glob("*.npy")):                # one scan: which image shows which class
            for c in np.unique(np.load(labels)).tolist():
                if c in self._items:
                    self._items[c].append(labels.stem)

    def items(self, class_id: int) -> list[Hashable]:
        return list(self._items[class_id])

    def load(self, key: Hashable, class_id: int) -> fewseg.Sample:
        image = read_image(self.root / f"{key}.png")                  # uint8 [H,W,3]
        labels = np.load(self.root / f"{key}.npy")                    # int [H,W]
        x, lab = resize_pair(image, labels, self.image_size, self.resize)  # [3,S,S] in [0,1], int64 [S,S]
        return fewseg.Sample(x, (lab == class_id).float()[None], (lab == IGNORE)[None])

    def records(self) -> list[fewseg.Record]:
        return [fewseg.Record(k, c, str(self.root / f"{k}.png"), str(self.root / f"{k}.npy"))
                for c in self.class_ids() for k in self.items(c)]


def write_folder(root: Path, images: int = 24, seed: int = 0) -> None:
    """``images`` photos of different sizes, each with two shapes of two of six classes (1 px ignore outline)."""
    rng = np.random.default_rng(seed)
    classes = {"train": {"1": "square", "2": "disc", "3": "cross", "4": "ring"}, "val": {"5": "bar"},
               "test": {"6": "diamond"}}
    (root / "classes.json").write_text(json.dumps(classes))
    for i in range(images):
        h, w = rng.integers(28, 44, size=2)
        yy, xx = np.mgrid[:h, :w]
        photo = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
        labels = np.zeros((h, w), np.uint8)
        for c in rng.choice(np.arange(1, 7), size=2, replace=False):
            cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(4, 8)
            dy, dx = np.abs(yy - cy), np.abs(xx - cx)
            shape = {1: np.maximum(dy, dx) <= r, 2: dy**2 + dx**2 <= r**2, 3: np.minimum(dy, dx) <= 1,
                     4: np.abs(np.hypot(dy, dx) - r) <= 1.5, 5: dy <= 1, 6: dy + dx <= r}[int(c)]
            shape &= (dy <= r) & (dx <= r)
            outline = np.zeros_like(shape)
            outline[1:-1, 1:-1] = shape[1:-1, 1:-1] & ~(shape[:-2, 1:-1] & shape[2:, 1:-1]
                                                        & shape[1:-1, :-2] & shape[1:-1, 2:])
            labels[shape], labels[outline] = c, IGNORE
            photo[shape] = (40 * int(c), 255 - 30 * int(c), 120)               # a colour per class
        Image.fromarray(photo).save(root / f"{i:03d}.png")
        np.save(root / f"{i:03d}.npy", labels)


with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "shapes"
    root.mkdir()
    write_folder(root)

    train_set = fewseg.create_dataset("npy-labelmaps", root=root, split="train", image_size=24)
    first, *_ = records = train_set.records()
    print(f"{len(records)} train records over classes {train_set.class_names}; first: key {first.key!r}, "
          f"class {first.class_id}, files {Path(first.image_path).name} + {Path(first.mask_path).name}")

    torch.manual_seed(0)
    sampler = fewseg.EpisodeSampler(train_set, shots=2, queries=2, seed=0)
    ep = sampler.sample()
    print(f"episode of class {ep.class_id}: support {tuple(ep.support_x.shape)}, query {tuple(ep.query_x.shape)}, "
          f"ignored pixels {int(ep.support_ignore.sum())}")

    algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=8), inner_steps=2, inner_lr=0.1)
    optimizer = torch.optim.Adam(algo.parameters(), lr=1e-3)
    for i in range(2):
        optimizer.zero_grad()
        logs = algo.meta_backward(sampler.meta_batch(2), iteration=i)
        optimizer.step()
        print(f"iteration {i}: meta-loss {logs['loss']:.4f}")

    from fewseg.config import load_config
    from fewseg.engine.trainer import Trainer
    cfg = load_config("synthetic_maml", [
        "data.name=npy-labelmaps", f"data.root={root}", "data.image_size=24", "model.name=seed-cnn",
        "model.options={width: 8}", "algorithm.inner_steps=1", "train.iterations=2", "train.meta_batch=2",
        "train.shots=2", "train.queries=2", "train.val_episodes=2", "eval.tune=false", f"output={Path(tmp) / 'run'}"])
    result = Trainer(cfg, progress=False).fit()
    saved = json.loads((Path(result["output"]) / "data.json").read_text())
    print(f"trainer: {result['iteration']} iterations on {saved['train']['name']}, "
          f"val classes {saved['val']['classes']}, best val mIoU {result['best_val_miou']:.4f}")

    few = fewseg.create_dataset("npy-labelmaps", root=root, split="test", image_size=24)
    try:
        fewseg.EpisodeSampler(few, shots=20, queries=20)
    except DataError as exc:
        print(f"refused: {exc}")
    else:
        raise SystemExit("a class with too few images was sampled")
