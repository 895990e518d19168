"""Configs: dataclasses loaded from YAML, with dotted overrides (``train.iterations=200``).

Unknown keys and values of the wrong type fail at once with the key named. Every field carries its
meaning (``metadata["help"]``), from which :func:`config_reference` builds the Markdown table that
``fewseg config`` prints. ``--config`` takes a YAML path or the name of a recipe shipped in
``fewseg/configs`` (:mod:`fewseg.recipes`); files, overrides and stored configs are read by
:mod:`fewseg.config_files`, YAML itself by :mod:`fewseg.yaml_reader`. The ``algorithm`` section's shared keys take
their defaults and value rules from :mod:`fewseg.algorithms.options` (one definition for the API and configs).

The schema and its type and range checks are one description of the keys, which must change together; the
Markdown reference is generated from it (:mod:`fewseg.config_reference`).

Example:
    >>> from fewseg.config import load_config
    >>> cfg = load_config("synthetic_maml", ["train.iterations=50", "algorithm.inner_lr=0.1"])
    >>> cfg.train.iterations
    50
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewseg import config_reference as reference
from fewseg.algorithms.options import CORE_OPTIONS, core_problem
from fewseg.choices import AUTOCAST, CLASS_SAMPLING, OUTER_OPTIMIZERS, SCHEDULES, STRATEGIES
from fewseg.config_files import (  # noqa: F401  (LEGACY_KEYS, MAX_CONFIG_BYTES, parse_override: public here too)
    LEGACY_KEYS,
    MAX_CONFIG_BYTES,
    apply_overrides,
    build_dataclass,
    migrate_stored,
    parse_override,
    read_config_file,
)
from fewseg.config_reference import REFERENCE_END, REFERENCE_START, reference_block  # noqa: F401
from fewseg.errors import ConfigError
from fewseg.recipes import resolve_recipe
from fewseg.yaml_reader import short_repr

MAX_IMAGE_SIZE = 4096          # data.image_size above this is refused (a typo, or a tampered checkpoint)
MAX_SEED = 2**63 - 2           # seeds (plus offsets) must fit every generator fewseg seeds (torch, numpy)
MAX_ITERATIONS = 10_000_000    # train.iterations above this is refused (a typo: years of meta-training)


def setting(default: Any, help: str) -> Any:
    """A config field with its meaning (shown by ``fewseg config``); list/dict defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    """A nested config section (a dataclass) with its meaning."""
    return field(default_factory=cls, metadata={"help": help})


def _one_of(values: tuple[str, ...]) -> str:
    return "one of " + ", ".join(values)


@dataclass
class DataConfig:
    name: str = setting("synthetic", "dataset name (`fewseg list` shows them)")
    root: str | None = setting(None, "dataset folder (real datasets); null: the dataset's default location")
    image_size: int = setting(64, "images and masks are resized to image_size x image_size (at least 8)")
    options: dict = setting({}, "extra dataset keyword arguments (fold, n_folds, min_foreground, resize, ...)")
    augment: bool = setting(False, "joint flips, scale and colour jitter on training episodes")
    negatives: int | float = setting(0, "support negatives: images of other classes without the episode's class, "
                                        "with an empty mask; N (whole number, < train.shots): N of each support "
                                        "set; a fraction p < 1: each support image but one with chance p; 0: off")


@dataclass
class ModelConfig:
    name: str = setting("seed-cnn", "network name (`fewseg list` shows them)")
    options: dict = setting({}, "network keyword arguments, e.g. {depth: 3, width: 16}")


def core(name: str, help: str) -> Any:
    """A field of the ``algorithm`` section that is a core algorithm option: its default is the option's."""
    return setting(CORE_OPTIONS[name], help)


@dataclass
class AlgorithmConfig:
    name: str = setting("maml", "meta-learning algorithm (`fewseg list` shows them)")
    inner_steps: int = core("inner_steps", "inner SGD steps on the support set during meta-training")
    inner_lr: float = core("inner_lr", "inner-loop learning rate (> 0)")
    first_order: bool = core("first_order", "drop second-order terms of the meta-gradient (first-order MAML)")
    loss: str = core("loss", "segmentation loss, inner and outer (`fewseg list` shows them)")
    strategy: str = core("strategy", f"how the tasks of a meta-step run: {_one_of(STRATEGIES)} "
                                     "(auto picks per device)")
    task_chunk: int = core("task_chunk", "tasks per vmap chunk (0: all tasks at once)")
    eval_steps: int | None = core("eval_steps", "inner steps at test time (null: inner_steps)")
    options: dict = setting({}, "algorithm-specific keyword arguments (e.g. task_weighting, inner_checkpoint)")


