"""Every algorithm of the MAML family under one budget, on one dataset; one table.

Each algorithm meta-trains from the same initialisation with the same budget (iterations x meta-batch x
inner steps, the same images), is scored on the same fixed test episodes (1- and 5-shot, held-out classes),
beside its own zero-shot score (the meta-learned weights without adaptation). Each run is a fresh
subprocess, so its peak memory is its own; results are kept as JSON in --output and reused, so an
interrupted benchmark continues where it stopped.

    python benchmarks/algorithms.py --dataset synthetic                 # the demo recipe, 200 iterations
    python benchmarks/algorithms.py --dataset ccp --iterations 120      # ../shared/data/ccp, fold 0, 64 px
    python benchmarks/algorithms.py --dataset synthetic --only maml anil --episodes 20   # a subset, quick

Columns: test mIoU (mean over classes of the I/U accumulated over episodes) and the per-episode IoU 95% CI
for 1 and 5 shots, the zero-shot mIoU, median seconds per meta-training iteration, peak step memory (max RSS
growth over three meta-steps on one meta-batch, before training) and the meta-training wall time.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from meta_step import rss_mb  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent

# name -> (algorithm, extra overrides): the family, each with its documented defaults
VARIANTS = {
    "maml": ("maml", []),
    "fomaml": ("fomaml", []),
    "reptile": ("reptile", ["train.outer_optimizer=sgd", "train.outer_lr=1.0"]),
    "meta-sgd": ("meta-sgd", []),
    "anil": ("anil", []),
    "maml++": ("maml++", []),  # msl / first-order phases scaled to the budget below
    "mr-maml": ("mr-maml", ["algorithm.options.kl_weight=0.0001"]),
    "maml+prox": ("maml", ["algorithm.options.proximal=1.0"]),
    "maml+hard-tasks": ("maml", ["algorithm.options.task_weighting=hard", "algorithm.options.weight_temperature=0.1"]),
}

# per dataset: the recipe and the overrides that make it fit the budget
RECIPES = {
    "synthetic": ("configs/synthetic_maml.yaml", ["algorithm.first_order=false"]),  # MAML second order, as named
    "ccp": ("configs/ccp_maml.yaml", ["data.image_size=64", "model.options.depth=3", "model.options.width=8",
                                      "algorithm.inner_lr=0.2", "data.options.cache=true"]),
}


def run_one(args) -> dict:
    """Measure step memory, meta-train, evaluate; one algorithm (in its own process)."""
    from fewseg.config import load_config
    from fewseg.engine.session import evaluate_checkpoint
    from fewseg.engine.trainer import Trainer

    algorithm, extra = VARIANTS[args.variant]
    recipe, recipe_overrides = RECIPES[args.dataset]
    out = Path(args.output) / args.variant
    overrides = [*recipe_overrides, f"algorithm.name={algorithm}", *extra, f"train.iterations={args.iterations}",
                 f"train.val_every={max(args.iterations // 3, 1)}", f"train.checkpoint_every={args.iterations}",
                 f"output={out}", f"eval.episodes={args.episodes}"]
    if algorithm == "maml++":
        overrides += [f"algorithm.options.msl_iterations={args.iterations // 3}",
                      f"algorithm.options.first_order_iterations={args.iterations // 6}"]
    cfg = load_config(ROOT / recipe, overrides)
    trainer = Trainer(cfg, progress=False)

    # peak step memory: three meta-steps on one batch, before any dataset cache grows; the batch comes from
    # a sampler of its own, so training then sees exactly the episodes `fewseg train` would
    from fewseg.data.sampler import EpisodeSampler
    batch = EpisodeSampler(trainer.train_set, cfg.train.shots, cfg.train.queries, seed=12345).meta_batch(
        cfg.train.meta_batch)
    state = {k: v.clone() for k, v in trainer.algo.state_dict().items()}
    past_first_order = args.iterations // 6  # maml++: past its first-order phase (the costlier one)
    before = rss_mb()
    for _ in range(3):
        trainer.optimizer.zero_grad()
        trainer.algo.meta_backward(batch, iteration=past_first_order)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    trainer.optimizer.zero_grad()
    trainer.algo.load_state_dict(state)  # nothing of the measurement reaches training

    t0 = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    per_it = statistics.median(r["seconds"] - r["data_seconds"] for r in rows)
    record = evaluate_checkpoint(out, shots=(1, 5), episodes=args.episodes, seed=0, baselines=["zero-shot"],
                                 output=out / "eval.json", log=lambda *_: None)
    res = record["results"]
    return {"variant": args.variant, "algorithm": algorithm, "overrides": overrides, "train_seconds": train_s,
            "seconds_per_iteration": per_it, "peak_step_mb": peak,
            "budget": f"{cfg.train.iterations} it x {cfg.train.meta_batch} tasks x {cfg.algorithm.inner_steps} "
                      f"steps x ({cfg.train.shots}+{cfg.train.queries}) images",
            **{f"{s}shot": {"miou": res[str(s)][algorithm]["miou"], "ci": res[str(s)][algorithm]["episode_iou_ci95"],
                            "ep": res[str(s)][algorithm]["episode_iou_mean"],
                            "zero_shot": res[str(s)]["zero-shot"]["miou"]} for s in (1, 5)}}


def table(records: list[dict]) -> str:
    head = ("| algorithm | 1-shot mIoU | 1-shot ep. IoU ± CI | 5-shot mIoU | 5-shot ep. IoU ± CI | zero-shot mIoU (5) "
            "| s/iteration | peak step MB | meta-train s |\n|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in records:
        one, five = r["1shot"], r["5shot"]
        rows.append(f"| {r['variant']} | {100 * one['miou']:.1f} | {100 * one['ep']:.1f} ± {100 * one['ci']:.1f} | "
                    f"{100 * five['miou']:.1f} | {100 * five['ep']:.1f} ± {100 * five['ci']:.1f} | "
                    f"{100 * five['zero_shot']:.1f} | {r['seconds_per_iteration']:.2f} | {r['peak_step_mb']:.0f} | "
                    f"{r['train_seconds']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(RECIPES), default="synthetic")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--episodes", type=int, default=100, help="test episodes per shot count")
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--output", default=None, help="default: runs/bench_algorithms_<dataset>")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.output = args.output or str(ROOT / "runs" / f"bench_algorithms_{args.dataset}")
    if args.one:
        print(json.dumps(run_one(args)))
        return
    records = []
    for variant in args.only:
        path = Path(args.output) / f"{variant}.json"
        if path.exists() and json.loads(path.read_text()).get("iterations") == args.iterations:
            records.append(json.loads(path.read_text()))
            continue
        cmd = [sys.executable, __file__, "--one", "--variant", variant, "--dataset", args.dataset,
               "--iterations", str(args.iterations), "--episodes", str(args.episodes), "--output", args.output]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        if out.returncode:
            print(f"{variant}: failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            continue
        record = json.loads(out.stdout.strip().splitlines()[-1])
        record["iterations"], record["episodes"] = args.iterations, args.episodes
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
        records.append(record)
        print(f"{variant}: 5-shot mIoU {100 * record['5shot']['miou']:.1f}", file=sys.stderr, flush=True)
    if records:
        print(f"# {args.dataset}: {records[0]['budget']}; test episodes per shot count: {args.episodes}, seed 0")
        print(table(records))


if __name__ == "__main__":
    main()
