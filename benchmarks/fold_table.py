"""Summarise ``fewseg evaluate`` results over folds and seeds: the tables of docs/results.md.

Reads ``RUN/eval.json`` (or any JSON file ``fewseg evaluate --output`` wrote) of runs named by a pattern with
``{fold}`` and ``{seed}`` in it, and prints two Markdown tables: per fold (mean ± sample sd over the seeds) and the
mean over the folds (mean ± sd over the seeds of each seed's fold mean). Cells are mIoU in percent.

    python benchmarks/fold_table.py "runs/ccp_reptile300_fold{fold}_seed{seed}/eval.json" --folds 0 1 2 3 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(pattern: str, folds, seeds) -> dict:
    """{(fold, seed): {shots: {method: mIoU %}}} of the files that exist."""
    found = {}
    for f in folds:
        for s in seeds:
            path = Path(pattern.format(fold=f, seed=s))
            if path.exists():
                results = json.loads(path.read_text())["results"]
                found[(f, s)] = {int(k): {m: 100 * v["miou"] for m, v in r.items()} for k, r in results.items()}
    return found


def cell(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def tables(found: dict, folds, seeds) -> str:
    shots = sorted({k for r in found.values() for k in r})
    methods = list(dict.fromkeys(m for r in found.values() for k in r for m in r[k]))
    head = "| fold | shots | " + " | ".join(methods) + " |\n|---|---|" + "---|" * len(methods)
    rows = [head]
    for f in folds:
        for k in shots:
            vals = {m: [found[(f, s)][k][m] for s in seeds if (f, s) in found and m in found[(f, s)].get(k, {})]
                    for m in methods}
            n = max((len(v) for v in vals.values()), default=0)
            rows.append(f"| {f} ({n} seeds) | {k} | " + " | ".join(cell(vals[m]) for m in methods) + " |")
    for k in shots:
        per_seed = {m: [statistics.mean(found[(f, s)][k][m] for f in folds)
                        for s in seeds if all((f, s) in found and m in found[(f, s)].get(k, {}) for f in folds)]
                    for m in methods}
        n = max((len(v) for v in per_seed.values()), default=0)
        rows.append(f"| mean of {len(folds)} folds ({n} seeds) | {k} | "
                    + " | ".join(cell(per_seed[m]) for m in methods) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pattern", help="path pattern with {fold} and {seed}")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    found = load(a.pattern, a.folds, a.seeds)
    print(f"{len(found)} result files\n")
    print(tables(found, a.folds, a.seeds))


if __name__ == "__main__":
    main()
