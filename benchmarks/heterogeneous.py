"""The heterogeneous benchmark (issue 15): meta-train on a mixture of domains, score held-out classes per domain.

The recipe ``mixture_task_attention`` mixes the synthetic set (12 classes per split), CCP fold 0 and CamVid
fold 0 at 64 px; one task is one class of one domain, and every domain's test classes stay out of training and of
every choice (checkpoint selection and baseline rates use validation classes). Each method meta-trains with the
same budget (iterations x tasks per iteration x inner steps, the same data and initialisation seed) in its own
process, then ``fewseg evaluate`` scores it on the same fixed test episodes at 1 and 5 shots, per domain and
overall; the baselines (random-init, transfer, prototype, and zero-shot: the first method's checkpoint without
steps) run once, on the same episodes, after the methods. With
``eval.tune=false`` every method takes the recipe's ``eval_steps`` at its training rate. Finished runs are kept
in --output and reused, so an interrupted benchmark continues where it stopped.

    python benchmarks/heterogeneous.py                                   # 300 iterations, 104 episodes
    python benchmarks/heterogeneous.py --iterations 20 --episodes 12 --output /tmp/het_quick   # a smoke run
    python benchmarks/heterogeneous.py --only task-attention maml --baselines   # a subset, no baselines
    python benchmarks/heterogeneous.py --step-timing 15      # seconds per meta-step only, methods interleaved

Table: per domain and method, mIoU ± the per-episode 95% CI at each shot count; the mean 5-shot mIoU over the
domains; median seconds per meta-iteration (log.jsonl, validation excluded) and its ratio to maml's.
Training runs can share the machine with other work; ``--step-timing N`` measures the time ratio on its own: the
methods take turns in one process on the same N meta-batches of the recipe (after one warm-up step each), so the
machine's load falls on all of them alike; it prints the median seconds of ``meta_backward`` + optimiser step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "mixture_task_attention"

# name -> overrides of the recipe (which is task-attention): each method with its documented defaults
METHODS = {
    "task-attention": [],
    "maml": ["algorithm.name=maml", "algorithm.options={}"],
    "reptile": ["algorithm.name=reptile", "algorithm.options={}", "train.outer_optimizer=sgd", "train.outer_lr=1.0"],
}
BASELINES = ["zero-shot", "random-init", "transfer", "prototype"]


def fewseg(*argv: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    print("$ fewseg " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "fewseg", *argv], check=True, env=env)


def run_method(name: str, args) -> Path:
    out = Path(args.output) / name
    common = [f"train.iterations={args.iterations}", f"train.meta_batch={args.meta_batch}",
              f"train.val_every={args.val_every}", f"train.checkpoint_every={args.val_every}",
              f"train.val_episodes={args.val_episodes}", f"seed={args.seed}", "eval.tune=false",
              f"output={out}"]
    if not (out / "checkpoints" / "best" / "meta.json").exists():
        fewseg("train", "--config", RECIPE, "--no-progress", *METHODS[name], *common)
    if not (out / "eval.json").exists():
        fewseg("evaluate", "--checkpoint", str(out), "--shots", *map(str, args.shots), "--episodes",
               str(args.episodes))
    return out


def run_baselines(run: Path, args) -> Path:
    """The baselines on the same episodes, beside ``run`` (its checkpoint gives zero-shot): baselines.json."""
    out = run / "baselines.json"
    if not out.exists():
        fewseg("evaluate", "--checkpoint", str(run), "--shots", *map(str, args.shots), "--episodes",
               str(args.episodes), "--baselines", *args.baselines, "--output", str(out))
    return out


def seconds_per_iteration(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    times = [r["seconds"] for r in rows[1:] if "val_miou" not in r]  # the first step and validation steps out
    return statistics.median(times or [r["seconds"] for r in rows])


def table(runs: dict[str, Path], shots: list[int], baselines: Path | None = None) -> str:
    results = {name: json.loads((run / "eval.json").read_text())["results"] for name, run in runs.items()}
    if baselines is not None:
        results["baselines"] = json.loads(baselines.read_text())["results"]
    rows_by_method: dict[str, dict] = {}  # method -> {shot: summary}
    for name, res in results.items():
        for s in shots:
            for method, summary in res[str(s)].items():
                if method == name or method not in runs:  # the run's own method, and baselines once
                    rows_by_method.setdefault(method, {})[s] = summary
    domains = sorted({d for per in rows_by_method.values() for r in per.values() for d in r.get("per_domain", {})})
    speed = {name: seconds_per_iteration(run) for name, run in runs.items()}
    ref = speed.get("maml")
    head = ("| domain | method | " + " | ".join(f"{s}-shot mIoU ± 95% CI" for s in shots) + " |")
    lines = [head, "|---|---|" + "---|" * len(shots)]
    for d in [*domains, "all"]:
        for method, per in rows_by_method.items():
            cells = []
            for s in shots:
                r = per[s] if d == "all" else per[s]["per_domain"][d]
                cells.append(f"{100 * r['miou']:.1f} ± {100 * r['miou_ci95']:.1f}")
            lines.append(f"| {d} | {method} | " + " | ".join(cells) + " |")
    lines += ["", f"| method | mean {max(shots)}-shot mIoU over domains | s / meta-iteration | vs maml |",
              "|---|---|---|---|"]
    for method, per in rows_by_method.items():
        mean = statistics.mean(per[max(shots)]["per_domain"][d]["miou"] for d in domains)
        t = speed.get(method)
        lines.append(f"| {method} | {100 * mean:.1f} | {'-' if t is None else f'{t:.2f}'} | "
                     f"{'-' if t is None or not ref else f'{t / ref:.2f}x'} |")
    return "\n".join(lines)


def step_timing(methods: list[str], steps: int, meta_batch: int, seed: int) -> str:
    """Median seconds per meta-step of each method, interleaved on the same meta-batches in this process."""
    import time

    import torch

    from fewseg.config import load_config
    from fewseg.data.sampler import EpisodeSampler
    from fewseg.engine.builders import build_all, build_dataset

    learners = {}
    for name in methods:
        cfg = load_config(RECIPE, [*METHODS[name], f"seed={seed}"])
        algo = build_all(cfg, torch.device("cpu"))[1]
        make = torch.optim.SGD if cfg.train.outer_optimizer == "sgd" else torch.optim.Adam
        learners[name] = (algo, make(algo.parameters(), lr=cfg.train.outer_lr))
    cfg = load_config(RECIPE, [f"seed={seed}"])
    sampler = EpisodeSampler(build_dataset(cfg.data, "train", seed), cfg.train.shots, cfg.train.queries, seed=seed)
    batches = [sampler.meta_batch(meta_batch) for _ in range(steps + 1)]
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i, batch in enumerate(batches):
        for name, (algo, opt) in learners.items():
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            algo.meta_backward(batch, iteration=i)
            opt.step()
            if i:  # the first batch warms up
                times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["maml"]) if "maml" in times else None
    title = (f"{steps} meta-batches of {meta_batch} tasks ({RECIPE}), methods interleaved, "
             f"{torch.get_num_threads()} thread(s)")
    lines = [title, "", "| method | s / meta-step (median) | vs maml |", "|---|---|---|"]
    for name, ts in times.items():
        t = statistics.median(ts)
        lines.append(f"| {name} | {t:.2f} | {f'{t / ref:.2f}x' if ref else '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--val-episodes", type=int, default=24)
    p.add_argument("--episodes", type=int, default=104, help="test episodes per shot count (4 per test class)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baselines", nargs="*", default=BASELINES, help="beside the first method; none: no names")
    p.add_argument("--output", default=str(ROOT / "runs" / "heterogeneous"))
    p.add_argument("--step-timing", type=int, metavar="N", help="only time N meta-steps per method, interleaved")
    args = p.parse_args(argv)
    if args.step_timing:
        print(step_timing(args.only, args.step_timing, args.meta_batch, args.seed))
        return
    runs = {name: run_method(name, args) for name in args.only}
    baselines = run_baselines(runs[args.only[0]], args) if args.baselines else None
    print(table(runs, args.shots, baselines))


if __name__ == "__main__":
    main()
