"""``fewseg demo``: meta-train on the embedded synthetic set, evaluate against every baseline, write a report.

The recipe is the shipped ``synthetic_maml`` (``fewseg config --show synthetic_maml``); the demo changes only
its name, output, device and seed (``--seed``), and ``--quick`` shrinks it to a sub-minute smoke run of the
same path. Writes ``runs/demo/``: checkpoints, log.jsonl, eval.json, training.png, miou_vs_steps.png,
miou_vs_shots.png, overlays.png and report.md (embedding them).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fewseg.config import Config, load_config
from fewseg.data.sampler import EpisodeSampler
from fewseg.engine.builders import build_dataset, model_channels
from fewseg.engine.evaluator import MetaLearner, evaluate_steps
from fewseg.engine.protocol import build_methods, format_table, run_protocol
from fewseg.engine.trainer import Trainer
from fewseg.registry import BASELINES
from fewseg.report.plots import plot_curves, plot_overlay_grid, plot_training

RECIPE = "synthetic_maml"  # shipped in fewseg/configs; settings chosen on val classes
QUICK = ["train.iterations=10", "train.meta_batch=2", "train.val_every=5", "train.val_episodes=4",
         "train.checkpoint_every=5", "eval.episodes=4", "eval.long_steps=5", "eval.transfer_images=100",
         "eval.lr_select_episodes=2", "eval.tune_steps=[0,5,10]", "eval.tune_rate_scales=[1.0]", "eval.tune_views=2"]


REPRODUCIBILITY_NOTE = (
    "Note: these results are bit-identical only on the same machine, torch build and thread count; across CPUs,\n"
    "meta-training amplifies rounding differences, so compare against the multi-seed mean ± spread\n"
    "in docs/results.md.")


def demo_config(output: str | Path = "runs/demo", quick: bool = False, device: str = "cpu", seed: int = 0,
                overrides: list[str] = ()) -> Config:
    """The ``synthetic_maml`` recipe with the demo's name, output, device and seed (and ``--quick`` keys)."""
    return load_config(RECIPE, ["name=demo", *(QUICK if quick else []), f"output={Path(output)}",
                                f"device={device}", f"seed={seed}", *overrides])


# the from-scratch baselines; the frozen ImageNet ones (imagenet-prototype, linear-probe) run with
# `fewseg evaluate --baselines` (their schedule search would add minutes to the demo)
DEMO_BASELINES = [n for n in BASELINES.names() if n not in ("imagenet-prototype", "linear-probe")]


STEP_GRID, QUICK_STEP_GRID = [0, 1, 2, 5, 10, 20], [0, 1, 2]
CURVE_METHODS = ("random-init", "transfer")  # beside the meta-learned model on the steps curve


class _DemoTrainer(Trainer):
    """The trainer, counting its iterations (and validations) on the demo's one progress bar."""

    def __init__(self, cfg: Config, work: DemoWork):
        super().__init__(cfg, progress=False)
        self._work = work

    def _after_iteration(self, *args, **kwargs) -> None:
        super()._after_iteration(*args, **kwargs)
        self._work.trained(self.iteration)


