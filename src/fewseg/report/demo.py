"""``fewseg demo``: meta-train on the embedded synthetic set, evaluate against every baseline, write a report.

The recipe is the shipped ``synthetic_maml`` (``fewseg config --show synthetic_maml``); the demo changes only
its name, output, device and seed (``--seed``), and ``--quick`` shrinks it to a sub-minute smoke run of the
same path. Writes ``runs/demo/``: checkpoints, log.jsonl, eval.json, training.png, miou_vs_steps.png,
miou_vs_shots.png, overlays.png and report.md (embedding them).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from fewseg.config import Config, load_config
from fewseg.data.sampler import EpisodeSampler
from fewseg.engine.builders import build_dataset, model_channels
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.engine.protocol import build_methods, format_table, run_protocol
from fewseg.engine.trainer import Trainer
from fewseg.registry import BASELINES
from fewseg.report.plots import plot_curves, plot_overlay_grid, plot_training

RECIPE = "synthetic_maml"  # shipped in fewseg/configs; settings chosen on val classes
QUICK = ["train.iterations=10", "train.meta_batch=2", "train.val_every=5", "train.val_episodes=4",
         "train.checkpoint_every=5", "eval.episodes=4", "eval.long_steps=5", "eval.transfer_images=100",
         "eval.lr_select_episodes=2"]


REPRODUCIBILITY_NOTE = (
    "Note: these results are bit-identical only on the same machine, torch build and thread count; across CPUs,\n"
    "second-order meta-training amplifies rounding differences, so compare against the multi-seed mean ± spread\n"
    "in docs/results.md.")


def demo_config(output: str | Path = "runs/demo", quick: bool = False, device: str = "cpu", seed: int = 0,
                overrides: list[str] = ()) -> Config:
    """The ``synthetic_maml`` recipe with the demo's name, output, device and seed (and ``--quick`` keys)."""
    return load_config(RECIPE, ["name=demo", *(QUICK if quick else []), f"output={Path(output)}",
                                f"device={device}", f"seed={seed}", *overrides])


# the from-scratch baselines; the frozen ImageNet ones (imagenet-prototype, linear-probe) run with
# `fewseg evaluate --baselines` (their schedule search would add minutes to the demo)
DEMO_BASELINES = [n for n in BASELINES.names() if n not in ("imagenet-prototype", "linear-probe")]


def run_demo(output: str | Path = "runs/demo", quick: bool = False, device: str = "cpu", seed: int = 0,
             overrides: list[str] = (), log=print) -> dict:
    """Meta-train the demo recipe, evaluate it beside every baseline, plot, and write ``report.md``."""
    t_start = time.perf_counter()
    out = Path(output)
    cfg = demo_config(out, quick, device, seed, overrides)
    log(f"[1/4] meta-training {cfg.algorithm.name} on {cfg.model.name}, {cfg.train.iterations} iterations -> {out}")
    trainer = Trainer(cfg)
    trainer.fit()
    t_train = time.perf_counter() - t_start
    algo = trainer.algo.eval()
    best = out / "checkpoints" / "best"
    from fewseg.engine.session import load_algorithm
    cfg, algo, _ = load_algorithm(best, device)

    log("[2/4] baselines (transfer pre-training uses the same image budget as meta-training)")
    test_set = build_dataset(cfg.data, "test", cfg.seed, model_channels(cfg))
    train_set, val_set = trainer.train_set, trainer.val_set
    steps = algo.eval_steps
    methods = build_methods(cfg, algo, steps, DEMO_BASELINES, train_set, val_set, out, device, log)
    log(f"[3/4] test episodes: {', '.join(f'{s}-shot' for s in cfg.eval.shots)}")
    results = run_protocol(methods, test_set, cfg.eval.shots, cfg.eval.queries, cfg.eval.episodes, cfg.seed,
                           device, log, threshold=cfg.eval.threshold)
    table = format_table(results)
    log(table)
    log(REPRODUCIBILITY_NOTE)

    log("[4/4] curves and overlays")
    curve_eps = EpisodeSampler(test_set, 5, cfg.eval.queries, seed=cfg.seed + 11).fixed_episodes(
        max(cfg.eval.episodes // 3, 4))
    by_name = {m.name: m for m in methods}
    step_grid = [0, 1, 2, 5, 10, 20] if not quick else [0, 1, 2]
    threshold = cfg.eval.threshold
    steps_curve = {"maml": {k: evaluate(MetaLearner(algo, steps=k), curve_eps, threshold, device=device)["miou"]
                            for k in step_grid}}
    for name in ("random-init", "transfer"):
        if name in by_name:
            base = by_name[name].learner
            steps_curve[name] = {k: evaluate(dataclasses.replace(base, steps=k), curve_eps, threshold,
                                             device=device)["miou"] for k in step_grid}
    shots_curve = {name: {s: results[s][name]["miou"] for s in results} for name in by_name}
    plot_training(out / "log.jsonl", out / "training.png")
    plot_curves(steps_curve, "inner steps at test time (5-shot)", out / "miou_vs_steps.png", "mIoU vs steps")
    plot_curves(shots_curve, "shots", out / "miou_vs_shots.png", "mIoU vs shots")
    episode = EpisodeSampler(test_set, 5, 3, seed=cfg.seed + 12).sample()
    predictions = {}
    for m in methods:
        with torch.no_grad():
            predictions[m.name] = m.learner.adapt(episode.support_x, episode.support_y,
                                                  support_ignore=episode.support_ignore).predict(episode.query_x)
    plot_overlay_grid(episode, predictions, out / "overlays.png")

    total = time.perf_counter() - t_start
    record = {"results": {str(k): v for k, v in results.items()}, "table": table, "steps_curve": steps_curve,
              "train_seconds": t_train, "total_seconds": total, "config": cfg.to_dict()}
    (out / "eval.json").write_text(json.dumps(record, indent=1))
    write_report(out, cfg, table, record, test_set)
    log(f"report: {out / 'report.md'} ({total:.0f} s in all, meta-training {t_train:.0f} s)")
    return record


def write_report(out: Path, cfg, table: str, record: dict, test_set) -> Path:
    c = cfg
    text = f"""# fewseg demo report

Meta-training **{c.algorithm.name}** ({'first' if c.algorithm.first_order else 'second'} order) on **{c.model.name}**,
embedded synthetic dataset at {c.data.image_size}x{c.data.image_size}: {c.train.iterations} iterations x
{c.train.meta_batch} tasks, {c.train.shots} support + {c.train.queries} query images, {c.algorithm.inner_steps} inner
SGD steps at rate {c.algorithm.inner_lr} (test time: {c.algorithm.eval_steps if c.algorithm.eval_steps is not None
else c.algorithm.inner_steps} steps). Meta-training took {record['train_seconds']:.0f} s; everything
{record['total_seconds']:.0f} s.

## Test classes never seen in training ({len(test_set.class_ids())} classes, {c.eval.episodes} episodes per shot count)

mIoU = mean over classes of IoU from intersection/union summed over each class's episodes; FB-IoU = mean of
foreground and background IoU; episode IoU = mean per-episode foreground IoU with its 95% confidence interval.
Baseline fine-tuning rates were chosen on validation classes.

{table}

## Meta-training
![training curves](training.png)

## mIoU vs number of inner steps (5-shot)
![mIoU vs steps](miou_vs_steps.png)

## mIoU vs shots
![mIoU vs shots](miou_vs_shots.png)

## One test episode: support (green), query truth (green) and each method's prediction (red)
![overlays](overlays.png)
"""
    path = out / "report.md"
    path.write_text(text)
    return path
