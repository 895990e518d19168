"""The options of the MAML family, declared: each algorithm names the options it honours and refuses the rest.

``CORE_OPTIONS`` are the options of ``MetaAlgorithm`` (MAML) with their defaults, and ``CORE_RULES`` the value
each must have: the one definition that ``fewseg.config`` (the ``algorithm`` section of a config) derives its
defaults and checks from. An algorithm class declares ``OPTIONS`` (the names it honours: core ones plus its own)
and ``FIXED`` (core options it always sets itself, e.g. FOMAML's ``first_order=True``). A core option outside
``OPTIONS`` may only be passed at its default (or its fixed value): anything else is refused in one line naming
the option, never silently ignored. An algorithm's own options are the keywords of its ``__init__``, their
defaults the keywords' defaults (:func:`non_default` reads them from there).

Example:
    >>> from fewseg.algorithms.options import resolve_options
    >>> resolve_options("reptile", frozenset({"inner_lr"}), {}, {"inner_lr": 0.1})["inner_lr"]
    0.1
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable

from fewseg.choices import STRATEGIES
from fewseg.losses import LOSSES

CORE_OPTIONS: dict[str, object] = {
    "inner_steps": 5,            # K inner SGD steps on the support loss
    "inner_lr": 0.01,            # alpha
    "first_order": False,        # drop second-order terms (FOMAML)
    "loss": "bce",               # fewseg.losses name
    "strategy": "auto",          # auto | loop | vmap
    "task_chunk": 0,             # tasks per vmap pass (0 = all)
    "eval_steps": None,          # inner steps at test time (None = inner_steps)
    "adapt_pattern": None,       # regex: only matching parameters adapt (None = all)
    "proximal": 0.0,             # lambda of lambda/2 ||phi - theta||^2 in the inner loss
    "batchnorm": "error",        # error | frozen-stats | batch-stats | group-norm (models/norms.py)
    "task_weighting": "uniform",  # uniform | hard | class-frequency
    "weight_temperature": 1.0,   # hard weighting: softmax temperature
    "weight_grad": False,        # hard weighting: differentiate the weights too
    "frequency_power": 1.0,      # class-frequency weighting: w ~ n_c ** -power
    "inner_checkpoint": False,   # recompute inner steps in the backward (memory flat in K)
    "checkpoint_images": 0,      # with inner_checkpoint: images per pass (0 = whole sets)
    "cache_encoder": True,       # inputs the inner loop leaves alone computed once per task (the same numbers):
                                 # the encoder's features where the model splits (encoder_prefix) and no encoder
                                 # parameter adapts; ANIL on models without that split: the body's features
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


# option -> (test of a value, what a value must be): checked by MetaAlgorithm and by the config's algorithm section
CORE_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "inner_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "inner_lr": (lambda v: _is_number(v) and 0 < v < math.inf, "a number > 0 and finite"),
    "first_order": (lambda v: isinstance(v, bool), "true or false"),
    "loss": (lambda v: v in LOSSES, "one of " + ", ".join(LOSSES)),
    "strategy": (lambda v: v in STRATEGIES, "one of " + ", ".join(STRATEGIES)),
    "task_chunk": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "eval_steps": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0 or null"),
    "proximal": (lambda v: _is_number(v) and 0 <= v < math.inf, "a number >= 0 and finite"),
    "cache_encoder": (lambda v: isinstance(v, bool), "true or false"),
}


def core_problem(name: str, value: object) -> str | None:
    """What ``value`` of core option ``name`` must be, if it is not (None when it is fine or unchecked here)."""
    rule = CORE_RULES.get(name)
    return None if rule is None or rule[0](value) else rule[1]


def resolve_options(algorithm: str, supported: frozenset[str], fixed: dict, given: dict) -> dict:
    """The core options with defaults filled in and fixed values applied; one-line ValueError otherwise."""
    unknown = sorted(set(given) - set(CORE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for algorithm {algorithm!r}; its options: "
                         f"{', '.join(sorted(supported | set(fixed)))}")
    for name, value in given.items():
        if name in supported or _same(value, CORE_OPTIONS[name]) or (name in fixed and _same(value, fixed[name])):
            continue
        why = f" ({algorithm} always uses {name}={fixed[name]!r})" if name in fixed else ""
        raise ValueError(f"option {name}={value!r} is not supported by algorithm {algorithm!r}{why}; its options: "
                         f"{', '.join(sorted(supported))}")
    return {**CORE_OPTIONS, **given, **fixed}


def check_core_values(o: dict) -> None:
    """Value checks of the core options (``CORE_RULES``, then the combinations), each error naming the option."""
    for name in CORE_RULES:
        want = core_problem(name, o[name])
        if want is not None:
            raise ValueError(f"{name} must be {want}, got {o[name]!r}")
    if o["task_chunk"] and o["strategy"] == "loop":
        raise ValueError("task_chunk applies to strategy 'vmap' (or 'auto' on CUDA), not to strategy 'loop'")
    if o["inner_checkpoint"] and o["strategy"] == "vmap":
        raise ValueError("inner_checkpoint processes tasks one at a time: use strategy 'loop' or 'auto'")
    images = o["checkpoint_images"]
    if not _is_int(images) or images < 0 or (images and not o["inner_checkpoint"]):
        raise ValueError(f"checkpoint_images must be an integer >= 0 and needs inner_checkpoint=True, got "
                         f"checkpoint_images={images}, inner_checkpoint={o['inner_checkpoint']}")


def non_default(init: Callable, **values) -> list[str]:
    """The names among ``values`` whose value differs from the default that ``init`` (an algorithm's
    ``__init__``) declares for that keyword: the one place an algorithm's own defaults are written.

    Example:
        >>> def __init__(self, model, memory_slots: int = 8, modulate_pattern=None): ...
        >>> non_default(__init__, memory_slots=8, modulate_pattern="^up")
        ['modulate_pattern']
    """
    params = inspect.signature(init).parameters
    return [name for name, value in values.items() if not _same(value, params[name].default)]


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (a is None and b is None) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b)
