"""Seconds and peak memory per MAML meta-step, per task strategy, against plain forward/backward.

Each configuration runs in a fresh subprocess so its peak memory (max RSS growth on CPU, max allocated on
CUDA) is its own. Prints a table: median of --repeats steps after --warmup, and the ratio to a plain
forward/backward step over the same image passes (T*(K*S+Q) images, no meta-gradient), measured in the
same run. Strategies:

    plain     forward/backward over the same image passes, no meta-gradient (the reference)
    loop      fewseg, tasks one at a time, backward per task (one task's graph alive at a time)
    graph     fewseg, every task's graph kept until one backward (what the peers' examples do)
    vmap      fewseg, torch.func.vmap over the tasks (one batched graph); vmap-chunkN: N tasks per graph
    loop-ckpt fewseg, tasks one at a time with inner-loop checkpointing (one inner step's graph alive);
              loop-ckptN: each step rebuilt N support images at a time (one N-image piece's graph alive)
    loop-fo   fewseg first-order MAML;  anil: fewseg ANIL (head-only inner loop), second order
    higher    higher 0.2.1 (innerloop_ctx, per-task backward as in its MAML example)   } when importable;
    torchopt  torchopt (MetaSGD + extract/recover_state_dict, one backward)            } gradients checked

    python benchmarks/meta_step.py                          # seed-cnn and unet, 64x64, T=4, S=Q=5, K=5
    python benchmarks/meta_step.py --size 128 --models unet --strategies plain loop
    python benchmarks/meta_step.py --size 128 --models unet lite-unet --strategies plain loop loop-fo
    python benchmarks/meta_step.py --models unet --strategies loop graph vmap --tasks 1 2 4 8 16 \
        --plot docs/memory_vs_tasks.png                     # memory as the meta-batch grows
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
    """The measured networks: the U-Net of the tables, and the Lite0 U-Net as the pretrained recipes build it
    (ImageNet BatchNorm statistics frozen, decoder width 16; random weights cost the same as the packaged ones,
    and every parameter adapts)."""
    if name == "unet":
        return {"depth": 4, "width": 16}
    if name == "lite-unet":
        return {"decoder_width": 16, "batchnorm": "frozen-stats"}
    return {}


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
    agreement = None
    if args.strategy in PEERS:
        peer_step = PEERS[args.strategy](model, batch, args.steps, 0.01)

        def step():
            opt.zero_grad()
            peer_step()
            opt.step()
    elif args.strategy == "plain":
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
        checkpoint = args.strategy.startswith("loop-ckpt")
        images = int(args.strategy.removeprefix("loop-ckpt") or 0) if checkpoint else 0
        strategy = "loop" if checkpoint else args.strategy.removesuffix("-fo")
        name = "anil" if strategy == "anil" else "maml"
        chunk = int(strategy.removeprefix("vmap-chunk")) if strategy.startswith("vmap-chunk") else 0
        strategy = {"anil": "loop", "graph": "loop"}.get(strategy, "vmap" if chunk else strategy)
        algo = fewseg.create_algorithm(name, model, inner_steps=args.steps, inner_lr=0.01,
                                       first_order=first_order, strategy=strategy, task_chunk=chunk,
                                       inner_checkpoint=checkpoint, checkpoint_images=images)

        def step():
            opt.zero_grad()
            if args.strategy == "graph":
                algo.outer_loss(batch, iteration=0).backward()
            else:
                algo.meta_backward(batch, iteration=0)
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
    if args.strategy in PEERS:  # after the measurement, so its memory is not counted
        agreement = gradient_agreement(model, batch, args.steps, peer_step)
    return {"median_s": statistics.median(times), "peak_mb": peak, "grad_rel_diff": agreement}


def _bce(logits, y):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, y)


def higher_step(model, batch, steps, lr):
    import higher

    def step():
        inner = torch.optim.SGD(model.parameters(), lr=lr)
        for t in range(batch.num_tasks):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(_bce(fmodel(batch.support_x[t]), batch.support_y[t]))
                (_bce(fmodel(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks).backward()
    return step


def torchopt_step(model, batch, steps, lr):
    import torchopt

    def step():
        inner = torchopt.MetaSGD(model, lr=lr)
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        opt_state = torchopt.extract_state_dict(inner)
        losses = []
        for t in range(batch.num_tasks):
            for _ in range(steps):
                inner.step(_bce(model(batch.support_x[t]), batch.support_y[t]))
            losses.append(_bce(model(batch.query_x[t]), batch.query_y[t]))
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner, opt_state)
        torch.stack(losses).mean().backward()
    return step


PEERS = {"higher": higher_step, "torchopt": torchopt_step}


def gradient_agreement(model, batch, steps, peer_step) -> float:
    """Max relative difference between the peer's meta-gradient and fewseg's on the same batch."""
    import fewseg
    model.zero_grad()
    peer_step()
    theirs = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fewseg.create_algorithm("maml", model, inner_steps=steps, inner_lr=0.01, strategy="loop").meta_backward(batch, iteration=0)
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # relative to the largest gradient entry: conv biases before a GroupNorm have ~0 gradients (pure round-off)
    theirs, ours = torch.cat([t.flatten() for t in theirs]), torch.cat([t.flatten() for t in ours])
    return float((theirs - ours).abs().max() / ours.abs().max().clamp_min(1e-12))


def importable(strategy: str) -> bool:
    if strategy not in PEERS:
        return True
    import importlib.util
    return importlib.util.find_spec(strategy) is not None


def plot_memory(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        for strategy in dict.fromkeys(r["strategy"] for r in rows if r["model"] == model):
            pts = sorted((r["tasks"], r["peak_mb"]) for r in rows if r["model"] == model and r["strategy"] == strategy)
            ax.plot([t for t, _ in pts], [m for _, m in pts], marker="o", label=strategy)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tasks per meta-batch T")
        ax.set_ylabel("peak step memory (MB)")
        ax.set_title(model)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["seed-cnn", "unet"])
    p.add_argument("--strategies", nargs="+",
                   default=["plain", "loop", "loop-ckpt", "graph", "vmap", "loop-fo", "anil", "higher",
                            "torchopt"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--tasks", type=int, nargs="+", default=[4])
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--plot", default=None, help="write peak memory vs T (PNG) here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        args.tasks = args.tasks[0]
        print(json.dumps(run_one(args)))
        return
    print(f"# meta-step: {args.size}x{args.size}, T={args.tasks}, S={args.shots}, Q={args.queries}, K={args.steps}, "
          f"device={args.device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    print("| model | T | strategy | s/step | x plain | peak MB | grad rel. diff vs fewseg |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for model in args.models:
        for tasks in args.tasks:
            plain = None
            for strategy in args.strategies:
                if not importable(strategy):
                    print(f"| {model} | {tasks} | {strategy} | not installed | | | |", flush=True)
                    continue
                cmd = [sys.executable, __file__, "--one", "--model", model, "--strategy", strategy,
                       "--tasks", str(tasks)]
                for k in ("size", "shots", "queries", "steps", "warmup", "repeats", "device", "threads"):
                    cmd += [f"--{k}", str(getattr(args, k))]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode:
                    last = (out.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"| {model} | {tasks} | {strategy} | failed: {last} | | | |", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"model": model, "tasks": tasks, "strategy": strategy, **r})
                plain = r["median_s"] if strategy == "plain" else plain
                ratio = f"{r['median_s'] / plain:.2f}" if plain else "-"
                diff = "-" if r["grad_rel_diff"] is None else f"{r['grad_rel_diff']:.1e}"
                print(f"| {model} | {tasks} | {strategy} | {r['median_s']:.3f} | {ratio} | {r['peak_mb']:.0f} | {diff} |",
                      flush=True)
    if args.plot:
        plot_memory([r for r in rows if r["strategy"] != "plain"], args.plot)
        print(f"memory plot: {args.plot}")


if __name__ == "__main__":
    main()
