"""The evaluation protocol: the meta-learned model beside every baseline, on the same test episodes.

For each number of shots, one fixed list of test episodes (seeded) is scored for every method;
per-class intersection/union gives mIoU (mean over classes) and FB-IoU, per-episode IoU gives a 95% CI.
Baseline fine-tuning rates are chosen on *validation* classes, never on test classes.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.baselines import FineTuneLearner, PrototypeLearner, pretrain_transfer
from fewseg.config import Config
from fewseg.data.base import SegmentationDataset
from fewseg.data.sampler import EpisodeSampler
from fewseg.engine.builders import build_model
from fewseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fewseg.engine.evaluator import Learner, MetaLearner, evaluate

BASELINES = ("zero-shot", "random-init", "random-init-long", "transfer", "prototype")
LR_CANDIDATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class Method:
    name: str
    budget: str  # the adaptation budget, printed in the table
    learner: Learner


def image_passes_per_iteration(cfg: Config) -> int:
    """Images through the network (forward+backward) per meta-iteration: T * (K*S + Q)."""
    t = cfg.train
    return t.meta_batch * (cfg.algorithm.inner_steps * t.shots + t.queries)


def fresh_model(cfg: Config, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model)


def transfer_model(cfg: Config, train_set: SegmentationDataset, run_dir: Path | None, device,
                   progress: bool = True) -> torch.nn.Module:
    """The transfer-learning network, trained once with the meta-training image budget and cached in the run."""
    model = fresh_model(cfg, cfg.seed + 7).to(device)
    path = run_dir / "checkpoints" / "transfer" if run_dir is not None else None
    budget = cfg.eval.transfer_images or cfg.train.iterations * image_passes_per_iteration(cfg)
    recipe = {"model": cfg.to_dict()["model"], "data": cfg.to_dict()["data"], "seed": cfg.seed,
              "image_passes": budget}
    if path is not None and (path / "weights.safetensors").exists():
        cached = load_checkpoint(path)
        if cached.meta.get("recipe") == recipe:  # reuse only a transfer model trained for this very recipe
            model.load_state_dict(cached.tensors)
            return model.eval()
    t0 = time.perf_counter()
    pretrain_transfer(model, train_set, image_passes=budget, seed=cfg.seed, loss=cfg.algorithm.loss,
                      device=device, progress=progress)
    if path is not None:
        save_checkpoint(path, dict(model.state_dict()),
                        {"config": cfg.to_dict(), "kind": "transfer", "recipe": recipe, "image_passes": budget,
                         "seconds": time.perf_counter() - t0})
    return model.eval()


def select_lr(make: Callable[[float], Learner], episodes, candidates=LR_CANDIDATES, device="cpu") -> float:
    """The candidate rate with the best mIoU on validation episodes."""
    scores = {lr: evaluate(make(lr), episodes, device=device)["miou"] for lr in candidates}
    return max(scores, key=scores.get)


def build_methods(cfg: Config, algo: MetaAlgorithm, steps: int, baselines: list[str],
                  train_set: SegmentationDataset | None, val_set: SegmentationDataset | None,
                  run_dir: Path | None, device, log: Callable[[str], None] = print) -> list[Method]:
    """The meta-learned learner and the requested baselines, rates tuned on val episodes."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from: {', '.join(BASELINES)}")
    inner_lr = algo.inner_lr
    methods = [Method(cfg.algorithm.name, f"{steps} steps (meta-learned init)", MetaLearner(algo, steps=steps))]
    if "zero-shot" in baselines:
        methods.append(Method("zero-shot", "0 steps (meta-learned init)", MetaLearner(algo, steps=0)))
    needs_val = {"random-init", "transfer"} & set(baselines)
    val_eps = []
    if needs_val and val_set is not None:
        val_eps = EpisodeSampler(val_set, cfg.train.shots, cfg.train.queries, seed=cfg.seed + 2).fixed_episodes(
            cfg.eval.lr_select_episodes)

    def tuned(name: str, model: torch.nn.Module, budget_prefix: str) -> Method:
        """``steps`` SGD steps from ``model`` at the rate that scores best on validation episodes."""
        lr = select_lr(lambda r: FineTuneLearner(model, steps, r), val_eps, device=device) if val_eps else inner_lr
        log(f"{name}: SGD rate {lr:g} chosen on validation classes")
        return Method(name, f"{budget_prefix}{steps} SGD steps, lr {lr:g}", FineTuneLearner(model, steps, lr))

    if "random-init" in baselines or "random-init-long" in baselines:
        random_model = fresh_model(cfg, cfg.seed + 5).to(device).eval()
        if "random-init" in baselines:
            methods.append(tuned("random-init", random_model, ""))
        if "random-init-long" in baselines:
            long = cfg.eval.long_steps
            methods.append(Method("random-init-long", f"{long} Adam steps, lr 1e-3",
                                  FineTuneLearner(random_model, long, 1e-3, optimizer="adam")))
    if {"transfer", "prototype"} & set(baselines):
        if train_set is None:
            raise ValueError("the transfer and prototype baselines need the training classes of the checkpoint's dataset")
        tmodel = transfer_model(cfg, train_set, run_dir, device)
        if "transfer" in baselines:
            methods.append(tuned("transfer", tmodel, "pre-train + "))
        if "prototype" in baselines:
            if not hasattr(tmodel, "features"):
                log("prototype: skipped, the model has no features() method")
            else:
                methods.append(Method("prototype", "0 steps (MAP + cosine, transfer encoder)",
                                      PrototypeLearner(copy.deepcopy(tmodel).features)))
    return methods


def run_protocol(methods: list[Method], test_set: SegmentationDataset, shots_list: list[int], queries: int,
                 episodes: int, seed: int, device, log: Callable[[str], None] = print,
                 full_resolution: bool = True) -> dict:
    """{shots: {method: summary + budget + seconds}} on fixed, seeded test episodes per shot count.

    full_resolution: score against the original label maps when the dataset offers them (real data)."""
    original = getattr(test_set, "full_resolution", None) if full_resolution else None
    results: dict = {}
    for shots in shots_list:
        eps = EpisodeSampler(test_set, shots, queries, seed=seed).fixed_episodes(episodes)
        results[shots] = {}
        for m in methods:
            t0 = time.perf_counter()
            summary = evaluate(m.learner, eps, device=device, full_resolution=original)
            summary.update(budget=m.budget, seconds=time.perf_counter() - t0)
            results[shots][m.name] = summary
            log(f"{shots}-shot {m.name}: mIoU {100 * summary['miou']:.1f} ({time.perf_counter() - t0:.0f}s)")
    return results


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
