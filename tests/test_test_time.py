"""Test-time plans: chosen on validation classes only, stored in checkpoints, used by evaluate / adapt / the API,
overridden by the caller; leave-one-out step selection and augmented views deterministic under a seed."""
import json

import pytest
import torch
from conftest import tiny_config

import fewseg
from fewseg.algorithms.test_time import (
    AdaptationPlan,
    augment_views,
    best_steps,
    choose_plans,
    leave_one_out_scores,
)
from fewseg.baselines.context import select_steps_and_lr
from fewseg.baselines.finetune import FineTuneLearner
from fewseg.cli import main as cli_main
from fewseg.config import config_from_dict
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.engine.session import load_algorithm
from fewseg.engine.trainer import Trainer
from fewseg.metrics import binary_stats

TUNE = {"shots": [1, 3], "lr_select_episodes": 2, "tune_steps": [0, 1, 3], "tune_rate_scales": [0.5, 1.0],
        "tune_views": 2, "episodes": 2, "queries": 2, "transfer_images": 8, "long_steps": 1}


def _support(seed=0, n=3, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.zeros(n, 1, size, size)
    y[:, :, 4:12, 3:10] = 1
    x = torch.where(y.bool(), 0.9 * torch.ones_like(x), x * 0.5)
    return x, y


def _algo(name="maml", lr=0.3, **options):
    torch.manual_seed(0)
    return fewseg.create_algorithm(name, fewseg.create_model("seed-cnn", width=4), inner_steps=2, inner_lr=lr,
                                   **options)


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """A tiny run whose checkpoints/best got plans from ``fewseg tune``."""
    out = tmp_path_factory.mktemp("tuned")
    cfg = tiny_config(0, train={"shots": 3, "queries": 2}, eval=TUNE)
    Trainer(config_from_dict(cfg, [f"output={out}"]), progress=False).fit()
    assert cli_main(["tune", "--checkpoint", str(out)]) == 0
    return out


def test_plans_are_stored_in_the_checkpoint_and_reloaded(tuned_run):
    meta = json.loads((tuned_run / "checkpoints" / "best" / "meta.json").read_text())
    stored = meta["algorithm_state"]["test_time"]
    assert sorted(stored) == ["1", "3"]
    for plan in stored.values():
        assert plan["steps"] in (0, 1, 3) and plan["chosen"]["val_miou"] >= plan["chosen"]["zero_shot_val_miou"]
    assert stored["3"]["views"] == 0 and not stored["1"]["leave_one_out"]   # views at 1 shot, LOO at 2+
    _, algo, _ = load_algorithm(tuned_run)
    assert {s: p.to_dict() for s, p in algo.test_time.items()} == {int(s): p for s, p in stored.items()}


def test_evaluate_adapt_and_the_api_follow_the_plan_and_an_override_wins(tuned_run, tmp_path):
    from fewseg.engine.session import evaluate_checkpoint
    _, algo, _ = load_algorithm(tuned_run)
    plan = algo.plan_for(1)
    record = evaluate_checkpoint(tuned_run, episodes=2, output=tmp_path / "e.json", log=lambda *a: None)
    assert record["test_time"]["1"]["steps"] == plan.steps and record["steps"] is None
    forced = evaluate_checkpoint(tuned_run, episodes=2, steps=2, output=tmp_path / "f.json", log=lambda *a: None)
    assert forced["steps"] == 2 and forced["test_time"] is None

    x, y = _support(n=1)
    by_plan = algo.adapt(x, y)
    direct = algo.adapt_run(x, y, None, plan.steps, plan.lr_scale) if not plan.views else None
    assert by_plan.info["steps"] == plan.steps
    if direct is not None:
        assert all(torch.equal(by_plan.params[n], direct.params[n]) for n in direct.params)
    assert algo.adapt(x, y, steps=2).info["steps"] == 2

    seg = fewseg.load(tuned_run)
    img = (x[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    mask = (y[0, 0].numpy() > 0)
    assert seg.adapt([img], [mask]).info["steps"] == plan.steps
    assert seg.adapt([img], [mask]).info["plan"] == plan.describe()
    assert seg.adapt([img], [mask], steps=4).info["steps"] == 4
    assert plan.describe() in seg.describe_adaptation() and "3 shots" in seg.describe_adaptation()


def test_choosing_reads_validation_classes_only(tmp_path, monkeypatch):
    """The test split is never built and every episode scored comes from a val class (disjoint from test)."""
    import fewseg.algorithms.test_time as tt
    from fewseg.engine import tuning
    out = tmp_path / "run"
    Trainer(config_from_dict(tiny_config(0, train={"shots": 3, "queries": 2}, eval=TUNE), [f"output={out}"]),
            progress=False).fit()
    built, seen = [], []
    real_build, real_score = tuning.build_dataset, tt._score_candidates

    def spy_build(data_cfg, split, *args, **kwargs):
        built.append(split)
        return real_build(data_cfg, split, *args, **kwargs)

    def spy_score(algo, episodes, *args, **kwargs):
        seen.extend(ep.class_id for ep in episodes)
        return real_score(algo, episodes, *args, **kwargs)
    monkeypatch.setattr(tuning, "build_dataset", spy_build)
    monkeypatch.setattr(tt, "_score_candidates", spy_score)
    tuning.tune_checkpoint(out, log=lambda *a: None)
    val = set(fewseg.create_dataset("synthetic", split="val", seed=0, image_size=16).class_ids())
    test = set(fewseg.create_dataset("synthetic", split="test", seed=0, image_size=16).class_ids())
    assert built == ["val"] and seen and set(seen) <= val and not set(seen) & test and not val & test


def test_zero_steps_is_chosen_when_every_step_hurts():
    """A rate so large that one step wrecks the network: the plan keeps the initialisation as it is."""
    algo = _algo(lr=1e4)
    ds = fewseg.create_dataset("synthetic", split="val", seed=0, image_size=16)
    eps = fewseg.EpisodeSampler(ds, 2, 2, seed=3).fixed_episodes(3)
    plans = choose_plans(algo, {2: eps}, steps_grid=[0, 2, 5], rate_scales=[1.0], log=lambda *a: None)
    zero = evaluate(MetaLearner(algo, steps=0), eps)["miou"]
    assert plans[2].steps == 0 and plans[2].chosen["val_miou"] == pytest.approx(zero, abs=1e-12)


def test_incremental_scores_equal_separate_evaluations():
    """The plan's recorded val mIoU equals evaluating the chosen plan from scratch, and no other plain candidate
    scores higher when evaluated separately (the grid is scored after every step of one adaptation)."""
    torch.manual_seed(1)
    algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1, inner_lr=0.5)
    ds = fewseg.create_dataset("synthetic", split="val", seed=0, image_size=16)
    eps = fewseg.EpisodeSampler(ds, 2, 2, seed=4).fixed_episodes(3)
    plans = choose_plans(algo, {2: eps}, steps_grid=[0, 1, 3], rate_scales=[0.5, 2.0], leave_one_out=False,
                         log=lambda *a: None)
    algo.test_time = plans
    chosen = evaluate(MetaLearner(algo), eps)["miou"]
    assert chosen == pytest.approx(plans[2].chosen["val_miou"], abs=1e-12)
    for k in (1, 3):
        for scale in (0.5, 2.0):
            algo.test_time = {2: AdaptationPlan(k, scale)}
            assert evaluate(MetaLearner(algo), eps)["miou"] <= chosen + 1e-12


def test_baseline_schedule_search_matches_separate_fine_tuning():
    model = fewseg.create_model("seed-cnn", width=4)
    ds = fewseg.create_dataset("synthetic", split="val", seed=0, image_size=16)
    eps = fewseg.EpisodeSampler(ds, 2, 2, seed=5).fixed_episodes(3)
    steps, lr, score = select_steps_and_lr(model, eps, [1, 2], "bce", candidates=(0.1, 1.0))
    separate = {(k, r): evaluate(FineTuneLearner(model, k, r), eps)["miou"] for k in (1, 2) for r in (0.1, 1.0)}
    assert score == pytest.approx(separate[(steps, lr)], abs=1e-12)
    assert score >= max(separate.values()) - 1e-12


def test_leave_one_out_scores_equal_an_explicit_computation():
    algo = _algo()
    x, y = _support(n=2)
    scores = leave_one_out_scores(algo, AdaptationPlan(3), x, y, None)
    for k in range(4):
        inter = union = 0.0
        for j, other in ((0, 1), (1, 0)):
            adapted = algo.adapt(x[other:other + 1], y[other:other + 1], steps=k)
            s = binary_stats(adapted.predict(x[j:j + 1]) > 0.5, y[j:j + 1], None)
            inter, union = inter + float(s.fg_inter.sum()), union + float(s.fg_union.sum())
        assert scores[k] == pytest.approx(inter / union if union else 1.0, abs=1e-12)
    assert best_steps([0.2, 0.5, 0.5, 0.1], 3) == 1 and best_steps([0.2, 0.5, 0.9], 1) == 1


def test_leave_one_out_adaptation_is_deterministic_and_takes_the_picked_steps():
    algo = _algo()
    x, y = _support(n=3)
    a = algo.adapt(x, y, leave_one_out=True)
    b = algo.adapt(x, y, leave_one_out=True)
    scores = leave_one_out_scores(algo, AdaptationPlan(algo.eval_steps), x, y, None)
    assert a.info["steps"] == b.info["steps"] == best_steps(scores, algo.eval_steps)
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)
    plain = algo.adapt(x, y, steps=a.info["steps"])
    assert all(torch.equal(a.params[n], plain.params[n]) for n in a.params)


def test_augmented_views_are_deterministic_under_a_seed_and_keep_masks_aligned():
    x, y = _support(n=1, size=24)
    ignore = torch.zeros_like(y, dtype=torch.bool)
    ignore[..., :2] = True
    x1, y1, i1 = augment_views(x, y, ignore, 3, seed=7)
    x2, y2, i2 = augment_views(x, y, ignore, 3, seed=7)
    x3, _, _ = augment_views(x, y, ignore, 3, seed=8)
    assert x1.shape == (4, 3, 24, 24) and torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)
    assert not torch.equal(x1, x3) and torch.equal(x1[:1], x) and torch.equal(y1[:1], y)
    assert set(y1.unique().tolist()) <= {0.0, 1.0} and 0 <= x1.min() and x1.max() <= 1
    # the object is bright (0.9) and the background dark: after flips/crops, mask pixels stay on bright pixels
    bright = x1.mean(1, keepdim=True) > 0.55
    assert ((bright == y1.bool()).float().mean() > 0.9).item()
    algo = _algo()
    a = algo.adapt(x, y, views=3, seed=7)
    b = algo.adapt(x, y, views=3, seed=7)
    assert a.info["support_images"] == 4 and all(torch.equal(a.params[n], b.params[n]) for n in a.params)


