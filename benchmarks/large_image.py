"""A large image at its own resolution: adapt on 5 support tiles and predict one tile, window by window, on the CPU.

What is timed (issue 29: "a 2149 x 1479 tile adapted (5 shots of similar tiles) and predicted at native resolution
in < 10 s on 2 cores, peak memory < 2 GB"), with the user API and ``--tile 256 --overlap 0.25``:

    adapt     ``seg.adapt(5 support images, their masks, tile=T, overlap=F)``: the support images cut into T px
              patches (those with foreground plus as many background ones, at most 32), each resized to the
              network's input, and the test-time plan for 5 images run on them (``fewseg.tiling``)
    predict   ``adapted.predict(query)``: T px windows, ``batch_size`` (8) per pass, blended, at the query's size

Images are uint8 arrays decoded before timing (a JPEG of 2149 x 1479 decodes in some 30 ms more). Data:

    --data DIR       default ../shared/data/aerial_dubai (images/<stem>.jpg, labels/<stem>.png class ids,
                     classes.txt): the query is the last image of the area ``--area`` (file-name prefix, default
                     tile8: 9 images of 2149 x 1479), the support its first 5 images, the class ``--class``
                     (default road)
    (no such folder) generated 2149 x 1479 photos: noise crossed by bright 9 px "roads" (the class)

Model (the latency depends on the architecture, the step count and the sizes, not on the weights' values):

    --recipe NAME    default ccp_reptile: that shipped recipe's network and test-time steps (unet depth 3, width 8,
                     64 px, Reptile, 10 steps) with random weights (``fewseg.Segmenter.untrained``)
    --checkpoint P   a run or checkpoint directory, or a ready learner (``imagenet-lite0``: frozen ImageNet
                     EfficientNet-Lite0 at 224 px + a linear probe, 100 Adam steps at 5 shots)

Each setting runs in a fresh subprocess, so that its peak memory (VmHWM: the process's peak resident set, imports
and weights included) is its own; the table gives the median over ``--runs`` runs after one warm-up.

    OMP_NUM_THREADS=2 python benchmarks/large_image.py                           # median of 5 runs
    OMP_NUM_THREADS=2 python benchmarks/large_image.py --checkpoint imagenet-lite0 --threads 2
    OMP_NUM_THREADS=1 python benchmarks/large_image.py --runs 1 --size 300 200 --tile 128 --threads 1   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aerial_dubai"
GENERATED = (1479, 2149)  # (H, W) of the generated photos: the aerial set's largest tile


def peak_rss_gb() -> float:
    """The process's peak resident set (VmHWM, Linux); the ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 ** 2  # kB
    except OSError:
        pass
    import resource
    scale = 1024 ** 3 if sys.platform == "darwin" else 1024 ** 2  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def generated(n: int, size: tuple[int, int], seed: int = 0):
    """``n`` (photo uint8 [H,W,3], mask bool [H,W]) pairs: noise crossed by two bright 9 px roads at random places."""
    import numpy as np
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n):
        img = rng.integers(20, 110, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), bool)
        row, col = int(rng.integers(0, h - 9)), int(rng.integers(0, w - 9))
        mask[row:row + 9, :] = True
        mask[:, col:col + 9] = True
        img[mask] = (200, 190, 170)
        out.append((img, mask))
    return out


def aerial(root: Path, shots: int, class_name: str, area_name: str = "tile8"):
    """(support pairs, query pair, description) from the aerial set: the images of area ``area_name`` (the one
    holding the largest image where there is no such area)."""
    from fewseg.data.io import image_size, read_image, read_label_map
    classes = {}
    for line in (root / "classes.txt").read_text().splitlines():
        if line.strip():
            cid, name = line.split(maxsplit=1)
            classes[name.strip()] = int(cid)
    if class_name not in classes:
        sys.exit(f"class {class_name!r} is not in {root / 'classes.txt'} ({', '.join(classes)})")
    stems = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    areas: dict[str, list[str]] = {}
    for stem in stems:
        areas.setdefault(stem.split("_")[0], []).append(stem)
    sizes = {stem: image_size(root / "images" / f"{stem}.jpg") for stem in stems}  # (w, h), headers only
    largest = max(stems, key=lambda s: sizes[s][0] * sizes[s][1])
    area = areas.get(area_name) or areas[largest.split("_")[0]]
    if len(area) < shots + 1:
        sys.exit(f"area {area[0].split('_')[0]} of {root} has {len(area)} images, fewer than {shots} + 1")
    chosen = area[:shots] + [area[-1]]

    def pair(stem):
        labels = read_label_map(root / "labels" / f"{stem}.png")
        return read_image(root / "images" / f"{stem}.jpg"), labels == classes[class_name]
    pairs = [pair(s) for s in chosen]
    w, h = sizes[area[-1]]
    return pairs[:shots], pairs[-1], (f"{root.name}: support {', '.join(area[:shots])}, query {area[-1]} "
                                      f"({w}x{h}), class {class_name}")


