"""The options of the MAML family, declared: each algorithm names the options it honours and refuses the rest.

``CORE_OPTIONS`` are the options of ``MetaAlgorithm`` (MAML) with their defaults. An algorithm class declares
``OPTIONS`` (the names it honours: core ones plus its own) and ``FIXED`` (core options it always sets itself,
e.g. FOMAML's ``first_order=True``). A core option outside ``OPTIONS`` may only be passed at its default (or its
fixed value): anything else is refused in one line naming the option, never silently ignored.

Example:
    >>> from fewseg.algorithms.options import resolve_options
    >>> resolve_options("reptile", frozenset({"inner_lr"}), {}, {"inner_lr": 0.1})["inner_lr"]
    0.1
"""
from __future__ import annotations

from fewseg.choices import STRATEGIES

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
}


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
    """Range checks of the core options, each error naming the option."""
    if not _is_int(o["inner_steps"]) or o["inner_steps"] < 0:
        raise ValueError(f"inner_steps must be an integer >= 0, got {o['inner_steps']!r}")
    if not o["inner_lr"] > 0:
        raise ValueError(f"inner_lr must be > 0, got {o['inner_lr']!r}")
    if o["strategy"] not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {o['strategy']!r}")
    if not _is_int(o["task_chunk"]) or o["task_chunk"] < 0:
        raise ValueError(f"task_chunk must be an integer >= 0, got {o['task_chunk']!r}")
    if o["task_chunk"] and o["strategy"] == "loop":
        raise ValueError("task_chunk applies to strategy 'vmap' (or 'auto' on CUDA), not to strategy 'loop'")
    if o["eval_steps"] is not None and (not _is_int(o["eval_steps"]) or o["eval_steps"] < 0):
        raise ValueError(f"eval_steps must be an integer >= 0, got {o['eval_steps']!r}")
    if not o["proximal"] >= 0:
        raise ValueError(f"proximal must be >= 0, got {o['proximal']!r}")
    if o["inner_checkpoint"] and o["strategy"] == "vmap":
        raise ValueError("inner_checkpoint processes tasks one at a time: use strategy 'loop' or 'auto'")
    images = o["checkpoint_images"]
    if not _is_int(images) or images < 0 or (images and not o["inner_checkpoint"]):
        raise ValueError(f"checkpoint_images must be an integer >= 0 and needs inner_checkpoint=True, got "
                         f"checkpoint_images={images}, inner_checkpoint={o['inner_checkpoint']}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (a is None and b is None) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b)
