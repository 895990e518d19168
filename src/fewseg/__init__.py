"""fewseg: meta-learned few-shot image segmentation (the MAML family on torch.func).

Example:
    >>> import fewseg
    >>> model = fewseg.create_model("seed-cnn", width=4)
    >>> algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.01)
    >>> ds = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=16)
    >>> sampler = fewseg.EpisodeSampler(ds, shots=2, queries=2, seed=0)
    >>> loss = algo.outer_loss(sampler.meta_batch(2), iteration=0); loss.backward()
    >>> loss.shape, model[0].weight.grad.shape                  # a scalar; the meta-gradient in .grad
    (torch.Size([]), torch.Size([4, 3, 3, 3]))
"""
from __future__ import annotations

from typing import Any

from fewseg import algorithms as _algorithms  # noqa: F401  (registers algorithms)
from fewseg import baselines as _baselines  # noqa: F401  (registers baselines)
from fewseg import models as _models  # noqa: F401  (registers models)
from fewseg._version import __version__  # noqa: F401  (fewseg.__version__)
from fewseg.algorithms.base import Adapted, MetaAlgorithm
from fewseg.data import register_datasets as _register_datasets
from fewseg.data.base import Record, Sample, SegmentationDataset
from fewseg.data.episode import Episode, MetaBatch, collate
from fewseg.data.sampler import EpisodeSampler
from fewseg.errors import CheckpointError, ConfigError, DataError, FewsegError, TrainingError
from fewseg.registry import ALGORITHMS, BASELINES, DATASETS, MODELS
from fewseg.segmenter import AdaptedSegmenter, Prediction, Segmenter, load, load_adapted

_register_datasets()


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, **kwargs: Any):
    """A registered network: nn.Module mapping [B,3,H,W] -> [B,1,H,W] foreground logits."""
    return MODELS.create(name, **kwargs)


def list_algorithms() -> list[str]:
    return ALGORITHMS.names()


def create_algorithm(name: str, model, **kwargs: Any) -> MetaAlgorithm:
    """A registered meta-learning algorithm wrapping ``model`` (e.g. "maml", "fomaml")."""
    return ALGORITHMS.create(name, model, **kwargs)


def list_baselines() -> list[str]:
    """The baselines of ``fewseg evaluate --baselines`` and the demo, in the order they run."""
    return BASELINES.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def create_dataset(name: str, **kwargs: Any) -> SegmentationDataset:
    """A registered dataset, e.g. ``create_dataset("synthetic", split="train", seed=0)``."""
    return DATASETS.create(name, **kwargs)


__all__ = [
    "Adapted",
    "AdaptedSegmenter",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Episode",
    "EpisodeSampler",
    "FewsegError",
    "MetaAlgorithm",
    "MetaBatch",
    "Prediction",
    "Record",
    "Sample",
    "SegmentationDataset",
    "Segmenter",
    "TrainingError",
    "collate",
    "create_algorithm",
    "create_dataset",
    "create_model",
    "list_algorithms",
    "list_baselines",
    "list_datasets",
    "list_models",
    "load",
    "load_adapted",
]
