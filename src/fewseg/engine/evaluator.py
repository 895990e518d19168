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
from fewseg.algorithms.test_time import adapt_with_plan
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
    for i in group.shard(len(episodes)):
        ep = episodes[i].to(device)
        if tiled is not None:
            probs = None
            stats = tiled.episode_stats(learner, ep, threshold, full_resolution, device)
            totals.append((i, ep.class_id, [float(torch.as_tensor(x).sum().item()) for x in stats]))
            if on_episode is not None:
                on_episode(i, ep, probs)
            continue
        predictor = learner.adapt(ep.support_x, ep.support_y, support_ignore=ep.support_ignore)
        with torch.no_grad():
            probs = predictor.predict(ep.query_x)  # [Q,1,H,W]
        if full_resolution is not None and len(ep.keys) == ep.support_x.shape[0] + ep.query_x.shape[0]:
            stats = _full_resolution_stats(probs, ep, threshold, full_resolution)
        else:
            stats = binary_stats(probs > threshold, ep.query_y, ep.query_ignore)
        totals.append((i, ep.class_id, [float(torch.as_tensor(x).sum().item()) for x in stats]))
        if on_episode is not None:
            on_episode(i, ep, probs)
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
