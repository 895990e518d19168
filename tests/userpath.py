"""Helpers of the user-path tests (segmenter, predict, export, serve): a tiny run and labelled folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import SMALL_TUNING
from PIL import Image

from fewseg.config import config_from_dict
from fewseg.engine.trainer import Trainer

# the shape of examples/adapt_folder.sh: unet depth 2 width 4, 2 iterations, 24x24 images
TINY_UNET = {
    "seed": 0,
    "data": {"name": "synthetic", "image_size": 24},
    "model": {"name": "unet", "options": {"depth": 2, "width": 4}},
    "algorithm": {"name": "maml", "inner_steps": 2, "inner_lr": 0.1},
    "train": {"iterations": 2, "meta_batch": 2, "shots": 2, "queries": 2, "val_every": 2, "val_episodes": 2,
              "checkpoint_every": 2},
    "eval": {**SMALL_TUNING, "episodes": 2, "shots": [1], "long_steps": 2, "transfer_images": 8,
             "lr_select_episodes": 1},
}


def tiny_run(out: Path, *overrides: str) -> Path:
    Trainer(config_from_dict(TINY_UNET, [f"output={out}", *overrides]), progress=False).fit()
    return out



def labelled(rng, h: int, w: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy photo with a bright square and its 0/255 mask."""
    img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    top, left = h // 4, w // 4 + shift
    mask[top:top + h // 2, left:left + w // 2] = 255
    img[mask > 0] = (230, 200, 40)
    return img, mask


def write_support(folder: Path, n: int = 3, size=(30, 40), seed: int = 0) -> Path:
    """``<stem>.jpg`` + ``<stem>.png`` pairs (image + 0/255 mask)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = labelled(rng, size[0] + 2 * i, size[1] + 3 * i, shift=i)
        Image.fromarray(img).save(folder / f"s{i}.jpg", quality=95)
        Image.fromarray(mask).save(folder / f"s{i}.png")
    return folder


def write_images(folder: Path, sizes=((20, 30), (41, 37)), seed: int = 1, masks: Path | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        img, mask = labelled(rng, h, w)
        paths.append(folder / f"q{i}.png")
        Image.fromarray(img).save(paths[-1])
        if masks is not None:
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(masks / f"q{i}.png")
    return paths
