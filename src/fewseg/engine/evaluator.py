"""Few-shot evaluation: a fixed episode list, per-class intersection/union, mIoU, FB-IoU, 95% CI.

Any *learner* works: an object with ``adapt(support_x, support_y, support_ignore=None) -> predictor``
whose ``predict(images [N,3,H,W]) -> [N,1,H,W]`` gives foreground probabilities. Test-time adaptation
never builds a second-order graph. With a tiling (``evaluate(..., tiled=...)``, :mod:`fewseg.engine.tiled_eval`)
episodes are scored at the images' own resolution; a learner may then offer ``adapt_patches(x, y, ignore, images)``
(support patches cut from ``images`` support images) and a predictor ``logits(images)``.

Example:
    >>> import fewseg
    >>> from fewseg.engine.evaluator import MetaLearner, evaluate
    >>> test_ds = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=16)
    >>> algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1)
    >>> episodes = fewseg.EpisodeSampler(test_ds, shots=2, queries=2, seed=123).fixed_episodes(3)  # e.g. 300
    >>> summary = evaluate(MetaLearner(algo, steps=1), episodes)     # {"miou": ..., "fb_iou": ..., ...}
    >>> summary["n_episodes"], 0 <= summary["miou"] <= 1, 0 <= summary["fb_iou"] <= 1
    (3, True, True)
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from fewseg.algorithms.base import Adapted, MetaAlgorithm
from fewseg.algorithms.test_time import adapt_with_plan, augment_views
from fewseg.data.episode import Episode
from fewseg.data.transforms import to_original
from fewseg.distributed import SINGLE, ProcessGroup
from fewseg.metrics import BinaryStats, IoUAccumulator, binary_stats


class Predictor(Protocol):
    def predict(self, images: torch.Tensor) -> torch.Tensor: ...


class Learner(Protocol):
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              support_ignore: torch.Tensor | None = None) -> Predictor: ...


@dataclass
class MetaLearner:
    """A meta-trained algorithm adapting by its test-time plan, or with the given overrides: ``steps`` inner steps
    (0 = zero-shot), one rate ``lr``, ``views`` augmented views, ``leave_one_out`` on or off (None: the plan's)."""

    algorithm: MetaAlgorithm
    steps: int | None = None
    lr: float | None = None
    views: int | None = None
    leave_one_out: bool | None = None

    def adapt(self, support_x, support_y, support_ignore=None) -> Adapted:
        return self.algorithm.adapt(support_x, support_y, steps=self.steps, lr=self.lr,
                                    support_ignore=support_ignore, views=self.views,
                                    leave_one_out=self.leave_one_out)

    def adapt_patches(self, support_x, support_y, support_ignore, images: int) -> Adapted:
        """Adaptation on support patches cut from ``images`` support images (tiled evaluation), as
        :meth:`fewseg.Segmenter.adapt` with a tile: the plan for that many *images* (with this learner's
        ``steps`` and ``lr`` overrides), without augmented views or leave-one-out (the patches are the data)."""
        support_y, support_ignore = self.algorithm._check_support(support_x, support_y, support_ignore)
        plan = self.algorithm.plan_for(images).override(steps=self.steps, lr=self.lr, views=0, leave_one_out=False)
        return adapt_with_plan(self.algorithm, plan, support_x, support_y, support_ignore)

    def adapt_trajectory(self, support_x, support_y, support_ignore, steps: int,
                         on_step: Callable[[int, Adapted], None]) -> bool:
        """One adaptation of ``steps`` steps showing ``on_step(k, adapted_k)`` after every step k: what
        ``MetaLearner(algorithm, steps=k, ...)`` adapts to for each k (the same plan, views and rates; the steps
        of a longer run are those of a shorter one). False (nothing run) where the plan selects its steps by
        leave-one-out, whose outcome depends on ``steps``."""
        algo = self.algorithm
        support_y, support_ignore = algo._check_support(support_x, support_y, support_ignore)
        plan = algo.plan_for(support_x.shape[0]).override(steps=steps, lr=self.lr, views=self.views,
                                                          leave_one_out=self.leave_one_out)
        if plan.leave_one_out:
            return False
        xs, ys, igs = augment_views(support_x, support_y, support_ignore, plan.views, 0)
        algo.adapt_run(xs, ys, igs, steps, plan.lr_scale, plan.lr, on_step=on_step)
        return True


def evaluate(learner: Learner, episodes: Sequence[Episode], threshold: float = 0.5,
             device: torch.device | str = "cpu",
             on_episode: Callable[[int, Episode, torch.Tensor], None] | None = None,
             full_resolution: FullResolution | None = None, group: ProcessGroup = SINGLE,
             domain_of: Callable[[int], str] | None = None, tiled=None) -> dict:
    """Adapt on each episode's support set, predict its queries, accumulate per-class stats -> summary.

    full_resolution(key, class_id) -> (mask [1,1,H,W], ignore [1,1,H,W], box) | None: when given (real
    datasets), each query is scored against its label map at the original size: the logits inside ``box``
    are upsampled bilinearly to H x W, and ignore pixels count nowhere.
    group: with several ranks each scores its block of episodes (``on_episode`` sees only those); the episodes'
    intersection/union sums are gathered and added up in episode order, so every rank returns the summary one
    process would.
    domain_of(class_id) -> domain name: when given (a mixture of domains), the summary also holds
    ``per_domain``: {domain: the same summary over that domain's episodes only}.
    tiled: a :class:`fewseg.engine.tiled_eval.TiledEvaluation` (or None: none): each episode's images at their own
    resolution, adapted on support patches, queries predicted window by window and scored at their label maps'
    size (those within one tile as without it); ``on_episode`` then gets None for the probabilities.
    """
    totals = []  # (episode index, class id, [fg_inter, fg_union, bg_inter, bg_union])

    def score(i: int, ep: Episode, predictor) -> None:
        with torch.no_grad():
            probs = predictor.predict(ep.query_x)  # [Q,1,H,W]
        totals.append((i, ep.class_id, _episode_sums(probs, ep, threshold, full_resolution)))
        if on_episode is not None:
            on_episode(i, ep, probs)

    indices = list(group.shard(len(episodes)))
    batch = getattr(learner, "episode_batch", 1) if tiled is None else 1
    if batch > 1 and callable(getattr(learner, "adapt_batch", None)):
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            eps = [episodes[i].to(device) for i in chunk]
            for i, ep, predictor in zip(chunk, eps, adapt_grouped(learner, eps)):
                score(i, ep, predictor)
        return _summary(totals, group, domain_of)
    for i in indices:
        ep = episodes[i].to(device)
        if tiled is not None:
            probs = None
            stats = tiled.episode_stats(learner, ep, threshold, full_resolution, device)
            totals.append((i, ep.class_id, [float(torch.as_tensor(x).sum().item()) for x in stats]))
            if on_episode is not None:
                on_episode(i, ep, probs)
            continue
        score(i, ep, learner.adapt(ep.support_x, ep.support_y, support_ignore=ep.support_ignore))
    return _summary(totals, group, domain_of)


def _episode_sums(probs: torch.Tensor, ep: Episode, threshold: float,
                  full_resolution: FullResolution | None) -> list[float]:
    """[fg_inter, fg_union, bg_inter, bg_union] of one episode's query predictions."""
    if full_resolution is not None and len(ep.keys) == ep.support_x.shape[0] + ep.query_x.shape[0]:
        stats = _full_resolution_stats(probs, ep, threshold, full_resolution)
    else:
        stats = binary_stats(probs > threshold, ep.query_y, ep.query_ignore)
    return [float(torch.as_tensor(x).sum().item()) for x in stats]


def _summary(totals: list, group: ProcessGroup = SINGLE, domain_of: Callable[[int], str] | None = None) -> dict:
    """The summary of (episode index, class id, sums) records gathered from every rank, added up in episode order."""
    acc, per_domain = IoUAccumulator(), {}
    for _, class_id, sums in sorted(t for part in group.gather_objects(totals) for t in part):
        stats = BinaryStats(*[torch.tensor([v], dtype=torch.float64) for v in sums])
        acc.update(class_id, stats)
        if domain_of is not None:
            per_domain.setdefault(domain_of(class_id), IoUAccumulator()).update(class_id, stats)
    summary = acc.summary()
    if domain_of is not None:
        summary["per_domain"] = {d: per_domain[d].summary() for d in sorted(per_domain)}
    return summary


def adapt_grouped(learner, eps: Sequence[Episode]) -> list:
    """``learner.adapt_batch`` on the episodes, stacked in groups of one support shape (and ignore mask or none):
    one predictor per episode, in order."""
    groups: dict = {}
    for j, ep in enumerate(eps):
        key = (tuple(ep.support_x.shape), tuple(ep.support_y.shape), ep.support_ignore is None)
        groups.setdefault(key, []).append(j)
    out: list = [None] * len(eps)
    for members in groups.values():
        part = [eps[j] for j in members]
        ignore = None if part[0].support_ignore is None else torch.stack([e.support_ignore for e in part])
        predictors = learner.adapt_batch(torch.stack([e.support_x for e in part]),
                                         torch.stack([e.support_y for e in part]), ignore)
        for j, predictor in zip(members, predictors):
            out[j] = predictor
    return out


def evaluate_steps(learner, episodes: Sequence[Episode], steps_grid: Sequence[int], threshold: float = 0.5,
                   device: torch.device | str = "cpu") -> dict[int, dict]:
    """{k: ``evaluate(dataclasses.replace(learner, steps=k), episodes)``} for every k of ``steps_grid``, from one
    adaptation per episode to the largest k, scored after each step of the grid (the first k steps of a longer
    run are a shorter run's). Learners with ``adapt_trajectory`` (:class:`MetaLearner`) or ``adapt_batch`` with
    ``on_step`` (fine-tuning) take that path; any other, one evaluation per k."""
    import dataclasses
    grid = sorted({int(k) for k in steps_grid})
    results = {0: evaluate(dataclasses.replace(learner, steps=0), episodes, threshold, device)} if 0 in grid else {}
    positive = [k for k in grid if k > 0]
    if not positive:
        return results
    top, totals = positive[-1], {k: [] for k in positive}
    traj = getattr(learner, "adapt_trajectory", None)
    batched = getattr(learner, "adapt_batch", None)
    if not (callable(traj) or callable(batched)):
        return {**results, **{k: evaluate(dataclasses.replace(learner, steps=k), episodes, threshold, device)
                              for k in positive}}
    learner = dataclasses.replace(learner, steps=top)
    eps = [ep.to(device) for ep in episodes]

    def scorer(offset: int):
        def on_step(k, b, predictor):
            if k in totals:
                ep = eps[offset + b]
                with torch.no_grad():
                    probs = predictor.predict(ep.query_x)
                totals[k].append((offset + b, ep.class_id, _episode_sums(probs, ep, threshold, None)))
        return on_step

    if callable(traj):
        for i, ep in enumerate(eps):
            on_step = scorer(i)
            if not traj(ep.support_x, ep.support_y, ep.support_ignore, top, lambda k, a, f=on_step: f(k, 0, a)):
                return {**results, **{k: evaluate(dataclasses.replace(learner, steps=k), episodes, threshold,
                                                  device) for k in positive}}
    else:
        batch = max(1, getattr(learner, "episode_batch", 1))
        for start in range(0, len(eps), batch):
            _adapt_batch_steps(learner, eps[start:start + batch], start, scorer, set(positive))
    return {**results, **{k: _summary(totals[k]) for k in positive}}


def _adapt_batch_steps(learner, eps: list[Episode], offset: int, scorer, at_steps: set[int]) -> None:
    """``learner.adapt_batch`` with ``on_step`` on a chunk of episodes, in groups of one support shape (or one at a
    time where the learner batches nothing)."""
    if getattr(learner, "episode_batch", 1) <= 1:
        groups = [[j] for j in range(len(eps))]
    else:
        keyed: dict = {}
        for j, ep in enumerate(eps):
            keyed.setdefault((tuple(ep.support_x.shape), ep.support_ignore is None), []).append(j)
        groups = list(keyed.values())
    for members in groups:
        part = [eps[j] for j in members]
        ignore = None if part[0].support_ignore is None else torch.stack([e.support_ignore for e in part])
        on_step = (lambda k, b, p, members=members: scorer(offset)(k, members[b], p))
        learner.adapt_batch(torch.stack([e.support_x for e in part]), torch.stack([e.support_y for e in part]),
                            ignore, on_step=on_step, at_steps=at_steps)


FullResolution = Callable[[Hashable, int], "tuple[torch.Tensor, torch.Tensor, tuple] | None"]


def _full_resolution_stats(probs: torch.Tensor, ep: Episode, threshold: float,
                           full_resolution: FullResolution) -> BinaryStats:
    """Stats of every query image at its original label resolution (probs [Q,1,S,S])."""
    cut = torch.logit(torch.tensor(threshold)).item()
    parts = []
    for j, key in enumerate(ep.keys[ep.support_x.shape[0]:]):
        original = full_resolution(key, ep.class_id)
        if original is None:  # e.g. centre crops: score at the network size
            parts.append(binary_stats(probs[j:j + 1] > threshold, ep.query_y[j:j + 1],
                                      None if ep.query_ignore is None else ep.query_ignore[j:j + 1]))
            continue
        mask, ignore, box = original
        logits = torch.logit(probs[j:j + 1].double().clamp(1e-12, 1 - 1e-12))
        up = to_original(logits, box, mask.shape[-2], mask.shape[-1])
        parts.append(binary_stats(up.cpu() > cut, mask, ignore))
    return BinaryStats(*[torch.cat(field) for field in zip(*parts)])
