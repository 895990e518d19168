"""Seconds and peak memory per MAML meta-step, per task strategy, against plain forward/backward.

Each configuration runs in a fresh subprocess so its peak memory (max RSS on CPU, max allocated on CUDA)
is its own. Prints a table: median of --repeats steps after --warmup, and the ratio to a plain
forward/backward step over the same image passes (T*(K*S+Q) images, no meta-gradient).

    python benchmarks/meta_step.py                         # seed-cnn and unet, 64x64, T=4, S=Q=5, K=5
    python benchmarks/meta_step.py --size 128 --tasks 16 --device cuda
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def model_kwargs(name: str) -> dict:
    return {"depth": 4, "width": 16} if name == "unet" else {}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(args) -> dict:
    import fewseg
    from fewseg.data.episode import MetaBatch

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = fewseg.create_model(args.model, **model_kwargs(args.model)).to(device)
    T, S, Q, H = args.tasks, args.shots, args.queries, args.size
    g = torch.Generator().manual_seed(0)
    batch = MetaBatch(torch.rand(T, S, 3, H, H, generator=g), (torch.rand(T, S, 1, H, H, generator=g) > .5).float(),
                      torch.rand(T, Q, 3, H, H, generator=g), (torch.rand(T, Q, 1, H, H, generator=g) > .5).float()
                      ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if args.strategy == "plain":
        images = torch.cat([batch.support_x.repeat(1, args.steps, 1, 1, 1), batch.query_x], 1).flatten(0, 1)
        masks = torch.cat([batch.support_y.repeat(1, args.steps, 1, 1, 1), batch.query_y], 1).flatten(0, 1)

        def step():
            opt.zero_grad()
            # the same image passes as a meta-step, in per-task mini-batches of S (or Q) images
            for chunk_x, chunk_y in zip(images.split(S), masks.split(S)):
                torch.nn.functional.binary_cross_entropy_with_logits(model(chunk_x), chunk_y).backward()
            opt.step()
    else:
        first_order = args.strategy.endswith("-fo")
        strategy = args.strategy.removesuffix("-fo")
        algo = fewseg.create_algorithm("maml", model, inner_steps=args.steps, inner_lr=0.01,
                                       first_order=first_order, strategy=strategy)

        def step():
            opt.zero_grad()
            algo.meta_backward(batch)
            opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base_rss = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {"median_s": statistics.median(times), "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["seed-cnn", "unet"])
    p.add_argument("--strategies", nargs="+", default=["plain", "loop", "vmap", "loop-fo"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args)))
        return
    print(f"# meta-step: {args.size}x{args.size}, T={args.tasks}, S={args.shots}, Q={args.queries}, K={args.steps}, "
          f"device={args.device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    print("| model | strategy | s/step | x plain | peak MB |")
    print("|---|---|---|---|---|")
    for model in args.models:
        plain = None
        for strategy in args.strategies:
            cmd = [sys.executable, __file__, "--one", "--model", model, "--strategy", strategy]
            for k in ("size", "tasks", "shots", "queries", "steps", "warmup", "repeats", "device", "threads"):
                cmd += [f"--{k}", str(getattr(args, k))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                print(f"| {model} | {strategy} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            plain = r["median_s"] if strategy == "plain" else plain
            ratio = f"{r['median_s'] / plain:.2f}" if plain else "-"
            print(f"| {model} | {strategy} | {r['median_s']:.3f} | {ratio} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