@dataclass
class TrainConfig:
    iterations: int = setting(1000, "meta-training iterations (outer steps)")
    meta_batch: int = setting(4, "tasks (episodes) per meta-step")
    shots: int = setting(5, "support images per training (and validation) task")
    queries: int = setting(5, "query images per training (and validation) task")
    outer_lr: float = setting(1e-3, "outer (meta) learning rate (> 0)")
    schedule: str = setting("constant", f"outer learning-rate schedule: {_one_of(SCHEDULES)} "
                                        "(cosine anneals to 1% of outer_lr)")
    outer_optimizer: str = setting("adam", f"outer optimiser: {_one_of(OUTER_OPTIMIZERS)} (Reptile uses sgd)")
    grad_clip: float = setting(10.0, "maximum global norm of the meta-gradient (0: no clipping)")
    val_every: int = setting(100, "validate on the val classes every this many iterations")
    val_episodes: int = setting(60, "validation episodes (fixed, seeded)")
    checkpoint_every: int = setting(100, "write checkpoints/last every this many iterations")
    max_loss: float = setting(100.0, "a meta-loss above this (or NaN) stops training")
    data_seed_offset: int = setting(0, "added to seed for the training sampler (other episodes, same init)")
    class_sampling: str = setting("uniform", f"how training classes are drawn: {_one_of(CLASS_SAMPLING)} "
                                             "(images: by image count, long-tailed)")
    autocast: str = setting("none", f"mixed precision around the meta-step: {_one_of(AUTOCAST)} "
                                    "(parameters stay fp32)")
    dist_timeout: float = setting(300.0, "under torchrun: seconds a collective waits for the other ranks before "
                                         "the run stops with an error (a rank died)")


@dataclass
class EvalConfig:
    shots: list[int] = setting([1, 5], "support images per test episode, one table column group each "
                                       "(`fewseg evaluate --shots` overrides)")
    queries: int = setting(5, "query images per test episode (`fewseg evaluate --queries` overrides)")
    episodes: int = setting(300, "test episodes per shot count (`fewseg evaluate --episodes` overrides)")
    threshold: float = setting(0.5, "foreground probability above which a pixel is foreground (0 < t < 1)")
    long_steps: int = setting(100, "Adam steps of the random-init-long baseline")
    long_episodes: int = setting(0, "test episodes per shot count of the random-init-long baseline: the first "
                                    "this many of the fixed episodes, its CI shown in the table (0: all of "
                                    "eval.episodes)")
    batch_episodes: int = setting(16, "test episodes the fine-tuning baselines adapt at once (torch.func.vmap over "
                                      "stacked copies of the weights: the same numbers up to float rounding; "
                                      "1: one at a time)")
    lr_select_episodes: int = setting(20, "validation episodes per shot count on which test-time settings are "
                                          "chosen: the meta-learned model's plans and the baselines' steps and rates")
    tune: bool = setting(True, "after meta-training, choose test-time steps, rate, augmented views and leave-one-out "
                               "per shot count on validation classes and store them in checkpoints/best (false: "
                               "algorithm.eval_steps at the training rate, baselines with the same steps)")
    tune_steps: list[int] = setting([0, 1, 2, 3, 5, 7, 10, 15, 20], "test-time step counts tried by eval.tune")
    tune_rate_scales: list[float] = setting([0.5, 1.0, 2.0], "multiples of the inner rate tried by eval.tune "
                                                                  "(algorithms that learn their rates keep them)")
    tune_views: int = setting(4, "augmented views of the support image tried at 1 shot by eval.tune (0: none)")
    tune_leave_one_out: bool = setting(True, "try leave-one-out step selection at 2+ shots in eval.tune")
    transfer_images: int = setting(0, "image passes of transfer pre-training (0: as many as meta-training)")
    probe_steps: list[int] = setting([25, 50, 100, 200], "Adam step counts the linear-probe baseline's schedule "
                                                         "is chosen from on validation classes")
    probe_rates: list[float] = setting([0.003, 0.01, 0.03, 0.1], "Adam rates the linear-probe baseline's schedule "
                                                                 "is chosen from")
    full_resolution: bool = setting(True, "real data: score at the label maps' own size (logits upsampled)")
    tile: int | None = setting(None, "large images at their own resolution: adapt on tile x tile pixel patches of "
                                     "each test episode's support images, predict each query window by window "
                                     "and score it at its label map's size (`fewseg evaluate --tile`; null or 0: "
                                     "whole images resized to data.image_size)")
    overlap: float = setting(0.25, "of neighbouring windows with eval.tile: a fraction of the tile below 1, or "
                                   "whole pixels from 1 up (`fewseg evaluate --overlap`)")


