"""What each part of a checkpoint's test-time plan contributes, on its test classes (full resolution).

For one trained checkpoint with stored plans (``fewseg tune``), scores on the same fixed test episodes:
the stored plan; the plan without augmented views; the plan with leave-one-out switched (on where it is off,
off where it is on; 2+ shots); the fixed recipe before plans existed (``eval_steps`` at the training rate);
and zero-shot. Prints one Markdown table of mIoU (%) per shot count.

    python benchmarks/test_time_ablation.py runs/ccp_reptile300_fold0 --episodes 80
"""
from __future__ import annotations

import argparse

from fewseg.engine.builders import build_dataset, model_channels
from fewseg.engine.evaluator import MetaLearner
from fewseg.engine.protocol import Method, run_protocol
from fewseg.engine.session import load_algorithm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    cfg, algo, _ = load_algorithm(a.checkpoint)
    if not algo.test_time:
        raise SystemExit(f"{a.checkpoint} has no test-time plans: run `fewseg tune --checkpoint {a.checkpoint}`")
    test_set = build_dataset(cfg.data, "test", cfg.seed, model_channels(cfg))
    plans = dict(algo.test_time)
    rows = {}
    for shots in cfg.eval.shots:
        plan = algo.plan_for(shots)
        variants = {"stored plan: " + plan.describe(): MetaLearner(algo), "zero-shot": MetaLearner(algo, steps=0)}
        if plan.views:
            variants["plan without views"] = MetaLearner(algo, views=0)
        if shots >= 2 and plan.steps:
            variants[f"plan with leave-one-out {'off' if plan.leave_one_out else 'on'}"] = \
                MetaLearner(algo, leave_one_out=not plan.leave_one_out)
        rows[shots] = {}
        # an override changes only the fields it names (steps=K keeps the plan's rate scale and views), so the
        # recipe before plans runs with no plans stored: eval_steps at the training rate, no views
        recipe = {f"fixed {algo.eval_steps} steps at 1x rate (no plan)": MetaLearner(algo)}
        for group, stored in ((variants, plans), (recipe, {})):
            algo.test_time = stored
            res = run_protocol([Method(name, "", learner) for name, learner in group.items()], test_set, [shots],
                               cfg.eval.queries, a.episodes, a.seed, "cpu", log=lambda *_: None,
                               full_resolution=cfg.eval.full_resolution, threshold=cfg.eval.threshold)
            rows[shots].update({m: 100 * r["miou"] for m, r in res[shots].items()})
        algo.test_time = plans
    print("| shots | variant | mIoU |\n|---|---|---|")
    for shots, r in rows.items():
        for name, v in r.items():
            print(f"| {shots} | {name} | {v:.1f} |")


if __name__ == "__main__":
    main()
