"""The demo's speed-ups change no number: batched fine-tuning, one-pass step curves, one progress bar."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

import fewseg
from fewseg.baselines.finetune import FineTuneLearner
from fewseg.engine.evaluator import MetaLearner, evaluate, evaluate_steps

TINY_DEMO = ["model.name=seed-cnn", "model.options={width: 4}", "data.image_size=16", "algorithm.inner_steps=1",
             "algorithm.eval_steps=2", "train.iterations=2", "train.meta_batch=1", "train.shots=1",
             "train.queries=1", "train.val_every=2", "train.val_episodes=1", "train.checkpoint_every=2",
             "eval.episodes=4", "eval.queries=1", "eval.long_steps=2", "eval.long_episodes=2",
             "eval.transfer_images=4", "eval.lr_select_episodes=1", "eval.batch_episodes=3"]


@pytest.fixture(scope="module")
def episodes():
    test = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=16)
    return {shots: fewseg.EpisodeSampler(test, shots=shots, queries=2, seed=3).fixed_episodes(5)
            for shots in (1, 2)}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return fewseg.create_model("seed-cnn", width=4).eval()


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.3), ("adam", 1e-2)])
def test_batched_fine_tuning_ends_where_one_episode_at_a_time_does(episodes, optimizer, lr):
    eps = episodes[2]
    learner = FineTuneLearner(_model(), 3, lr, optimizer=optimizer, episode_batch=4)
    batched = learner.adapt_batch(torch.stack([e.support_x for e in eps]), torch.stack([e.support_y for e in eps]))
    for ep, tuned in zip(eps, batched):
        alone = dataclasses.replace(learner, episode_batch=1).adapt(ep.support_x, ep.support_y)
        torch.testing.assert_close(tuned.predict(ep.query_x), alone.predict(ep.query_x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shots", [1, 2])
def test_batched_evaluation_gives_the_unbatched_summary(episodes, shots):
    learner = FineTuneLearner(_model(), 3, 1e-2, optimizer="adam")
    one = evaluate(learner, episodes[shots])
    seen = []
    batched = evaluate(dataclasses.replace(learner, episode_batch=2), episodes[shots],
                       on_episode=lambda i, ep, probs: seen.append(i))
    assert seen == list(range(len(episodes[shots])))  # every episode, in order, in chunks of 2 (the last alone)
    for key in ("miou", "fb_iou", "episode_iou_mean", "episode_iou_ci95"):
        assert batched[key] == pytest.approx(one[key], abs=1e-6), key


def test_a_network_with_buffers_is_fine_tuned_one_episode_at_a_time(episodes):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.Conv2d(4, 1, 1)).eval()
    eps = episodes[2]
    learner = FineTuneLearner(model, 2, 0.1, episode_batch=4)
    assert evaluate(learner, eps) == evaluate(dataclasses.replace(learner, episode_batch=1), eps)


@pytest.mark.parametrize("batch", [1, 3])
def test_one_pass_step_curve_equals_one_evaluation_per_step_count(episodes, batch):
    eps, grid = episodes[2], [0, 1, 3]
    learner = FineTuneLearner(_model(), 99, 0.3, episode_batch=batch)
    curve = evaluate_steps(learner, eps, grid)
    assert curve == {k: evaluate(dataclasses.replace(learner, steps=k), eps) for k in grid}


def test_one_pass_step_curve_of_the_meta_learned_model_equals_recomputation(episodes):
    algo = fewseg.create_algorithm("maml", _model(1), inner_steps=1, inner_lr=0.2)
    eps, grid = episodes[2], [0, 1, 2, 4]
    curve = evaluate_steps(MetaLearner(algo, steps=4), eps, grid)
    assert curve == {k: evaluate(MetaLearner(algo, steps=k), eps) for k in grid}


class CountingBar:
    """A stand-in for tqdm that records the total and every update."""

    made: typing.ClassVar[list] = []

    def __init__(self, total=None, disable=False, **_):
        self.total, self.n, self.updates, self.disable = total, 0, [], disable
        CountingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)
        self.n += n

    def refresh(self):
        pass

    def set_postfix(self, **_):
        pass

    def write(self, line):
        print(line)

    def close(self):
        pass


def test_the_demo_shows_one_bar_whose_total_is_the_work_done(tmp_path, monkeypatch, capsys):
    from fewseg.baselines import transfer
    from fewseg.engine import trainer
    from fewseg.report import demo

    def no_other_bar(*args, disable=False, **kwargs):
        assert disable, "only the demo's own bar may show"
        return CountingBar(*args, disable=disable, **kwargs)

    CountingBar.made = []
    monkeypatch.setattr(demo, "tqdm", CountingBar)
    monkeypatch.setattr(trainer, "tqdm", no_other_bar)
    monkeypatch.setattr(transfer, "tqdm", lambda it, disable=False, **kw: (no_other_bar(disable=disable), it)[1])
    record = demo.run_demo(tmp_path / "demo", quick=True, overrides=TINY_DEMO)
    demo_bars = [b for b in CountingBar.made if not b.disable]
    assert len(demo_bars) == 1
    bar = demo_bars[0]
    assert bar.n == bar.total > 0 and all(u > 0 for u in bar.updates)
    work = demo.DemoWork(demo.demo_config(tmp_path / "x", quick=True, overrides=TINY_DEMO), 4,
                         demo.QUICK_STEP_GRID, progress=False)
    assert work.bar.total == bar.total  # the total planned from the config is the work the methods took
    # random-init-long on the first eval.long_episodes episodes, the others on all of them
    per_shot = record["results"]["1"]
    assert per_shot["random-init-long"]["n_episodes"] == 2 and per_shot["random-init"]["n_episodes"] == 4
    assert "first 2 episodes" in record["table"]
    assert set(record["steps_curve"]) == {record["config"]["algorithm"]["name"], "random-init", "transfer"}
