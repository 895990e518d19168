"""Summarise ``fewseg demo`` over seeds: the "Demo over seeds" table of docs/results.md.

Reads the ``eval.json`` of each demo run (``fewseg demo --seed S --output DIR`` writes ``DIR/eval.json``) and
prints, per method and shot count, mIoU per seed, mean ± sample sd and the minimum, then how often the meta-learned
model (the first method of each table) is above every baseline. Cells are mIoU in percent.

    for s in 0 1 2 3 4 5 6 7 8 9; do OMP_NUM_THREADS=1 fewseg demo --seed $s --output runs/demo_seed$s; done
    python benchmarks/demo_seeds.py runs/demo_seed*/eval.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(paths: list[Path]) -> dict[int, dict[int, dict[str, float]]]:
    """{seed: {shots: {method: mIoU %}}}, methods in the order of the demo's table."""
    runs = {}
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            seed = int(record["config"]["seed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not a readable demo eval.json ({type(exc).__name__}: {exc})") from None
        if seed in runs:
            raise SystemExit(f"{path}: seed {seed} appears twice")
        runs[seed] = {int(k): {m: 100 * v["miou"] for m, v in r.items()} for k, r in record["results"].items()}
    return dict(sorted(runs.items()))


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def table(runs: dict) -> str:
    seeds = list(runs)
    shots = sorted(next(iter(runs.values())))
    methods = list(next(iter(runs.values()))[shots[0]])
    head = ["method"]
    for k in shots:
        head += [f"{k}-shot per seed ({', '.join(map(str, seeds))})", f"{k}-shot mean ± sd", f"{k}-shot min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m]
        for k in shots:
            values = [runs[s][k][m] for s in seeds]
            row += [", ".join(f"{v:.1f}" for v in values), mean_sd(values), f"{min(values):.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def wins(runs: dict) -> str:
    """Per shot count: on how many seeds the first method is above every other, and its smallest margin."""
    out = []
    for k in sorted(next(iter(runs.values()))):
        margins = []
        for by_method in (r[k] for r in runs.values()):
            first, *others = by_method
            margins.append(by_method[first] - max(by_method[o] for o in others))
        out.append(f"{k} shots: above every baseline on {sum(m > 0 for m in margins)} of {len(margins)} seeds "
                   f"(margin over the best baseline: min {min(margins):.1f}, mean {statistics.mean(margins):.1f})")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_json", nargs="+", type=Path, help="eval.json of each demo run")
    runs = load(parser.parse_args().eval_json)
    print(table(runs))
    print()
    print(wins(runs))


if __name__ == "__main__":
    main()
