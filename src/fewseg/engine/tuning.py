"""Choose a checkpoint's test-time plans on validation classes and store them in it (``fewseg tune``).

``fewseg train`` runs this on ``checkpoints/best`` after meta-training when ``eval.tune`` is true; ``fewseg tune
--checkpoint RUN`` runs it on any checkpoint (e.g. one trained before plans existed). The plans land in the
checkpoint's ``meta.json`` (``algorithm_state.test_time``), rewritten atomically with its weights unchanged, and
from then on ``evaluate``, ``adapt``, ``predict`` and :func:`fewseg.load` follow them unless told otherwise.
Only validation classes are read: the test split is never built.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fewseg.algorithms.test_time import AdaptationPlan, choose_plans
from fewseg.baselines.context import validation_episodes
from fewseg.engine.builders import build_dataset, model_channels
from fewseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fewseg.errors import ConfigError
from fewseg.loading import load_algorithm


def tune_checkpoint(checkpoint: str | Path, shots: Sequence[int] | None = None, device="cpu",
                    log: Callable[[str], None] = print) -> dict[int, AdaptationPlan]:
    """Choose the plans for ``shots`` (default ``eval.shots``) on the run's validation classes, write them into the
    checkpoint and return them. The grid and the episode count come from the run's ``eval`` config."""
    cfg, algo, ckpt_dir = load_algorithm(checkpoint, device)
    e = cfg.eval
    val_set = build_dataset(cfg.data, "val", cfg.seed, model_channels(cfg))
    shots = sorted(set(e.shots if shots is None else shots))
    episodes = {s: validation_episodes(cfg, val_set, s) for s in shots}
    if not any(episodes.values()):
        raise ConfigError(f"no validation episode of {shots} shots can be drawn from {val_set.name}'s val classes")
    log(f"choosing test-time plans on {len(val_set.class_ids())} validation classes of {val_set.name}")
    algo.test_time = choose_plans(algo, {s: eps for s, eps in episodes.items() if eps}, steps_grid=e.tune_steps,
                                  rate_scales=e.tune_rate_scales, views=e.tune_views,
                                  leave_one_out=e.tune_leave_one_out, threshold=e.threshold, seed=cfg.seed,
                                  device=device, log=log)
    ckpt = load_checkpoint(ckpt_dir)
    meta = {**ckpt.meta, "algorithm_state": {**ckpt.meta.get("algorithm_state", {}), **algo.extra_state()}}
    save_checkpoint(ckpt_dir, ckpt.tensors, meta, ckpt.optimizer_state)
    log(f"test-time plans written to {ckpt_dir}")
    return algo.test_time
