"""Configs: dataclasses loaded from YAML, with dotted overrides (``train.iterations=200``).

Unknown keys and values of the wrong type fail at once with the key named.

Example:
    >>> cfg = load_config("configs/synthetic_maml.yaml", ["train.iterations=50", "algorithm.inner_lr=0.1"])
    >>> cfg.train.iterations
    50
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fewseg.errors import ConfigError


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str | None = None          # dataset folder (real datasets)
    image_size: int = 64
    options: dict = field(default_factory=dict)  # extra dataset kwargs (fold, n_folds, min_foreground, resize, ...)
    augment: bool = False            # joint flips/scale/colour on training episodes


@dataclass
class ModelConfig:
    name: str = "seed-cnn"
    options: dict = field(default_factory=dict)  # model kwargs, e.g. {depth: 3, width: 16}


@dataclass
class AlgorithmConfig:
    name: str = "maml"
    inner_steps: int = 5
    inner_lr: float = 0.01
    first_order: bool = False
    loss: str = "bce"
    strategy: str = "auto"           # auto | loop | vmap
    task_chunk: int = 0              # tasks per vmap chunk (0 = all)
    eval_steps: int | None = None    # inner steps at test time (default: inner_steps)
    options: dict = field(default_factory=dict)  # algorithm-specific kwargs


@dataclass
class TrainConfig:
    iterations: int = 1000
    meta_batch: int = 4
    shots: int = 5
    queries: int = 5
    outer_lr: float = 1e-3
    schedule: str = "constant"       # constant | cosine
    outer_optimizer: str = "adam"    # adam | sgd (Reptile uses sgd: theta += lr * mean(phi - theta))
    grad_clip: float = 10.0          # max global norm of the meta-gradient (0 = off)
    val_every: int = 100
    val_episodes: int = 60
    checkpoint_every: int = 100
    max_loss: float = 100.0          # a meta-loss above this (or NaN) stops training
    data_seed_offset: int = 0
    class_sampling: str = "uniform"  # uniform | images (classes drawn by image count: long-tailed)
    autocast: str = "none"           # none | bf16 (torch.autocast around the meta-step; parameters stay fp32)


@dataclass
class EvalConfig:
    shots: list = field(default_factory=lambda: [1, 5])
    queries: int = 5
    episodes: int = 300
    steps: int | None = None         # inner steps at test time (default: the algorithm's eval_steps)
    threshold: float = 0.5
    baselines: list = field(default_factory=lambda: ["zero-shot", "random-init", "random-init-long",
                                                      "transfer", "prototype"])
    long_steps: int = 100
    lr_select_episodes: int = 20     # validation episodes for choosing baseline fine-tuning rates
    transfer_images: int = 0         # image passes for transfer pre-training (0 = same as meta-training)
    full_resolution: bool = True     # real data: score at the label maps' own size (logits upsampled)


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "cpu"
    output: str = "runs/run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Coerce/validate ``value`` for a field annotated ``annotation`` (as a string under __future__)."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"config key {key!r} may not be empty")
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, dict, list) and isinstance(value, origin):
            return value
        if origin is list and isinstance(value, (int, str)):
            return [value]
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"config key {key!r} must be {names}, got {value!r}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}; "
                              f"known keys of {prefix.rstrip('.') or 'the root'}: {', '.join(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(prefix + key, value, hint)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.iterations=50"`` -> ("train.iterations", 50); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def config_from_dict(data: dict, overrides: list[str] | tuple = ()) -> Config:
    tree = copy.deepcopy(dict(data or {}))  # overrides never modify the caller's dict
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML recipe (or defaults when ``path`` is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return config_from_dict(data, overrides)


def validate(cfg: Config) -> None:
    """Value checks that types cannot express, naming the key."""
    checks = [
        ("train.iterations", cfg.train.iterations >= 0), ("train.meta_batch", cfg.train.meta_batch >= 1),
        ("train.shots", cfg.train.shots >= 1), ("train.queries", cfg.train.queries >= 1),
        ("train.outer_lr", cfg.train.outer_lr > 0), ("algorithm.inner_lr", cfg.algorithm.inner_lr > 0),
        ("algorithm.inner_steps", cfg.algorithm.inner_steps >= 0), ("data.image_size", cfg.data.image_size >= 8),
        ("train.schedule", cfg.train.schedule in ("constant", "cosine")),
        ("train.outer_optimizer", cfg.train.outer_optimizer in ("adam", "sgd")),
        ("train.class_sampling", cfg.train.class_sampling in ("uniform", "images")),
        ("train.autocast", cfg.train.autocast in ("none", "bf16")),
        ("algorithm.strategy", cfg.algorithm.strategy in ("auto", "loop", "vmap")),
        ("eval.episodes", cfg.eval.episodes >= 1), ("train.val_every", cfg.train.val_every >= 1),
        ("eval.shots", all(isinstance(s, int) and s >= 1 for s in cfg.eval.shots)),
    ]
    for key, ok in checks:
        if not ok:
            value = cfg.to_dict()
            for part in key.split("."):
                value = value[part]
            raise ConfigError(f"config key {key!r} has a bad value: {value!r}")
