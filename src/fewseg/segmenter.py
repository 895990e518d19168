"""The user's API: load a meta-trained checkpoint, adapt it to a new class from a few labelled images, predict.

``fewseg.load(checkpoint)`` -> :class:`Segmenter`; ``seg.adapt(images, masks)`` -> :class:`AdaptedSegmenter`;
``adapted.predict(images)`` -> one :class:`Prediction` per image, at that image's own size (the adapted model
and its results live in :mod:`fewseg.adapted` and are re-exported here). Images and masks
come in any form :mod:`fewseg.inputs` accepts (paths, PIL images, arrays, tensors; mixed sizes), prepared as in
meta-training (:mod:`fewseg.preprocess`). ``adapted.save(path)`` and ``fewseg.load_adapted(path)`` keep an
adapted model (safetensors + JSON, :mod:`fewseg.saved`), so a class is adapted once and used many times.

Large images at their own resolution (:mod:`fewseg.tiling`): ``tile=T`` (pixels of the original image) and
``overlap`` (a fraction of the tile below 1, default 0.25, or whole pixels from 1 up) on :func:`load`,
:meth:`Segmenter.adapt`, :func:`load_adapted` or :meth:`AdaptedSegmenter.predict`. ``adapt`` then learns from
T x T patches of the support images (those with foreground plus as many background ones, at most
``max_patches``) and ``predict`` segments T x T windows in batches, blending their overlaps; the adapted model
keeps the setting (and ``save`` records it). ``tile=None`` (the default) resizes each whole image to the
network's size as before; an image that fits in one tile is always predicted whole.

Example (a tiny untrained model; a real one is ``fewseg.load("runs/demo")``):
    >>> import numpy as np, tempfile, fewseg
    >>> seg = fewseg.Segmenter.untrained("unet", {"depth": 2, "width": 4}, image_size=16, steps=2)
    >>> rng = np.random.default_rng(0)
    >>> photos = [rng.integers(0, 255, (20, 30, 3), dtype=np.uint8) for _ in range(2)]   # any size, uint8
    >>> masks = [np.pad(np.ones((10, 10), np.uint8), ((5, 5), (10, 10))) for _ in range(2)]  # 0/1, 20x30
    >>> adapted = seg.adapt(photos, masks)
    >>> pred = adapted.predict(rng.random((40, 50, 3)))                 # float in [0, 1], 40x50
    >>> pred.mask.shape, pred.probabilities.dtype
    ((40, 50), dtype('float32'))
    >>> path = tempfile.mkdtemp() + "/my_class"
    >>> saved_at = adapted.save(path)                                   # weights.safetensors + meta.json
    >>> again = fewseg.load_adapted(path)
    >>> bool((again.predict(photos[0]).probabilities == adapted.predict(photos[0]).probabilities).all())
    True
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fewseg.algorithms  # noqa: F401  (registers the algorithms)
from fewseg.adapted import AdaptedSegmenter, Prediction, load_adapted, network_with  # noqa: F401  (the API's)
from fewseg.algorithms.test_time import adapt_with_plan
from fewseg.data.episode import check_unit_range
from fewseg.data.io import image_size
from fewseg.data.pairing import check_pair, check_positives
from fewseg.errors import DataError
from fewseg.inputs import as_image, as_list, as_mask, describe, is_path
from fewseg.loading import load_algorithm
from fewseg.models import input_channels
from fewseg.preprocess import Preprocessing
from fewseg.ready import is_ready_name, ready_parts
from fewseg.registry import ALGORITHMS, MODELS
from fewseg.tiling import (
    DEFAULT_MAX_PATCHES,
    INHERIT,
    Tiling,
    patch_flags,
    resolve,
    select_patches,
    support_patch,
)

MAX_SHOTS = 10  # the documented range of support images (the recipes meta-train 5-shot tasks)


class Segmenter:
    """A meta-trained model that adapts to a new class: :func:`load` makes one from a checkpoint."""

    def __init__(self, algorithm, preprocessing: Preprocessing, threshold: float = 0.5,
                 model_config: dict | None = None, source: str = "", device: str | torch.device = "cpu",
                 tile: int | None = INHERIT, overlap: float = INHERIT):
        self.algorithm = algorithm.eval()
        self.preprocessing, self.threshold = preprocessing, float(threshold)
        self.model_config = model_config or {}
        self.source, self.device = source, torch.device(device)
        # tile None (the default): whole images, resized to the network's input
        self.tiling: Tiling | None = resolve(None, tile, overlap)

    @classmethod
    def untrained(cls, model: str = "unet", options: dict | None = None, image_size: int = 64,
                  algorithm: str = "maml", steps: int = 5, lr: float = 0.1, resize: str = "stretch") -> Segmenter:
        """A randomly initialised model: for trying the API and for tests (its masks mean nothing)."""
        net = MODELS.create(model, **(options or {}))
        algo = ALGORITHMS.create(algorithm, net, inner_steps=steps, inner_lr=lr)
        prep = Preprocessing(image_size, resize, input_channels(net) or 3)
        return cls(algo, prep, 0.5, {"name": model, "options": dict(options or {})}, source="untrained")

    @property
    def default_steps(self) -> int:
        """The fixed test-time step count used where no plan is stored (``algorithm.eval_steps``)."""
        return int(self.algorithm.eval_steps)

    def describe_adaptation(self) -> str:
        """How this model adapts: its test-time plans per shot count, or its fixed step count."""
        plans = self.algorithm.test_time
        if not plans:
            return f"{self.default_steps} adaptation steps"
        return "; ".join(f"{s} shot{'s' if s > 1 else ''}: {p.describe()}" for s, p in sorted(plans.items()))

    def prepare_support(self, images: Any, masks: Any, positive: list | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """(x [S,C,s,s], y [S,1,s,s], ignore [S,1,s,s], names) from support images and masks; ``positive`` (a list)
        gets whether each mask holds foreground (an empty one: a negative example)."""
        images, masks = as_list(images), as_list(masks)
        self._check_counts(images, masks)
        self._warn_many(len(images))
        xs, ys, igs, names = [], [], [], []
        for arr, fg, ign, name in self._support_arrays(images, masks, positive):
            y, ig = self.preprocessing.mask(fg, ign)
            xs.append(self.preprocessing.image(arr, name=name)), ys.append(y), igs.append(ig), names.append(name)
        return torch.stack(xs), torch.stack(ys), torch.stack(igs), names

    @staticmethod
    def _warn_many(n: int) -> None:
        if n > MAX_SHOTS:
            warnings.warn(f"{n} support images: fewseg models are meta-trained on 1-{MAX_SHOTS} "
                          f"(the recipes: 5); more images slow adaptation and may not help", UserWarning,
                          stacklevel=4)

    @staticmethod
    def _support_arrays(images: list, masks: list, positive: list | None = None,
                        ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
        """(image [H,W,C], fg bool [H,W], ignore bool [H,W], name) of each support pair, checked, one at a time.
        An empty mask is a negative example; once all are read, none holding foreground is a one-line DataError
        naming the masks. ``positive`` (a list) gets whether each mask holds foreground."""
        has_fg = [] if positive is None else positive
        mask_names = []
        for i, (img, msk) in enumerate(zip(images, masks)):
            name, mname = describe(img, f"support image {i}"), describe(msk, f"support mask {i}")
            arr = as_image(img, name)
            fg, ign = as_mask(msk, mname)
            check_pair(arr, fg, name, mname, need_foreground=False)
            has_fg.append(bool(fg.any())), mask_names.append(mname)
            yield arr, fg, ign, name
        check_positives(has_fg, mask_names)

    def prepare_support_patches(self, images: Any, masks: Any, tiling: Tiling, max_patches: int = DEFAULT_MAX_PATCHES,
                                keep: str = "foreground", seed: int = 0, positive: list | None = None,
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list, list]:
        """(x [P,C,s,s], y [P,1,s,s], ignore [P,1,s,s], names, chosen) from support images cut into
        ``tiling.tile``-pixel patches (:mod:`fewseg.tiling`): every patch with foreground plus as many background
        ones (``keep="all"``: every patch; a negative image, with an empty mask: as many as a positive image's
        foreground patches on average), at most ``max_patches``, drawn by a generator seeded by ``seed``;
        ``chosen`` lists (image index, patch box). ``positive``: as in :meth:`prepare_support`."""
        images, masks = as_list(images), as_list(masks)
        self._check_counts(images, masks)
        pairs = list(self._support_arrays(images, masks, positive))
        boxes = [patch_flags(fg, tiling.tile) for _, fg, _, _ in pairs]
        chosen = select_patches([[has for _, has in row] for row in boxes], keep, max_patches, seed)
        xs, ys, igs = [], [], []
        for i, j in chosen:
            arr, fg, ign, name = pairs[i]
            x, y, ig = support_patch(arr, fg, ign, boxes[i][j][0], self.preprocessing.image_size,
                                     self.preprocessing.channels, name)
            xs.append(x), ys.append(y), igs.append(ig)
        names = [name for _, _, _, name in pairs]
        return (torch.stack(xs), torch.stack(ys), torch.stack(igs), names,
                [(i, boxes[i][j][0]) for i, j in chosen])

    def _check_counts(self, images: list, masks: list) -> None:
        if len(images) != len(masks):
            raise DataError(f"{len(images)} support images but {len(masks)} masks: give one mask per image")
        if not images:
            raise DataError("adaptation needs at least one support image with its mask")

    def adapt(self, images: Any, masks: Any, steps: int | None = None, *, tile: int | None = INHERIT,
              overlap: float = INHERIT, max_patches: int = DEFAULT_MAX_PATCHES,
              patches: str = "foreground") -> AdaptedSegmenter:
        """Adapt to the class marked in ``masks`` (one per image, 1-10 images): the adapted model.

        An all-background mask marks a negative example (the image shows none of the class): its pixels are
        background in the support loss; at least one mask must hold foreground. ``info["negatives"]`` counts them.

        steps: inner steps (None: the checkpoint's test-time plan for this many images, chosen on validation
        classes when it was trained with ``eval.tune``; else its ``eval_steps``).
        tile, overlap: large images at their own resolution (default: this segmenter's ``tiling``; ``tile=None``:
        none). When a support image is larger than the tile, adaptation runs on ``tile``-pixel patches of the
        support images (``patches="foreground"``: every patch with foreground plus as many background ones;
        ``"all"``: every patch; at most ``max_patches``) with the plan's step count and rate for this many
        *images* (no augmented views or leave-one-out: the patches are the data); support images that all fit in
        one tile adapt as without tiling. The adapted model predicts with the same tiling.
        """
        tiling = resolve(self.tiling, tile, overlap)
        images, masks = as_list(images), as_list(masks)
        patched = tiling is not None and any(not tiling.covers(*_size_of(img, i)) for i, img in enumerate(images))
        t0 = time.perf_counter()
        extra: dict = {}
        positive: list[bool] = []
        if patched:
            self._check_counts(images, masks)
            self._warn_many(len(images))
            x, y, ignore, names, chosen = self.prepare_support_patches(images, masks, tiling, max_patches, patches,
                                                                       positive=positive)
            check_unit_range("support patches", x)
            plan = self.algorithm.plan_for(len(names)).override(steps=steps, views=0, leave_one_out=False)
            adapted = adapt_with_plan(self.algorithm, plan, x.to(self.device), y.to(self.device),
                                      ignore.to(self.device).bool())
            extra = {"support_patches": len(chosen), "patches": patches, "max_patches": max_patches}
        else:
            x, y, ignore, names = self.prepare_support(images, masks, positive)
            adapted = self.algorithm.adapt(x.to(self.device), y.to(self.device), steps=steps,
                                           support_ignore=ignore.to(self.device))
        negatives = positive.count(False)
        network = network_with(self.algorithm.model, adapted.params)
        info = {"algorithm": self.algorithm.name, "steps": adapted.info.get("steps", steps),
                "plan": adapted.info.get("plan"), "shots": len(names), "negatives": negatives,
                "support": [Path(n).name for n in names],
                "checkpoint": self.source, **extra,
                "seconds": round(time.perf_counter() - t0, 4)}
        return AdaptedSegmenter(network, self.preprocessing, self.threshold, self.model_config, info, self.device,
                                tiling=tiling)


def _size_of(item: Any, i: int) -> tuple[int, int]:
    """(H, W) of a support image: from the file header for paths (no decoding), else of its array."""
    if is_path(item) and Path(item).suffix.lower() != ".npy":
        w, h = image_size(item)
        return h, w
    arr = as_image(item, describe(item, f"support image {i}"))
    return arr.shape[0], arr.shape[1]


def load(checkpoint: str | Path, device: str | torch.device = "cpu", *, tile: int | None = INHERIT,
         overlap: float = INHERIT) -> Segmenter:
    """A :class:`Segmenter` from a run directory (its best, else last checkpoint), a checkpoint directory, or the
    name of a ready learner that needs no meta-training (``"imagenet-lite0"``: :mod:`fewseg.ready`).
    ``tile``/``overlap``: large images at their own resolution in adapt and predict (:mod:`fewseg.tiling`)."""
    if is_ready_name(checkpoint):
        algo, preprocessing, model_config = ready_parts(str(checkpoint), device)
        return Segmenter(algo, preprocessing, 0.5, model_config, source=str(checkpoint), device=device,
                         tile=tile, overlap=overlap)
    cfg, algo, ckpt_dir = load_algorithm(checkpoint, device)
    meta = json.loads((Path(ckpt_dir) / "meta.json").read_text())  # the stored preprocessing (no second weight read)
    prep = meta.get("preprocessing") or {}
    preprocessing = Preprocessing(int(prep.get("image_size", cfg.data.image_size)),
                                  prep.get("resize") or cfg.data.options.get("resize", "stretch"),
                                  input_channels(algo.model) or 3)
    return Segmenter(algo, preprocessing, cfg.eval.threshold, {"name": cfg.model.name, "options": dict(cfg.model.options)},
                     source=str(ckpt_dir), device=device, tile=tile, overlap=overlap)
