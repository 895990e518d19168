"""Config sections -> objects, with config errors that name the key."""
from __future__ import annotations

import torch

from fewseg.config import AlgorithmConfig, Config, DataConfig, ModelConfig
from fewseg.data.base import SegmentationDataset
from fewseg.errors import ConfigError, FewsegError
from fewseg.registry import ALGORITHMS, DATASETS, MODELS, Registry


def _create(registry: Registry, section: str, name: str, *args, **kwargs):
    if name not in registry.names():
        raise ConfigError(f"config key '{section}.name': unknown {registry.kind} {name!r}; "
                          f"choose one of: {', '.join(registry.names())}")
    factory = registry.get(name)
    try:
        return factory(*args, **kwargs)
    except FewsegError:
        raise
    except TypeError as exc:
        raise ConfigError(f"config section {section!r} ({registry.kind} {name!r}): {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"config section {section!r}: {exc}") from None


def build_dataset(cfg: DataConfig, split: str, seed: int, channels: int | None = None) -> SegmentationDataset:
    """The ``split`` of the dataset of ``cfg``; images converted to ``channels`` (the model's in_channels)."""
    from fewseg.data.channels import with_channels
    kwargs = dict(cfg.options)
    kwargs.update(split=split, seed=seed, image_size=cfg.image_size)
    if cfg.root is not None:
        kwargs["root"] = cfg.root
    return with_channels(_create(DATASETS, "data", cfg.name, **kwargs), channels)


def model_channels(cfg: Config) -> int | None:
    """The image channels the model of ``cfg`` declares (``model.options.in_channels``), None for the default 3."""
    channels = cfg.model.options.get("in_channels")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise ConfigError(f"config key 'model.options.in_channels' must be an integer >= 1, got {channels!r}")
    return channels


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    return _create(MODELS, "model", cfg.name, **cfg.options)


def build_algorithm(cfg: AlgorithmConfig, model: torch.nn.Module, class_counts: dict[int, int] | None = None):
    """The algorithm of ``cfg`` around ``model``; ``class_counts`` (images per training class) for weighting."""
    kwargs = {"inner_steps": cfg.inner_steps, "inner_lr": cfg.inner_lr, "first_order": cfg.first_order,
              "loss": cfg.loss, "strategy": cfg.strategy, "task_chunk": cfg.task_chunk, "eval_steps": cfg.eval_steps}
    kwargs.update(cfg.options)
    return _create(ALGORITHMS, "algorithm", cfg.name, model, class_counts=class_counts, **kwargs)


def build_all(cfg: Config, device: torch.device | None = None, class_counts: dict[int, int] | None = None):
    """(model, algorithm) on ``device``, model initialised from ``cfg.seed`` with a local generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
    algo = build_algorithm(cfg.algorithm, model, class_counts)
    return model, algo.to(device or torch.device(cfg.device))
