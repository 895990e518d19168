"""The evaluation protocol: the meta-learned model beside every baseline, on the same test episodes.

For each number of shots, one fixed list of test episodes (seeded) is scored for every method;
per-class intersection/union gives mIoU (mean over classes) and FB-IoU, per-episode IoU gives a 95% CI.
Baseline fine-tuning rates are chosen on *validation* classes, never on test classes.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.test_time import describe_plans
from fewseg.baselines import BaselineContext, Method, check_baselines
from fewseg.config import Config
from fewseg.data.base import SegmentationDataset
from fewseg.data.sampler import EpisodeSampler
from fewseg.distributed import SINGLE, ProcessGroup
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.engine.tiled_eval import TiledEvaluation
from fewseg.registry import BASELINES
from fewseg.tiling import Tiling

__all__ = ["Method", "build_methods", "format_domain_table", "format_table", "run_protocol"]


def build_methods(cfg: Config, algo: MetaAlgorithm, steps: int | None, baselines: list[str],
                  train_set: SegmentationDataset | None, val_set: SegmentationDataset | None,
                  run_dir: Path | None, device, log: Callable[[str], None] = print,
                  shots: Sequence[int] = (), progress: bool = True) -> list[Method]:
    """The meta-learned learner, then the requested baselines in registration order (rates tuned on val).

    steps None with test-time plans stored in the checkpoint (``eval.tune``): the meta-learned model follows its
    plan per shot count and each fine-tuned baseline gets steps and rate chosen per shot count on the same
    validation episodes. Otherwise everything takes ``steps`` (default ``eval_steps``), baselines' rates tuned.
    progress: False hides transfer pre-training's progress bar."""
    names = check_baselines(baselines)
    per_shot = steps is None and bool(algo.test_time)
    steps = algo.eval_steps if steps is None else steps
    ctx = BaselineContext(cfg, algo, steps, train_set, val_set, run_dir, device, log, shots=tuple(shots),
                          per_shot=per_shot, progress=progress)
    if per_shot:
        methods = [Method(cfg.algorithm.name, f"meta-learned init, chosen on val: {describe_plans(algo, shots)}",
                          MetaLearner(algo))]
    else:
        methods = [Method(cfg.algorithm.name, f"{steps} steps (meta-learned init)", MetaLearner(algo, steps=steps))]
    for name in names:
        method = BASELINES.create(name, ctx)
        if method is not None:
            methods.append(method)
    return methods


def run_protocol(methods: list[Method], test_set: SegmentationDataset, shots_list: list[int], queries: int,
                 episodes: int, seed: int, device, log: Callable[[str], None] = print,
                 full_resolution: bool = True, threshold: float = 0.5, group: ProcessGroup = SINGLE,
                 tiling: Tiling | None = None, channels: int | None = None,
                 on_episode: Callable[[Method, int], None] | None = None) -> dict:
    """{shots: {method: summary + budget + seconds}} on fixed, seeded test episodes per shot count.

    full_resolution: score against the original label maps when the dataset offers them (real data).
    threshold: foreground probability cut (``eval.threshold``). group: ranks that share the episodes.
    tiling: large images at their own resolution (``eval.tile``; :mod:`fewseg.engine.tiled_eval`): every method
    adapts on support patches and predicts queries window by window, scored at their label maps' size; the same
    episodes. channels: the networks' input channels (tiled images are converted to them).
    A method with ``episodes`` set (random-init-long with ``eval.long_episodes``) is scored on the first that many
    of the episodes. on_episode(method, shots): after each episode a method has scored (progress)."""
    original = getattr(test_set, "full_resolution", None) if full_resolution else None
    tiled = None if tiling is None else TiledEvaluation.for_dataset(test_set, tiling, channels)
    domain_of = _domains(test_set)
    results: dict = {}
    for shots in shots_list:
        eps = EpisodeSampler(test_set, shots, queries, seed=seed).fixed_episodes(episodes)
        results[shots] = {}
        for m in methods:
            t0 = time.perf_counter()
            seen = None if on_episode is None else (lambda i, ep, probs, m=m, shots=shots: on_episode(m, shots))
            summary = evaluate(m.learner, eps[:m.episodes] if m.episodes else eps, threshold=threshold,
                               device=device, full_resolution=original, group=group, domain_of=domain_of,
                               tiled=tiled, on_episode=seen)
            summary.update(budget=m.budget, seconds=time.perf_counter() - t0)
            results[shots][m.name] = summary
            log(f"{shots}-shot {m.name}: mIoU {100 * summary['miou']:.1f} ({time.perf_counter() - t0:.0f}s)")
    return results


def _domains(test_set: SegmentationDataset) -> Callable[[int], str] | None:
    """class id -> domain, for a dataset that says its classes come from several domains (``domain_of(name)``,
    e.g. ``mixture``); None otherwise."""
    of_name = getattr(test_set, "domain_of", None)
    if of_name is None:
        return None
    names = test_set.class_names
    return lambda class_id: of_name(names[class_id])


def format_domain_table(results: dict) -> str:
    """A Markdown table per domain (empty string without ``per_domain``): one row per (domain, method), mIoU
    ± 95% CI and FB-IoU per shot count."""
    shots_list = list(results)
    first = next(iter(results.values()))
    methods = list(first)
    if not methods or "per_domain" not in first[methods[0]]:
        return ""
    domains = list(first[methods[0]]["per_domain"])
    head = "| domain | method | " + " | ".join(f"{s}-shot mIoU ± 95% CI | {s}-shot FB-IoU" for s in shots_list) + " |"
    rows = [head, "|---|---|" + "---|---|" * len(shots_list)]
    for d in domains:
        for m in methods:
            cells = []
            for s in shots_list:
                r = results[s][m]["per_domain"].get(d)
                cells += (["-", "-"] if r is None else
                          [f"{100 * r['miou']:.1f} ± {100 * r['miou_ci95']:.1f}", f"{100 * r['fb_iou']:.1f}"])
            rows.append(f"| {d} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def format_table(results: dict) -> str:
    """A Markdown table: one row per method, mIoU / FB-IoU / episode IoU +- 95% CI per shot count."""
    shots_list = list(results)
    methods = list(next(iter(results.values())))
    head = "| method | adaptation | " + " | ".join(
        f"{s}-shot mIoU | {s}-shot FB-IoU | {s}-shot ep. IoU ± 95% CI" for s in shots_list) + " |"
    sep = "|---|---|" + "---|---|---|" * len(shots_list)
    rows = [head, sep]
    for m in methods:
        cells = []
        for s in shots_list:
            r = results[s][m]
            cells += [f"{100 * r['miou']:.1f}", f"{100 * r['fb_iou']:.1f}",
                      f"{100 * r['episode_iou_mean']:.1f} ± {100 * r['episode_iou_ci95']:.1f}"]
        rows.append(f"| {m} | {results[shots_list[0]][m]['budget']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
