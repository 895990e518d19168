"""The user's API: load a meta-trained checkpoint, adapt it to a new class from a few labelled images, predict.

``fewseg.load(checkpoint)`` -> :class:`Segmenter`; ``seg.adapt(images, masks)`` -> :class:`AdaptedSegmenter`;
``adapted.predict(images)`` -> one :class:`Prediction` per image, at that image's own size. Images and masks
come in any form :mod:`fewseg.inputs` accepts (paths, PIL images, arrays, tensors; mixed sizes), prepared as in
meta-training (:mod:`fewseg.preprocess`). ``adapted.save(path)`` and ``fewseg.load_adapted(path)`` keep an
adapted model (safetensors + JSON, :mod:`fewseg.saved`), so a class is adapted once and used many times.

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

import copy
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import fewseg.algorithms  # noqa: F401  (registers the algorithms)
from fewseg.errors import DataError
from fewseg.inputs import as_image, as_list, as_mask, describe, is_batch
from fewseg.loading import load_algorithm
from fewseg.models import input_channels
from fewseg.preprocess import Preprocessing
from fewseg.ready import is_ready_name, ready_parts
from fewseg.registry import ALGORITHMS, MODELS
from fewseg.saved import read_adapted

MAX_SHOTS = 10  # the documented range of support images (the recipes meta-train 5-shot tasks)


@dataclass
class Prediction:
    """One image's result at its own size: ``probabilities`` float32 [H,W], ``mask`` bool [H,W] (p > threshold)."""

    probabilities: np.ndarray
    threshold: float
    mask: np.ndarray = field(init=False)

    def __post_init__(self):
        self.mask = self.probabilities > self.threshold

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def confidence(self) -> float:
        """Mean probability of the label given to each pixel (1: certain everywhere, 0.5: a coin toss)."""
        p = self.probabilities
        return float(np.maximum(p, 1.0 - p).mean()) if p.size else 1.0


