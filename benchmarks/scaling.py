"""Meta-iterations per second and per-rank peak memory for 1 and 2 ranks (torchrun, gloo, one thread per rank).

Each configuration runs as its own ``torch.distributed.run`` job: every rank draws the whole meta-batch from the
same seeded sampler, computes its block of tasks' meta-gradient, all-reduces it and takes an Adam step: the path
``fewseg train`` takes under torchrun. Prints a Markdown table: median seconds per meta-iteration over the timed
iterations, iterations per second, speed-up against 1 rank in the same run, and the peak resident memory of the
busiest rank.

    python benchmarks/scaling.py                        # demo recipe (U-Net 48 px, 4 tasks), 1 and 2 ranks
    python benchmarks/scaling.py --tasks 8 --iterations 12 --ranks 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    from fewseg.config import load_config
    from fewseg.data.sampler import EpisodeSampler
    from fewseg.distributed import close_process_group, init_process_group
    from fewseg.engine.builders import build_all, build_dataset

    torch.set_num_threads(1)
    cfg = load_config(args.recipe, [f"train.meta_batch={args.tasks}"])
    group = init_process_group(torch.device("cpu"))
    train_set = build_dataset(cfg.data, "train", cfg.seed)
    sampler = EpisodeSampler(train_set, cfg.train.shots, cfg.train.queries, seed=cfg.seed)
    _, algo = build_all(cfg, torch.device("cpu"), class_counts=sampler.class_counts())
    opt = torch.optim.Adam(algo.parameters(), lr=cfg.train.outer_lr)
    times = []
    for it in range(args.warmup + args.iterations):
        t0 = time.perf_counter()
        batch = sampler.meta_batch(cfg.train.meta_batch)
        opt.zero_grad(set_to_none=True)
        algo.meta_backward(batch, iteration=it, group=group)
        group.sum_grads(algo.parameters())
        opt.step()
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = group.gather_objects(peak_mb)
    if group.is_main:
        Path(args.worker).write_text(json.dumps({"times": times, "peak_mb": max(peaks)}))
    close_process_group()


def run(ranks: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               __file__, "--worker", str(out), "--recipe", args.recipe, "--tasks", str(args.tasks),
               "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="synthetic_maml")
    p.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch (the whole batch, all ranks)")
    p.add_argument("--iterations", type=int, default=8, help="timed meta-iterations")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    rows = {r: run(r, args) for r in args.ranks}
    base = statistics.median(rows[args.ranks[0]]["times"])
    print(f"recipe {args.recipe}, {args.tasks} tasks per meta-batch, {args.iterations} timed iterations "
          f"(after {args.warmup}), gloo, 1 thread per rank, {os.cpu_count()} CPU cores")
    print("| ranks | tasks per rank | s / meta-iteration (median) | meta-iterations / s | speed-up vs "
          f"{args.ranks[0]} rank | peak RSS per rank (MB) |\n|---|---|---|---|---|---|")
    for r, res in rows.items():
        med = statistics.median(res["times"])
        print(f"| {r} | {args.tasks / r:.1f} | {med:.3f} | {1 / med:.2f} | {base / med:.2f}x | {res['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
