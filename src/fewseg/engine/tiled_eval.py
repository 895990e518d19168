"""Tiled evaluation (``eval.tile``, ``fewseg evaluate --tile PX --overlap F``): test episodes at the images' own size.

Without a tile every episode image is resized whole to the network's ``image_size`` (a 2149 x 1479 aerial tile
becomes 64 x 64, where a road is a pixel wide). With a tiling (:mod:`fewseg.tiling`) each test episode keeps its
images (the same seeded episodes: the same classes and image keys) but reads them at their own resolution from the
dataset (``native``: the file datasets ``labelmap``, ``ccp``, ``camvid``, ``pascal5i``, ``folder``, and mixtures of
them), as :meth:`fewseg.Segmenter.adapt` and :meth:`fewseg.AdaptedSegmenter.predict` with ``tile`` do:

- **support**: when a support image is larger than the tile, the learner adapts on ``tile``-pixel patches of the
  support images (:func:`fewseg.tiling.support_patches`: every patch with foreground plus as many background ones,
  at most ``max_patches``, seed 0) through ``adapt_patches(x, y, ignore, images)`` where the learner has it (the
  meta-learned model and the linear probe: the test-time plan for that many *images*, without augmented views or
  leave-one-out), else its plain ``adapt`` (fine-tuning and prototype baselines: nothing in them depends on the
  support set's size). Support images that all fit in one tile adapt as without tiling.
- **queries**: a query larger than the tile is predicted window by window (:func:`fewseg.tiling.tiled_logits`,
  blended) and scored against its label map at the label map's own size; a query that fits in one tile is
  predicted whole and scored as without tiling (at the label map's size through the dataset's
  ``full_resolution`` when ``eval.full_resolution`` is on).

So where the tile holds every image of an episode the episode is scored exactly as without tiling. A dataset that
draws patch episodes (``data.options.patch``) has no whole images in its episodes: there every image is read at
its own size and goes through the windows and patches (one window for an image within the tile).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import torch

from fewseg.data.episode import Episode
from fewseg.engine.evaluator import FullResolution, Learner, _full_resolution_stats
from fewseg.errors import ConfigError, DataError
from fewseg.metrics import BinaryStats, binary_stats
from fewseg.tiling import DEFAULT_MAX_PATCHES, Tiling, support_patches, tiled_logits

__all__ = ["NativeReader", "TiledEvaluation", "adapt_on_patches", "logits_of", "native_reader"]

IGNORE = 255
# (key, class id) -> (image [H,W,C] uint8, labels uint8 [H,W]: 1 the class, 255 ignore, 0 the rest), own size
NativeReader = Callable[[Hashable, int], "tuple[np.ndarray, np.ndarray]"]


def native_reader(dataset) -> NativeReader | None:
    """How to read an episode item of ``dataset`` at its own resolution: the dataset's ``native`` (of the item's
    source image, for datasets that list several patch items per image); a mixture's domains' (each must have
    one); None where there is none (e.g. ``synthetic``, whose images exist only at the network's size)."""
    own = getattr(dataset, "native", None)
    if callable(own):
        source_of = getattr(dataset, "source_of", None)
        if callable(source_of):
            return lambda key, class_id: own(source_of(key), class_id)
        return own
    domains, split = getattr(dataset, "domains", None), getattr(dataset, "_split_id", None)
    if domains is not None and callable(split):
        readers = [native_reader(d) for d in domains]
        if readers and all(r is not None for r in readers):
            def read(key, class_id):
                d, own_class = split(class_id)
                return readers[d](key[1], own_class)
            return read
    return None


def adapt_on_patches(learner: Learner, x: torch.Tensor, y: torch.Tensor, ignore: torch.Tensor, images: int):
    """The learner adapted on support patches cut from ``images`` support images: its ``adapt_patches`` where it
    has one (plans chosen per number of images), else its plain ``adapt``."""
    own = getattr(learner, "adapt_patches", None)
    if callable(own):
        return own(x, y, ignore, images)
    return learner.adapt(x, y, support_ignore=ignore)


def logits_of(predictor, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Network inputs [N,C,S,S] -> logits [N,1,S,S] (float32, CPU) of an adapted predictor: its ``logits`` where it
    has them, else the logit of its probabilities (clamped to [1e-12, 1 - 1e-12], as full-resolution scoring)."""
    own = getattr(predictor, "logits", None)

    @torch.no_grad()
    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        if callable(own):
            return own(x).float().cpu()
        return torch.logit(predictor.predict(x).double().clamp(1e-12, 1 - 1e-12)).float().cpu()
    return fn


@dataclass
class TiledEvaluation:
    """Scores episodes with images at their own resolution (module docstring). ``read``: a :data:`NativeReader`;
    ``size``: the network's input side; ``channels``: the network's input channels (None: as read);
    ``whole_items``: the episodes' tensors are the whole images (False for patch episodes)."""

    tiling: Tiling
    read: NativeReader
    size: int
    channels: int | None = None
    whole_items: bool = True
    batch_size: int = 8
    max_patches: int = DEFAULT_MAX_PATCHES
    keep: str = "foreground"

    @classmethod
    def for_dataset(cls, dataset, tiling: Tiling, channels: int | None = None, **kwargs) -> TiledEvaluation:
        """For the test episodes of ``dataset``; a one-line ConfigError where its images cannot be read at their
        own size."""
        read = native_reader(dataset)
        if read is None:
            raise ConfigError(f"eval.tile (--tile) reads each episode's images at their own resolution, but the "
                              f"{dataset.name} dataset has none (only datasets of image files do: labelmap, ccp, "
                              f"camvid, pascal5i, folder); evaluate it without a tile")
        return cls(tiling, read, int(dataset.image_size), channels, getattr(dataset, "patch", None) is None, **kwargs)

    def episode_stats(self, learner: Learner, ep: Episode, threshold: float = 0.5,
                      full_resolution: FullResolution | None = None, device="cpu") -> BinaryStats:
        """Adapt ``learner`` on the episode's support images and score its queries (one entry per query)."""
        shots, queries = ep.support_x.shape[0], ep.query_x.shape[0]
        if len(ep.keys) != shots + queries:
            raise DataError("tiled evaluation needs the image keys of each episode (episodes from an "
                            "EpisodeSampler have them)")
        predictor = self._adapt(learner, ep, device)
        cut = torch.logit(torch.tensor(threshold, dtype=torch.float64)).item()
        logits_fn = logits_of(predictor, device)
        parts: list[BinaryStats] = []
        whole: list[int] = []
        for j, key in enumerate(ep.keys[shots:]):
            image, labels = self.read(key, ep.class_id)
            if self.whole_items and self.tiling.covers(*labels.shape):
                whole.append(j)  # predicted and scored as without tiling, below
                continue
            self._check_sizes(image, labels, key)
            logits = tiled_logits(image, self.tiling, logits_fn, self.size, self.batch_size, self.channels,
                                  f"query image {key}")
            del image
            parts.append(binary_stats((logits > cut)[None, None], torch.from_numpy(labels == 1)[None, None],
                                      torch.from_numpy(labels == IGNORE)[None, None]))
        if whole:
            parts.append(self._whole_queries(predictor, ep, whole, threshold, full_resolution))
        return BinaryStats(*[torch.cat([f.cpu() for f in field]) for field in zip(*parts)])

    def _adapt(self, learner: Learner, ep: Episode, device):
        shots = ep.support_x.shape[0]
        support = [self.read(key, ep.class_id) for key in ep.keys[:shots]]
        for key, (image, labels) in zip(ep.keys[:shots], support):
            self._check_sizes(image, labels, key)
        covered = all(self.tiling.covers(*labels.shape) for _, labels in support)
        if covered and self.whole_items:  # as without tiling
            return learner.adapt(ep.support_x, ep.support_y, support_ignore=ep.support_ignore)
        pairs = [(image, labels == 1, labels == IGNORE) for image, labels in support]
        names = [f"support image {key}" for key in ep.keys[:shots]]
        if covered:  # patch episodes whose images fit in one tile: each image whole, one window
            x, y, ignore, _ = support_patches(pairs, self.tiling.tile, self.size, self.channels, max(1, shots),
                                              "all", 0, names)
            return learner.adapt(x.to(device), y.to(device), support_ignore=ignore.to(device))
        x, y, ignore, _ = support_patches(pairs, self.tiling.tile, self.size, self.channels, self.max_patches,
                                          self.keep, 0, names)
        del pairs, support
        return adapt_on_patches(learner, x.to(device), y.to(device), ignore.to(device), shots)

    @staticmethod
    def _whole_queries(predictor, ep: Episode, idx: list[int], threshold: float,
                       full_resolution: FullResolution | None) -> BinaryStats:
        """Stats of the queries ``idx`` (images within one tile) exactly as evaluation without tiling."""
        shots, queries = ep.support_x.shape[0], ep.query_x.shape[0]
        if len(idx) < queries:
            pick = torch.tensor(idx, device=ep.query_x.device)
            ep = Episode(ep.support_x, ep.support_y, ep.query_x[pick], ep.query_y[pick], ep.support_ignore,
                         None if ep.query_ignore is None else ep.query_ignore[pick], ep.class_id,
                         tuple(ep.keys[:shots]) + tuple(ep.keys[shots + j] for j in idx))
        with torch.no_grad():
            probs = predictor.predict(ep.query_x)
        if full_resolution is not None:
            return _full_resolution_stats(probs, ep, threshold, full_resolution)
        return binary_stats(probs > threshold, ep.query_y, ep.query_ignore)

    @staticmethod
    def _check_sizes(image: np.ndarray, labels: np.ndarray, key) -> None:
        if image.shape[:2] != labels.shape:
            raise DataError(f"image {key!r} is {image.shape[1]}x{image.shape[0]} but its labels are "
                            f"{labels.shape[1]}x{labels.shape[0]}")