class Segmenter:
    """A meta-trained model that adapts to a new class: :func:`load` makes one from a checkpoint."""

    def __init__(self, algorithm, preprocessing: Preprocessing, threshold: float = 0.5,
                 model_config: dict | None = None, source: str = "", device: str | torch.device = "cpu"):
        self.algorithm = algorithm.eval()
        self.preprocessing, self.threshold = preprocessing, float(threshold)
        self.model_config = model_config or {}
        self.source, self.device = source, torch.device(device)

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

    def prepare_support(self, images: Any, masks: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """(x [S,C,s,s], y [S,1,s,s], ignore [S,1,s,s], names) from support images and masks."""
        images, masks = as_list(images), as_list(masks)
        if len(images) != len(masks):
            raise DataError(f"{len(images)} support images but {len(masks)} masks: give one mask per image")
        if not images:
            raise DataError("adaptation needs at least one support image with its mask")
        if len(images) > MAX_SHOTS:
            warnings.warn(f"{len(images)} support images: fewseg models are meta-trained on 1-{MAX_SHOTS} "
                          f"(the recipes: 5); more images slow adaptation and may not help", UserWarning,
                          stacklevel=3)
        xs, ys, igs, names = [], [], [], []
        for i, (img, msk) in enumerate(zip(images, masks)):
            name, mname = describe(img, f"support image {i}"), describe(msk, f"support mask {i}")
            arr = as_image(img, name)
            fg, ign = as_mask(msk, mname)
            if fg.shape != arr.shape[:2]:
                raise DataError(f"{mname} is {fg.shape[1]}x{fg.shape[0]} but {name} is "
                                f"{arr.shape[1]}x{arr.shape[0]}")
            if not fg.any():
                raise DataError(f"{mname} has no foreground pixel")
            y, ig = self.preprocessing.mask(fg, ign)
            xs.append(self.preprocessing.image(arr, name=name)), ys.append(y), igs.append(ig), names.append(name)
        return torch.stack(xs), torch.stack(ys), torch.stack(igs), names

    def adapt(self, images: Any, masks: Any, steps: int | None = None) -> AdaptedSegmenter:
        """Adapt to the class marked in ``masks`` (one per image, 1-10 images): the adapted model.

        steps: inner steps (None: the checkpoint's test-time plan for this many images, chosen on validation
        classes when it was trained with ``eval.tune``; else its ``eval_steps``).
        """
        x, y, ignore, names = self.prepare_support(images, masks)
        t0 = time.perf_counter()
        adapted = self.algorithm.adapt(x.to(self.device), y.to(self.device), steps=steps,
                                       support_ignore=ignore.to(self.device))
        network = network_with(self.algorithm.model, adapted.params)
        info = {"algorithm": self.algorithm.name, "steps": adapted.info.get("steps", steps),
                "plan": adapted.info.get("plan"), "shots": len(names), "support": [Path(n).name for n in names],
                "checkpoint": self.source,
                "seconds": round(time.perf_counter() - t0, 4)}
        return AdaptedSegmenter(network, self.preprocessing, self.threshold, self.model_config, info, self.device)


def network_with(model: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``params`` (the adapted weights actually used at test time) and its buffers."""
    net = copy.deepcopy(model)
    state = {**dict(net.state_dict()), **{n: p.detach() for n, p in params.items()}}
    net.load_state_dict(state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class AdaptedSegmenter:
    """A model adapted to one class: ``predict(images)``, ``save(path)``; :func:`fewseg.load_adapted` reads it back."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing, threshold: float, model_config: dict,
                 info: dict | None = None, device: str | torch.device = "cpu", batch_size: int = 8):
        self.network = network.to(device).eval()
        self.preprocessing, self.threshold = preprocessing, float(threshold)
        self.model_config, self.info = dict(model_config), dict(info or {})
        self.device, self.batch_size = torch.device(device), int(batch_size)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Network-size images [N,C,S,S] in [0,1] -> logits [N,1,S,S], ``batch_size`` images per pass."""
        return torch.cat([self.network(x[i:i + self.batch_size].to(self.device)).float().cpu()
                          for i in range(0, x.shape[0], self.batch_size)])

    def predict_iter(self, images: Any, threshold: float | None = None) -> Iterator[Prediction]:
        """Like :meth:`predict`, one result at a time, decoding ``batch_size`` images at once (bounded memory)."""
        t = self.threshold if threshold is None else float(threshold)
        if not 0.0 < t < 1.0:
            raise DataError(f"threshold must lie strictly between 0 and 1, got {t}")
        items = as_list(images)
        for start in range(0, len(items), self.batch_size):
            chunk, sizes = [], []
            for i, item in enumerate(items[start:start + self.batch_size], start):
                name = describe(item, f"image {i}")
                arr = as_image(item, name)
                sizes.append(arr.shape[:2])
                chunk.append(self.preprocessing.image(arr, self.preprocessing.predict_mode, name))
                del arr
            logits = self.logits(torch.stack(chunk))
            for lg, hw in zip(logits, sizes):
                full = self.preprocessing.to_original(lg[None], hw)
                yield Prediction(torch.sigmoid(full).numpy(), t)

    def predict(self, images: Any, threshold: float | None = None) -> Prediction | list[Prediction]:
        """Masks and probabilities at each image's own size: one :class:`Prediction` for one image, a list
        for a list (or a 4-D batch). ``threshold``: foreground above it (default: the checkpoint's)."""
        results = list(self.predict_iter(images, threshold))
        return results if is_batch(images) else results[0]

    def save(self, path: str | Path) -> Path:
        """Write this adapted model to the directory ``path`` (weights.safetensors + meta.json, atomic)."""
        from fewseg.saved import save_adapted
        return save_adapted(self, path)


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """A :class:`Segmenter` from a run directory (its best, else last checkpoint), a checkpoint directory, or the
    name of a ready learner that needs no meta-training (``"imagenet-lite0"``: :mod:`fewseg.ready`)."""
    if is_ready_name(checkpoint):
        algo, preprocessing, model_config = ready_parts(str(checkpoint), device)
        return Segmenter(algo, preprocessing, 0.5, model_config, source=str(checkpoint), device=device)
    cfg, algo, ckpt_dir = load_algorithm(checkpoint, device)
    meta = json.loads((Path(ckpt_dir) / "meta.json").read_text())  # the stored preprocessing (no second weight read)
    prep = meta.get("preprocessing") or {}
    preprocessing = Preprocessing(int(prep.get("image_size", cfg.data.image_size)),
                                  prep.get("resize") or cfg.data.options.get("resize", "stretch"),
                                  input_channels(algo.model) or 3)
    return Segmenter(algo, preprocessing, cfg.eval.threshold, {"name": cfg.model.name, "options": dict(cfg.model.options)},
                     source=str(ckpt_dir), device=device)


def load_adapted(path: str | Path, device: str | torch.device = "cpu") -> AdaptedSegmenter:
    """An :class:`AdaptedSegmenter` saved by :meth:`AdaptedSegmenter.save` (checked, never unpickled)."""
    parts = read_adapted(path)
    return AdaptedSegmenter(parts.network, parts.preprocessing, parts.threshold, parts.model, parts.info, device)