@dataclass
class Config:
    name: str = setting("run", "the run's name")
    seed: int = setting(0, "seeds the model initialisation and every episode sampler")
    device: str = setting("cpu", "torch device, e.g. cpu or cuda")
    output: str = setting("runs/run", "run directory: config.yaml, log.jsonl, checkpoints/")
    data: DataConfig = section(DataConfig, "the dataset and its preprocessing")
    model: ModelConfig = section(ModelConfig, "the network")
    algorithm: AlgorithmConfig = section(AlgorithmConfig, "the meta-learning algorithm")
    train: TrainConfig = section(TrainConfig, "meta-training")
    eval: EvalConfig = section(EvalConfig, "few-shot evaluation on the test classes")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(data: dict, overrides: list[str] | tuple = (), stored: bool = False) -> Config:
    """A validated :class:`Config` from a nested dict plus dotted overrides (the caller's dict is not modified).

    stored: the dict was read back from a checkpoint (its ``meta.json``): keys removed since
    (:data:`LEGACY_KEYS`) are dropped first (:func:`migrate_stored`).
    """
    tree = apply_overrides(migrate_stored(data) if stored else copy.deepcopy(dict(data or {})), overrides)
    cfg = build_dataclass(Config, tree)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML recipe (a path, or a shipped recipe's name; defaults when None) and apply dotted overrides."""
    data = {} if path is None else read_config_file(resolve_recipe(path))
    return config_from_dict(data, overrides)


# the enumerated keys outside the algorithm section (whose rules are fewseg.algorithms.options.CORE_RULES)
CHOICES = {"train.schedule": SCHEDULES, "train.outer_optimizer": OUTER_OPTIMIZERS,
           "train.class_sampling": CLASS_SAMPLING, "train.autocast": AUTOCAST}


def _value(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config) -> None:
    """Value checks that types cannot express, naming the key (and the allowed values of enumerated keys)."""
    for key, allowed in CHOICES.items():
        if _value(cfg, key) not in allowed:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(allowed)}; got {_value(cfg, key)!r}")
    validate_algorithm(cfg.algorithm)
    t, e = cfg.train, cfg.eval
    checks = [
        ("train.iterations", 0 <= t.iterations <= MAX_ITERATIONS, f"in [0, {MAX_ITERATIONS:_}]"),
        ("train.meta_batch", t.meta_batch >= 1, ">= 1"),
        ("train.shots", t.shots >= 1, ">= 1"), ("train.queries", t.queries >= 1, ">= 1"),
        ("train.outer_lr", 0 < t.outer_lr < math.inf, "> 0 and finite"),
        ("data.image_size", 8 <= cfg.data.image_size <= MAX_IMAGE_SIZE, f"in [8, {MAX_IMAGE_SIZE}]"),
        ("data.negatives", _negatives_ok(cfg.data.negatives, t.shots),
         "a whole number in [0, train.shots) or a fraction in [0, 1)"),
        ("seed", 0 <= cfg.seed <= MAX_SEED - 1, f"in [0, {MAX_SEED - 1}]"),
        ("train.data_seed_offset", 0 <= cfg.seed + t.data_seed_offset <= MAX_SEED,
         f"such that seed + data_seed_offset is in [0, {MAX_SEED}]"),
        ("eval.episodes", e.episodes >= 1, ">= 1"), ("train.val_every", t.val_every >= 1, ">= 1"),
        ("train.val_episodes", t.val_episodes >= 1, ">= 1"),
        ("train.checkpoint_every", t.checkpoint_every >= 1, ">= 1"),
        ("train.grad_clip", t.grad_clip >= 0, ">= 0 (0: no clipping)"),
        ("train.max_loss", t.max_loss > 0, "> 0 (not NaN)"),
        ("train.dist_timeout", t.dist_timeout > 0, "> 0 seconds"),
        ("eval.shots", bool(e.shots) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                              for s in e.shots), "a non-empty list of integers >= 1"),
        ("eval.queries", e.queries >= 1, ">= 1"), ("eval.threshold", 0 < e.threshold < 1, "in (0, 1)"),
        ("eval.long_steps", e.long_steps >= 0, ">= 0"),
        ("eval.long_episodes", e.long_episodes >= 0, ">= 0 (0: all episodes)"),
        ("eval.batch_episodes", e.batch_episodes >= 1, ">= 1"),
        ("eval.lr_select_episodes", e.lr_select_episodes >= 1, ">= 1"),
        ("eval.tune_steps", bool(e.tune_steps) and all(isinstance(k, int) and k >= 0 for k in e.tune_steps),
         "a non-empty list of integers >= 0"),
        ("eval.tune_rate_scales", bool(e.tune_rate_scales) and all(_is_number(r) and r > 0 for r in e.tune_rate_scales),
         "a non-empty list of numbers > 0"),
        ("eval.tune_views", e.tune_views >= 0, ">= 0"),
        ("eval.transfer_images", e.transfer_images >= 0, ">= 0"),
        ("eval.probe_steps", bool(e.probe_steps) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                                         for k in e.probe_steps), "a non-empty list of integers >= 1"),
        ("eval.probe_rates", bool(e.probe_rates) and all(_is_number(r) and r > 0 for r in e.probe_rates),
         "a non-empty list of numbers > 0"),
        ("eval.tile", e.tile is None or e.tile >= 0, "null, or a whole number of pixels >= 1 (0: no tiling)"),
        ("eval.overlap", _overlap_ok(e.overlap, e.tile),
         "a fraction of the tile in [0, 1) or a whole number of pixels >= 1, below eval.tile"),
        ("output", bool(cfg.output.strip()), "a non-empty path"),
    ]
    for key, ok, want in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} has a bad value: {short_repr(_value(cfg, key))} (must be {want})")


