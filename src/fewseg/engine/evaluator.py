"""Few-shot evaluation: a fixed episode list, per-class intersection/union, mIoU, FB-IoU, 95% CI.

Any *learner* works: an object with ``adapt(support_x, support_y, support_ignore=None) -> predictor``
whose ``predict(images [N,3,H,W]) -> [N,1,H,W]`` gives foreground probabilities. Test-time adaptation
never builds a second-order graph.

Example:
    >>> episodes = EpisodeSampler(test_ds, shots=5, queries=5, seed=123).fixed_episodes(300)
    >>> summary = evaluate(MetaLearner(algo, steps=10), episodes)     # {"miou": ..., "fb_iou": ..., ...}
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from fewseg.algorithms.base import Adapted, MetaAlgorithm
from fewseg.data.episode import Episode
from fewseg.metrics import IoUAccumulator, binary_stats


class Predictor(Protocol):
    def predict(self, images: torch.Tensor) -> torch.Tensor: ...


class Learner(Protocol):
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              support_ignore: torch.Tensor | None = None) -> Predictor: ...


@dataclass
class MetaLearner:
    """A meta-trained algorithm adapting with ``steps`` inner steps (0 = zero-shot) at ``lr``."""

    algorithm: MetaAlgorithm
    steps: int | None = None
    lr: float | None = None

    def adapt(self, support_x, support_y, support_ignore=None) -> Adapted:
        return self.algorithm.adapt(support_x, support_y, steps=self.steps, lr=self.lr,
                                    support_ignore=support_ignore)


def evaluate(learner: Learner, episodes: Sequence[Episode], threshold: float = 0.5,
             device: torch.device | str = "cpu",
             on_episode: Callable[[int, Episode, torch.Tensor], None] | None = None) -> dict:
    """Adapt on each episode's support set, predict its queries, accumulate per-class stats -> summary."""
    acc = IoUAccumulator()
    for i, ep in enumerate(episodes):
        ep = ep.to(device)
        predictor = learner.adapt(ep.support_x, ep.support_y, support_ignore=ep.support_ignore)
        with torch.no_grad():
            probs = predictor.predict(ep.query_x)  # [Q,1,H,W]
        acc.update(ep.class_id, binary_stats(probs > threshold, ep.query_y, ep.query_ignore))
        if on_episode is not None:
            on_episode(i, ep, probs)
    return acc.summary()