class DemoWork:
    """The demo's one progress bar. Its units are adaptation steps on one episode's support set (each step
    counted with the step that evaluates it): a meta-training iteration weighs meta_batch x (inner_steps + 1) x 2
    (second order), a validation val_episodes x (eval_steps + 1), transfer pre-training its image passes / 5, the
    rate selection rates x episodes x (steps + 1) per fine-tuned baseline, a test episode (steps + 1) of its
    method, a steps-curve method its episodes x (largest k + 1). The total is fixed at the start from the config
    and corrected once the baselines are built; :meth:`close` checks that the work done adds up to it."""

    def __init__(self, cfg: Config, curve_episodes: int, step_grid: list[int], progress: bool = True):
        self.cfg, self.curve_episodes, self.step_grid = cfg, curve_episodes, step_grid
        self.done_iterations = 0
        steps = cfg.algorithm.eval_steps if cfg.algorithm.eval_steps is not None else cfg.algorithm.inner_steps
        planned = {cfg.algorithm.name: steps, "zero-shot": 0, "random-init": steps,
                   "random-init-long": cfg.eval.long_steps, "transfer": steps, "prototype": 0}
        total = (self.train_units() + self.setup_units(steps)
                 + self._eval_units({name: (k, cfg.eval.long_episodes if name == "random-init-long" else 0)
                                     for name, k in planned.items()}) + self._curve_units(3))
        self.bar = tqdm(total=total, disable=not progress, desc="fewseg demo", unit="step", dynamic_ncols=True,
                        smoothing=0.1)

    # --- the units ---------------------------------------------------------------------------------------------
    def _iteration_units(self) -> int:
        a, t = self.cfg.algorithm, self.cfg.train
        return t.meta_batch * (a.inner_steps + 1) * (1 if a.first_order else 2)

    def _validation_units(self) -> int:
        a, t = self.cfg.algorithm, self.cfg.train
        return t.val_episodes * ((a.eval_steps if a.eval_steps is not None else a.inner_steps) + 1)

    def train_units(self) -> int:
        t = self.cfg.train
        validations = sum(1 for i in range(1, t.iterations + 1) if i % t.val_every == 0 or i == t.iterations)
        return t.iterations * self._iteration_units() + validations * self._validation_units()

    def setup_units(self, steps: int) -> int:
        from fewseg.baselines.context import LR_CANDIDATES, image_passes_per_iteration
        c = self.cfg
        passes = c.eval.transfer_images or c.train.iterations * image_passes_per_iteration(c)
        return max(1, passes // 5) + 2 * len(LR_CANDIDATES) * c.eval.lr_select_episodes * (steps + 1)

    def _eval_units(self, methods: dict[str, tuple[int, int]]) -> int:
        e = self.cfg.eval
        return sum(len(e.shots) * (min(n, e.episodes) if n else e.episodes) * (k + 1) for k, n in methods.values())

    def _curve_units(self, methods: int) -> int:
        return methods * self.curve_episodes * (max(self.step_grid) + 1)

    @staticmethod
    def method_steps(method) -> int:
        return int(getattr(method.learner, "steps", 0) or 0)

    # --- progress -----------------------------------------------------------------------------------------------
    def trained(self, iteration: int) -> None:
        t = self.cfg.train
        for i in range(self.done_iterations + 1, iteration + 1):
            validated = i % t.val_every == 0 or i == t.iterations
            self.bar.update(self._iteration_units() + (self._validation_units() if validated else 0))
        self.done_iterations = max(self.done_iterations, iteration)

    def baselines_built(self, methods, steps: int, curve_methods: int) -> None:
        """The setup's units done; the rest of the total recomputed from the methods actually built."""
        self.bar.update(self.setup_units(steps))
        rest = self._eval_units({m.name: (self.method_steps(m), m.episodes or 0) for m in methods}) \
            + self._curve_units(curve_methods)
        self.bar.total = self.bar.n + rest
        self.bar.refresh()

    def episode(self, method, shots: int) -> None:
        self.bar.update(self.method_steps(method) + 1)

    def curve_done(self) -> None:
        self.bar.update(self.curve_episodes * (max(self.step_grid) + 1))

    def write(self, line: str) -> None:
        if self.bar.disable:
            print(line)
        else:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def run_demo(output: str | Path = "runs/demo", quick: bool = False, device: str = "cpu", seed: int = 0,
             overrides: list[str] = (), log=None, progress: bool = True) -> dict:
    """Meta-train the demo recipe, evaluate it beside every baseline, plot, and write ``report.md``.

    One progress bar covers the whole job (``progress=False``: none); ``log`` (default: printed above the bar)
    gets the phase and result lines."""
    t_start = time.perf_counter()
    out = Path(output)
    cfg = demo_config(out, quick, device, seed, overrides)
    step_grid = QUICK_STEP_GRID if quick else STEP_GRID
    curve_count = max(cfg.eval.episodes // 3, 4)
    work = DemoWork(cfg, curve_count, step_grid, progress)
    log = log or work.write
    try:
        record = _run(out, cfg, quick, device, log, work, step_grid, curve_count, t_start)
    finally:
        work.close()
    log(f"report: {out / 'report.md'} ({record['total_seconds']:.0f} s in all, "
        f"meta-training {record['train_seconds']:.0f} s)")
    return record


def _run(out: Path, cfg: Config, quick: bool, device: str, log, work: DemoWork, step_grid: list[int],
         curve_count: int, t_start: float) -> dict:
    log(f"[1/4] meta-training {cfg.algorithm.name} on {cfg.model.name}, {cfg.train.iterations} iterations -> {out}")
    trainer = _DemoTrainer(cfg, work)
    trainer.fit()
    t_train = time.perf_counter() - t_start
    best = out / "checkpoints" / "best"
    from fewseg.engine.session import load_algorithm
    cfg, algo, _ = load_algorithm(best, device)

    log("[2/4] baselines (transfer pre-training uses the same image budget as meta-training)")
    test_set = build_dataset(cfg.data, "test", cfg.seed, model_channels(cfg))
    train_set, val_set = trainer.train_set, trainer.val_set
    steps = algo.eval_steps
    methods = build_methods(cfg, algo, steps, DEMO_BASELINES, train_set, val_set, out, device, log,
                            progress=False)
    by_name = {m.name: m for m in methods}
    work.baselines_built(methods, steps, 1 + sum(name in by_name for name in CURVE_METHODS))
    log(f"[3/4] test episodes: {', '.join(f'{s}-shot' for s in cfg.eval.shots)}")
    results = run_protocol(methods, test_set, cfg.eval.shots, cfg.eval.queries, cfg.eval.episodes, cfg.seed,
                           device, log, threshold=cfg.eval.threshold, on_episode=work.episode)
    table = format_table(results)
    log(table)
    log(REPRODUCIBILITY_NOTE)

    log("[4/4] curves and overlays")
    curve_eps = EpisodeSampler(test_set, 5, cfg.eval.queries, seed=cfg.seed + 11).fixed_episodes(curve_count)
    steps_curve = steps_curves(algo, by_name, curve_eps, step_grid, cfg.eval.threshold, device,
                               on_method=work.curve_done)
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
    return record


def steps_curves(algo, by_name: dict, episodes, step_grid: list[int], threshold: float, device,
                 on_method=None) -> dict:
    """{method: {k: mIoU after k steps}} for the meta-learned model and the fine-tuned baselines of
    :data:`CURVE_METHODS`: one adaptation per episode to the largest k, scored at each k of the grid
    (:func:`~fewseg.engine.evaluator.evaluate_steps`: the numbers of one evaluation per k)."""
    learners = {algo.name: MetaLearner(algo, steps=max(step_grid))}
    learners.update({name: by_name[name].learner for name in CURVE_METHODS if name in by_name})
    curves = {}
    for name, learner in learners.items():
        curves[name] = {k: s["miou"] for k, s in evaluate_steps(learner, episodes, step_grid, threshold,
                                                                device).items()}
        if on_method is not None:
            on_method()
    return curves


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
