"""The methods that need no meta-training, on a real dataset: the frozen-feature prototype and the linear probe on
ImageNet EfficientNet-Lite features, at several network sizes. The probe's schedule (Adam steps and rate) is chosen
on the validation classes for each shot count (``fewseg evaluate``'s validation episodes: seed 2), then both
methods are scored on the test classes' fixed episodes as ``fewseg evaluate`` draws them for seed 0 (5 queries,
scored against the label maps at their original size). This is how the ready learner ``imagenet-lite0``
(:mod:`fewseg.ready`) was chosen.

    OMP_NUM_THREADS=2 python benchmarks/no_meta_training.py                    # CCP fold 0, 128 and 224 px
    python benchmarks/no_meta_training.py --dataset camvid --sizes 128 --episodes 80
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import date

import torch

import fewseg
from fewseg.baselines.probe import (
    PROBE_RATES,
    PROBE_STEPS,
    frozen_features,
    probe_algorithm,
    select_probe_schedule,
)
from fewseg.baselines.prototype import PrototypeLearner
from fewseg.engine.evaluator import MetaLearner, evaluate


def episodes_of(dataset: str, split: str, size: int, fold: int, shots: int, queries: int, n: int, seed: int):
    """(fixed episodes, the dataset's full-resolution scorer or None)."""
    ds = fewseg.create_dataset(dataset, split=split, seed=0, image_size=size, fold=fold, n_folds=4,
                               min_foreground=0.01, resize="pad", cache=True)
    return fewseg.EpisodeSampler(ds, shots, queries, seed=seed).fixed_episodes(n), getattr(ds, "full_resolution", None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ccp")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=80, help="test episodes per shot count")
    p.add_argument("--val-episodes", type=int, default=20, help="validation episodes for the probe's schedule")
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--loss", default="balanced-bce")
    p.add_argument("--output", default=None, help="JSON file for the results")
    args = p.parse_args()
    rows, record = [], []
    algo = probe_algorithm(args.encoder, loss=args.loss)
    features = frozen_features(args.encoder)
    for size in args.sizes:
        for shots in args.shots:
            val, _ = episodes_of(args.dataset, "val", size, args.fold, shots, 5, args.val_episodes, seed=2)
            test, original = episodes_of(args.dataset, "test", size, args.fold, shots, 5, args.episodes, seed=0)
            t0 = time.perf_counter()
            steps, lr, val_score = select_probe_schedule(algo, val, PROBE_STEPS, PROBE_RATES)
            t_select = time.perf_counter() - t0
            t0 = time.perf_counter()
            probe = evaluate(MetaLearner(algo, steps=steps, lr=lr), test, full_resolution=original)
            t_probe = (time.perf_counter() - t0) / len(test)
            t0 = time.perf_counter()
            proto = evaluate(PrototypeLearner(features), test, full_resolution=original)
            t_proto = (time.perf_counter() - t0) / len(test)
            for name, s, sec, how in (("linear-probe", probe, t_probe, f"{steps} Adam steps, lr {lr:g}"),
                                      ("imagenet-prototype", proto, t_proto, "0 steps")):
                rows.append(f"| {size} | {shots} | {name} | {how} | {100 * s['miou']:.1f} ± {100 * s['miou_ci95']:.1f} "
                            f"| {100 * s['fb_iou']:.1f} | {sec:.2f} |")
                record.append({"size": size, "shots": shots, "method": name, "schedule": how, **s, "seconds": sec})
            print(f"size {size}, {shots}-shot: probe schedule {steps} steps lr {lr:g} (val mIoU {100 * val_score:.1f}, "
                  f"chosen in {t_select:.0f} s)", flush=True)
    print(f"\n{date.today()}, {args.dataset} fold {args.fold}, {args.encoder} ImageNet features, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {args.episodes} test episodes per shot count, "
          f"schedule chosen on {args.val_episodes} val episodes\n")
    print("| size | shots | method | adaptation | mIoU ± 95% CI | FB-IoU | s / episode |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
