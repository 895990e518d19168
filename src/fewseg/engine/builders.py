"""Config sections -> objects, with config errors that name the key."""
from __future__ import annotations

import torch

from fewseg.config import AlgorithmConfig, Config, DataConfig, ModelConfig, short_repr
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
    """(model, algorithm) on ``device``, model initialised from ``cfg.seed`` with a local generator.

    The network is first checked on the meta device (:func:`check_model_input`): a config it cannot run, from a
    recipe or a stored checkpoint, is a one-line ConfigError before any memory is spent."""
    check_model_input(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
    algo = build_algorithm(cfg.algorithm, model, class_counts)
    return model, algo.to(device or torch.device(cfg.device))


MAX_PARAMETERS = 1_000_000_000  # a network beyond this is a typo in model.options, not a few-shot model
MAX_UNET_DEPTH = 16              # sides divisible by 2**15 already exceed any image size fewseg accepts


def resolve_device(name: str, what: str = "--device") -> torch.device:
    """``torch.device(name)`` when this machine has it, else a one-line :class:`ConfigError` naming ``what``."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what}: {name!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}: {name!r} asked for but CUDA is not available (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{what}: {name!r} asked for but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
        return device
    backend = getattr(torch.backends, device.type, None) if device.type == "mps" else getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ConfigError(f"{what}: {name!r} asked for but {device.type} is not available on this machine")
    return device


def check_model_input(cfg: Config) -> None:
    """Build ``cfg.model`` on the meta device (no memory, no change to any random state) and run one
    ``[1,C,S,S]`` input (C: ``model.options.in_channels``, 3) of ``data.image_size`` S through it: an image size the network cannot take (e.g. a
    ``unet`` of depth 3 with 33 px), a network of absurd size, or one whose output is not ``[1,1,S,S]`` is a
    one-line :class:`ConfigError` at load instead of a failure mid-run."""
    size, depth = cfg.data.image_size, cfg.model.options.get("depth")
    if cfg.model.name == "unet" and isinstance(depth, int) and depth > MAX_UNET_DEPTH:
        raise ConfigError(f"config key 'model.options.depth': unet depth {depth} is above {MAX_UNET_DEPTH} "
                          f"(image sides must be divisible by 2**(depth-1))")
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            model = build_model(cfg.model)
            n = sum(p.numel() for p in model.parameters())
        except RuntimeError as exc:
            raise ConfigError(f"config section 'model': {cfg.model.name!r} cannot be built with "
                              f"{short_repr(cfg.model.options)}: {str(exc).splitlines()[0]}") from None
        if n > MAX_PARAMETERS:
            raise ConfigError(f"config section 'model': {cfg.model.name!r} with {short_repr(cfg.model.options)} has {n:,} "
                              f"parameters (more than {MAX_PARAMETERS:,})")
        try:
            out = model(torch.zeros(1, model_channels(cfg) or 3, size, size))
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"config key 'data.image_size': model {cfg.model.name!r} ({short_repr(cfg.model.options)}) "
                              f"cannot take {size}x{size} images: {str(exc).splitlines()[0]}") from None
    if tuple(out.shape) != (1, 1, size, size):
        raise ConfigError(f"config key 'data.image_size': model {cfg.model.name!r} maps a [1,C,{size},{size}] "
                          f"input to {list(out.shape)}, not [1,1,{size},{size}]")