def test_augmented_views_are_the_training_augmentation_with_a_crop_range():
    from fewseg.algorithms.test_time import VIEW_AUGMENT
    from fewseg.data.transforms import JointAugment
    assert isinstance(VIEW_AUGMENT, JointAugment) and VIEW_AUGMENT.scale is None
    assert VIEW_AUGMENT.flip and VIEW_AUGMENT.crop_area == (0.6, 1.0) and VIEW_AUGMENT.colour == 0.2
    x, y = _support(n=2, size=20)
    xs, ys, igs = augment_views(x, y, None, 2, seed=3)
    assert igs is None and xs.shape == (6, 3, 20, 20)                 # a crop adds no ignore pixel
    g, ign = torch.Generator().manual_seed(3), torch.zeros(1, 20, 20, dtype=torch.bool)
    for k in range(2, 6):                                             # view by view, image by image
        xk, yk, _ = VIEW_AUGMENT(x[k % 2], y[k % 2], ign, g)
        assert torch.equal(xs[k], xk) and torch.equal(ys[k], yk)


def test_learned_rates_are_used_as_learned():
    torch.manual_seed(0)
    algo = fewseg.create_algorithm("meta-sgd", fewseg.create_model("seed-cnn", width=4), inner_steps=1,
                                   inner_lr=0.1)
    with torch.no_grad():
        for r in algo.rates.values():
            r.uniform_(0.05, 0.3)
    ds = fewseg.create_dataset("synthetic", split="val", seed=0, image_size=16)
    eps = fewseg.EpisodeSampler(ds, 1, 2, seed=6).fixed_episodes(2)
    plans = choose_plans(algo, {1: eps}, steps_grid=[0, 1], rate_scales=[0.25, 4.0], views=0, log=lambda *a: None)
    assert plans[1].lr_scale == 1.0 and plans[1].chosen["candidates"] == 2   # 0 and 1 step, learned rates
    x, y = _support(n=1)
    params, forward = algo.params_and_forward()
    loss = algo.loss_fn(forward(params, x), y, None)
    grads = torch.autograd.grad(loss, [params[n] for n in algo.adapt_names])
    adapted = algo.adapt(x, y, steps=1)
    for n, g in zip(algo.adapt_names, grads):
        assert torch.allclose(adapted.params[n], params[n] - algo.lr_for(0, n) * g, atol=1e-6)


def test_per_shot_baselines_and_table_in_a_tuned_evaluation(tuned_run, tmp_path):
    from fewseg.engine.session import evaluate_checkpoint
    record = evaluate_checkpoint(tuned_run, episodes=2, baselines=["zero-shot", "random-init"],
                                 output=tmp_path / "e.json", log=lambda *a: None)
    budget = record["results"]["1"]["random-init"]["budget"]
    assert "chosen on val" in budget and "1-shot" in budget and "3-shot" in budget
    assert "chosen on val" in record["results"]["1"]["maml"]["budget"]
