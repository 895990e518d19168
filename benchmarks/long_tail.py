"""The long tail: mIoU on rare and on frequent test classes, per training option, over seeds (docs/results.md).

Each option names a pattern of ``fewseg evaluate --output`` files with ``{fold}`` and ``{seed}`` in it. A test class
is *rare* when fewer than ``--cut`` images of the dataset hold it (at the run's ``min_foreground``), else
*frequent*; the counts come from the dataset the results name (so the data must be at hand). Per run the learner's
per-class IoUs give a rare mean and a frequent mean (classes pooled over the folds given); cells are the mean ± sample
sd over the seeds, in percent, and the spread (max - min over seeds) follows in brackets.

    python benchmarks/long_tail.py --folds 0 --seeds 0 1 2 --cut 50 \\
        --option uniform "runs/p25/f{fold}s{seed}/eval.json" \\
        --option images "runs/lt/img_f{fold}s{seed}/eval.json" \\
        --option "images + class-frequency weights" "runs/lt/wt_f{fold}s{seed}/eval.json"
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def class_counts(dataset: dict) -> dict[int, tuple[str, int]]:
    """{class id: (name, images)} of the test classes of the evaluated dataset (an eval.json's ``dataset``)."""
    from fewseg.data import register_datasets
    from fewseg.registry import DATASETS

    register_datasets()
    opts = {k: dataset[k] for k in ("root", "fold", "n_folds", "min_foreground") if k in dataset}
    ds = DATASETS.create(dataset["name"], split="test", **opts)
    return {int(c): (ds.class_names[c], len(ds.items(c))) for c in ds.class_ids()}


def learner_classes(path: Path) -> tuple[dict, dict[int, dict[int, float]]]:
    """(dataset block, {shots: {class id: IoU}}) of the learner (the first method) of one eval.json."""
    doc = json.loads(path.read_text())
    per_shot = {}
    for shots, methods in doc["results"].items():
        learner = next(iter(methods.values()))
        per_shot[int(shots)] = {int(c): v for c, v in learner["per_class"].items()}
    return doc["dataset"], per_shot


def cell(values: list[float]) -> str:
    """mean ± sd (fold_table's cell) and the spread (max - min) in brackets."""
    from fold_table import cell as mean_sd  # benchmarks/ is the script's folder

    return mean_sd(values) if len(values) < 2 else f"{mean_sd(values)} [{max(values) - min(values):.1f}]"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--option", nargs=2, action="append", metavar=("NAME", "PATTERN"), required=True)
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cut", type=int, default=50, help="rare: fewer images than this")
    a = p.parse_args(argv)

    counts: dict[int, dict[int, tuple[str, int]]] = {}    # fold -> class -> (name, images)
    rows = []
    for name, pattern in a.option:
        by_seed: dict[int, dict[int, dict[int, float]]] = {}   # seed -> shots -> class -> IoU (folds pooled)
        for seed in a.seeds:
            for fold in a.folds:
                path = Path(pattern.format(fold=fold, seed=seed))
                if not path.exists():
                    continue
                dataset, per_shot = learner_classes(path)
                if fold not in counts:
                    counts[fold] = class_counts(dataset)
                for shots, ious in per_shot.items():
                    by_seed.setdefault(seed, {}).setdefault(shots, {}).update(
                        {(fold, c): v for c, v in ious.items()})
        rows.append((name, by_seed))

    rare = {(f, c) for f, cc in counts.items() for c, (_, n) in cc.items() if n < a.cut}
    print(f"rare: test classes in fewer than {a.cut} images ({len(rare)} classes); frequent: the other "
          f"{sum(len(cc) for cc in counts.values()) - len(rare)}. Folds {a.folds}, seeds {a.seeds}.\n")
    shots_all = sorted({s for _, by_seed in rows for r in by_seed.values() for s in r})
    head = "| option | seeds | " + " | ".join(f"{s}-shot {part}" for s in shots_all
                                             for part in ("rare", "frequent", "all")) + " |"
    print(head)
    print("|---|---|" + "---|" * (3 * len(shots_all)))
    for name, by_seed in rows:
        cells = []
        for s in shots_all:
            parts = {"rare": [], "frequent": [], "all": []}
            for r in by_seed.values():
                ious = r.get(s, {})
                if not ious:
                    continue
                rv = [v for k, v in ious.items() if k in rare]
                fv = [v for k, v in ious.items() if k not in rare]
                parts["rare"].append(100 * statistics.mean(rv)) if rv else None
                parts["frequent"].append(100 * statistics.mean(fv)) if fv else None
                parts["all"].append(100 * statistics.mean(ious.values()))
            cells += [cell(parts[k]) for k in ("rare", "frequent", "all")]
        print(f"| {name} | {len(by_seed)} | " + " | ".join(cells) + " |")
    print("\nclasses (images): " + ", ".join(
        f"{name}{'*' if (f, c) in rare else ''} ({n})" for f, cc in sorted(counts.items())
        for c, (name, n) in sorted(cc.items(), key=lambda t: t[1][1])) + "   (* rare)")


if __name__ == "__main__":
    main()