def segmenter(args):
    import fewseg
    if args.checkpoint:
        return fewseg.load(args.checkpoint)
    from fewseg.config import load_config
    cfg = load_config(args.recipe)
    a = cfg.algorithm
    return fewseg.Segmenter.untrained(cfg.model.name, dict(cfg.model.options), cfg.data.image_size, a.name,
                                      steps=a.eval_steps if a.eval_steps is not None else a.inner_steps,
                                      lr=a.inner_lr, resize=cfg.data.options.get("resize", "stretch"))


def child(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    from fewseg.tiling import Tiling, tile_boxes
    if args.data is not None and Path(args.data).is_dir() and not args.size:
        support, query, about = aerial(Path(args.data), args.shots, args.class_name, args.area)
    else:
        size = tuple(args.size) if args.size else GENERATED
        pairs = generated(args.shots + 1, (size[1], size[0]) if args.size else size)
        support, query = pairs[:args.shots], pairs[-1]
        about = f"generated {query[0].shape[1]}x{query[0].shape[0]} photos (noise crossed by 9 px roads)"
    seg = segmenter(args)
    images, masks = [s[0] for s in support], [s[1] for s in support]
    tiling = Tiling(args.tile, args.overlap)

    def adapt():
        return seg.adapt(images, masks, tile=args.tile, overlap=args.overlap)

    adapted = adapt()  # warm-up
    adapted.predict(query[0])
    t_adapt, t_predict = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        adapted = adapt()
        t1 = time.perf_counter()
        pred = adapted.predict(query[0])
        t2 = time.perf_counter()
        t_adapt.append(t1 - t0), t_predict.append(t2 - t1)
    truth = query[1]
    inter, union = float((pred.mask & truth).sum()), float((pred.mask | truth).sum())
    h, w = query[0].shape[:2]
    return {"adapt_s": statistics.median(t_adapt), "predict_s": statistics.median(t_predict),
            "total_s": statistics.median(a + p for a, p in zip(t_adapt, t_predict)), "runs": args.runs,
            "peak_gb": peak_rss_gb(), "threads": torch.get_num_threads(), "data": about,
            "source": args.checkpoint or f"{args.recipe} recipe, random weights", "model": seg.model_config, "algorithm": seg.algorithm.name,
            "image_size": seg.preprocessing.image_size, "steps": adapted.info.get("steps"),
            "patches": adapted.info.get("support_patches"), "windows": len(tile_boxes(h, w, tiling.tile, tiling.stride)),
            "overlap_px": tiling.overlap_pixels, "iou": inter / union if union else 1.0,
            "mask_shape": list(pred.mask.shape)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a run or checkpoint directory, or a ready learner (imagenet-lite0); "
                   "default: --recipe's network with random weights")
    p.add_argument("--recipe", default="ccp_reptile", help="shipped recipe of the random-weight model")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the aerial set (generated photos where absent)")
    p.add_argument("--class", dest="class_name", default="road", help="class of the aerial set to adapt to")
    p.add_argument("--area", default="tile8", help="area of the aerial set (file-name prefix; tile8: 2149 x 1479)")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="generated photos of W x H instead of "
                   "the aerial set (default where it is absent: 2149 1479)")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the benchmark failed:\n{out.stderr.strip()}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    threads = os.environ.get("OMP_NUM_THREADS")
    command = " ".join(([f"OMP_NUM_THREADS={threads}"] if threads else []) +
                       ["python", "benchmarks/large_image.py", *map(shlex.quote, sys.argv[1:])])
    print(f"{date.today()}, {platform.machine()}, torch threads {r['threads']}; {r['source']}: {r['algorithm']}, "
          f"model {r['model']} at {r['image_size']} px, {r['steps']} steps; {r['data']}; tile {args.tile} px, "
          f"overlap {r['overlap_px']} px: {r['patches']} support patches, {r['windows']} query windows; "
          f"query IoU {100 * r['iou']:.1f}")
    print("\n| adapt s | predict s | total s | peak RSS GB | runs |\n|---|---|---|---|---|")
    print(f"| {r['adapt_s']:.2f} | {r['predict_s']:.2f} | {r['total_s']:.2f} | {r['peak_gb']:.2f} | {r['runs']} |")
    print(f"\ncommand: {command}")


if __name__ == "__main__":
    main()