def validate_algorithm(a: AlgorithmConfig) -> None:
    """The core algorithm options of the ``algorithm`` section (its keys and those in ``options``) against
    ``fewseg.algorithms.options.CORE_RULES``, each error naming the key (and the allowed values of an enumeration)."""
    given = [(f.name, getattr(a, f.name)) for f in dataclasses.fields(a)] + [
        (f"options.{k}", v) for k, v in a.options.items() if isinstance(k, str)]
    for name, value in given:
        want = core_problem(name.removeprefix("options."), value)
        if want is None:
            continue
        if want.startswith("one of "):
            raise ConfigError(f"config key 'algorithm.{name}' must be {want}; got {short_repr(value)}")
        raise ConfigError(f"config key 'algorithm.{name}' has a bad value: {short_repr(value)} (must be {want})")


def _negatives_ok(value, shots: int) -> bool:
    """``data.negatives``: a count that leaves a positive image in a train.shots support set, or a fraction."""
    if isinstance(value, int):
        return value == 0 or 0 <= value < shots
    return math.isfinite(value) and 0.0 <= value < 1.0


def _overlap_ok(value: float, tile: int | None) -> bool:
    """``eval.overlap``: a fraction in [0, 1), or whole pixels from 1 up and below ``eval.tile`` (when set)."""
    if not math.isfinite(value) or value < 0:
        return False
    if value < 1:
        return True
    return value == int(value) and (not tile or value < tile)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the generated reference (fewseg config; the README's table) ------------------------------------------------
def config_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, meaning) of every setting, sections expanded, in declaration order."""
    return reference.config_keys(cls, prefix)


def config_reference() -> str:
    """A Markdown table of every config key: dotted name, type, default (as YAML) and meaning."""
    return reference.reference_table(Config)


def write_reference(path: str | Path) -> bool:
    """Fill the config-reference block of ``path`` with :func:`config_reference`; whether the file changed."""
    return reference.write_reference(path, config_reference())
