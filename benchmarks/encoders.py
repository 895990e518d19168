"""Seconds and peak memory per meta-step with timm encoders (``timm-unet``) against fewseg's U-Net.

Each configuration runs in a fresh subprocess, so its peak memory (max RSS growth on CPU, max allocated on
CUDA) is its own. Prints a table: median of --repeats meta-steps after --warmup, and the ratio to the U-Net at
the same image size, measured in the same run. Encoder modes:

    adapted   every parameter is meta-learned and adapts in the inner loop (the encoder's BatchNorm under
              frozen-stats, as with pretrained weights)
    decoder   the encoder is meta-learned but only decoder + head adapt (adapt_pattern "@decoder|@head"):
              its features are computed once per task
    frozen    freeze_encoder: the encoder is fixed (neither meta-learned nor adapted), features once per task

Needs timm (``pip install 'fewseg[timm]'``). Random weights (nothing is downloaded): the cost does not depend on
their values.

    python benchmarks/encoders.py                                   # 128 and 224 px, resnet18 + efficientnet_b0
    python benchmarks/encoders.py --sizes 224 --encoders resnet50 --modes frozen --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

UNET = {"depth": 4, "width": 16}


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: ``VmRSS`` (now) or ``VmHWM`` (peak so far)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(args) -> dict:
    import fewseg
    from fewseg.data.episode import MetaBatch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.encoder == "unet":
        model = fewseg.create_model("unet", **UNET)
        options = {}
    else:
        model = fewseg.create_model("timm-unet", encoder=args.encoder, batchnorm="frozen-stats",
                                    freeze_encoder=args.mode == "frozen")
        options = {"adapt_pattern": "@decoder|@head"} if args.mode == "decoder" else {}
    model = model.to(args.device)
    algo = fewseg.create_algorithm(args.algorithm, model, inner_steps=args.steps, inner_lr=0.01,
                                   strategy="loop", **options)
    opt = torch.optim.Adam([p for p in algo.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    T, S, Q, n = args.tasks, args.shots, args.queries, args.size

    def batch():
        return MetaBatch(torch.rand(T, S, 3, n, n, generator=g), (torch.rand(T, S, 1, n, n, generator=g) > 0.5).float(),
                         torch.rand(T, Q, 3, n, n, generator=g), (torch.rand(T, Q, 1, n, n, generator=g) > 0.5).float()
                         ).to(args.device)
    batches = [batch() for _ in range(args.warmup + args.repeats)]
    cuda = args.device.startswith("cuda")
    base = torch.cuda.memory_allocated() if cuda else proc_status_mb("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i, b in enumerate(batches):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        algo.meta_backward(b, iteration=i)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else proc_status_mb("VmHWM") - base
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": statistics.median(times), "peak_mb": peak, "params_m": params / 1e6,
            "cached": bool(algo.encoder_is_fixed())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--encoders", nargs="+", default=["resnet18", "efficientnet_b0"])
    ap.add_argument("--modes", nargs="+", default=["adapted", "decoder", "frozen"],
                    choices=["adapted", "decoder", "frozen"])
    ap.add_argument("--algorithm", default="maml", help="maml (second order), fomaml, ...")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="inner steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoder", help=argparse.SUPPRESS)  # one configuration, in a subprocess
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.encoder:
        print(json.dumps(run_one(args)))
        return
    common = [f"--{k}={getattr(args, k)}" for k in ("algorithm", "tasks", "shots", "queries", "steps", "warmup",
                                                     "repeats", "threads", "device")]
    print(f"{args.algorithm}, T={args.tasks} tasks, S={args.shots}, Q={args.queries}, K={args.steps} inner steps, "
          f"{args.threads} thread(s), {args.device}, torch {torch.__version__}; median of {args.repeats} steps")
    print("| size | model | encoder | params (M) | s / meta-step | x U-Net | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        reference = None
        for encoder in ["unet", *args.encoders]:
            for mode in (["adapted"] if encoder == "unet" else args.modes):
                cmd = [sys.executable, __file__, *common, f"--encoder={encoder}", f"--mode={mode}", f"--size={size}"]
                out = subprocess.run(cmd, check=False, capture_output=True, text=True)
                if out.returncode:
                    print(f"| {size} | {encoder} | {mode} | failed: {out.stderr.strip().splitlines()[-1]} |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                reference = reference or r["seconds"]
                name = "unet (depth 4, width 16)" if encoder == "unet" else f"timm-unet {encoder}"
                print(f"| {size} | {name} | {'-' if encoder == 'unet' else mode} | {r['params_m']:.1f} | "
                      f"{r['seconds']:.2f} | {r['seconds'] / reference:.1f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
