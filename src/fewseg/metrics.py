"""Few-shot segmentation metrics, following the field's protocol (HSNet ``common/evaluation.py``).

Per-image statistics come first (:func:`binary_stats`), then an :class:`IoUAccumulator` sums them per
class over episodes and turns them into metrics (:meth:`IoUAccumulator.summary`):

* ``miou``       mean over classes of each class's foreground IoU, computed from the intersection and
                 union *summed over all of that class's episodes* (HSNet's mIoU; not a mean of
                 per-episode IoUs, and every class weighs the same however many episodes it had).
* ``fb_iou``     HSNet's FB-IoU: (foreground IoU + background IoU) / 2, each computed from intersection
                 and union summed over *all* episodes of all classes (one pooled number, not a mean over
                 classes).
* ``fb_iou_class_mean``  the other definition found in papers: the mean over classes of each class's
                 (foreground IoU + background IoU) / 2, from that class's summed counts.
* ``per_class``  ``{class_id: foreground IoU}`` from the class's summed counts.
* ``episode_iou_mean`` / ``episode_iou_ci95``  mean foreground IoU of single episodes (sum of
                 intersections / sum of unions over that episode's query images) and the half-width of
                 its 95% normal confidence interval, 1.96 * std(ddof=1) / sqrt(n) (0 when n < 2).
* ``miou_ci95``  the CI reported next to mIoU: the per-episode half-width above (a bootstrap over
                 episodes within classes would be the exact one; this is the common approximation).
* ``class_iou_ci95``  1.96 * std(ddof=1) / sqrt(C) over the per-class IoUs (spread between classes).
* ``dice``       mean per-episode foreground Dice, 2 I / (|P| + |T|) = 2 I / (I + U).
* ``n_episodes`` episodes added; ``n_classes`` classes with a defined IoU (the classes ``miou`` averages).

0/0 guard: in the protocol every query contains its class, so unions are > 0. Should a union still be 0
(empty target and empty prediction), that IoU is undefined and is *left out* (never counted as 1 or 0):
a class with summed union 0 is absent from ``per_class``/``miou``, an episode with union 0 counts in
``n_episodes`` but not in the episode means. Metrics with nothing to average are NaN (CIs are 0).

Example:
    >>> import torch
    >>> from fewseg.metrics import IoUAccumulator, binary_stats
    >>> pred = torch.tensor([[[[True, True, False, False]]]])    # [N=1,1,H=1,W=4]
    >>> target = torch.tensor([[[[1., 0., 1., 0.]]]])
    >>> acc = IoUAccumulator()
    >>> acc.update(3, binary_stats(pred, target))
    >>> s = acc.summary(); round(s["miou"], 4), round(s["fb_iou"], 4)
    (0.3333, 0.3333)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch

__all__ = ["BinaryStats", "IoUAccumulator", "binary_stats"]

_Z95 = 1.96


class BinaryStats(NamedTuple):
    """Per-image pixel counts, int64 tensors of shape ``[N]`` (on the inputs' device)."""

    fg_inter: torch.Tensor
    fg_union: torch.Tensor
    bg_inter: torch.Tensor
    bg_union: torch.Tensor


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask > 0.5


def binary_stats(pred: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> BinaryStats:
    """Foreground/background intersection and union per image; ``ignore`` pixels count nowhere.

    Args:
        pred: ``[N,1,H,W]`` predicted foreground, bool or {0,1} numbers (> 0.5 is foreground).
        target: ``[N,1,H,W]`` ground truth, bool or {0,1} numbers (> 0.5 is foreground).
        ignore: optional bool ``[N,1,H,W]``; True marks pixels excluded from every count.

    Returns:
        :class:`BinaryStats` of int64 ``[N]`` tensors.

    Example:
        >>> import torch
        >>> from fewseg.metrics import binary_stats
        >>> s = binary_stats(torch.tensor([[[[True, False]]]]), torch.tensor([[[[1., 1.]]]]))
        >>> s.fg_inter.tolist(), s.fg_union.tolist(), s.bg_inter.tolist(), s.bg_union.tolist()
        ([1], [2], [0], [1])
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.dim() < 2:
        raise ValueError(f"expected [N,1,H,W] masks, got shape {tuple(pred.shape)}")
    p, t = _as_bool(pred), _as_bool(target)
    if ignore is None:
        valid = torch.ones_like(p)
    else:
        if ignore.shape != pred.shape:
            raise ValueError(f"ignore shape {tuple(ignore.shape)} != pred shape {tuple(pred.shape)}")
        valid = ~ignore.bool()
    dims = tuple(range(1, p.dim()))

    def count(m: torch.Tensor) -> torch.Tensor:  # [N,1,H,W] bool -> [N] int64
        return (m & valid).sum(dim=dims, dtype=torch.int64)

    return BinaryStats(count(p & t), count(p | t), count(~p & ~t), count(~p | ~t))


def _ci95(values: list[float]) -> float:
    """Half-width 1.96 * std(ddof=1) / sqrt(n); 0 when n < 2."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return _Z95 * math.sqrt(var / n)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


class IoUAccumulator:
    """Per-class sums of fg/bg intersection and union, plus per-episode foreground IoU and Dice.

    Call :meth:`update` once per episode with the statistics of that episode's query images;
    :meth:`summary` gives plain-Python metrics (definitions in the module docstring).

    Example:
        >>> import torch
        >>> from fewseg.metrics import BinaryStats, IoUAccumulator
        >>> acc = IoUAccumulator()
        >>> acc.update(1, BinaryStats(*torch.tensor([[1], [2], [1], [2]])))   # fg IoU 1/2
        >>> acc.update(2, BinaryStats(*torch.tensor([[1], [1], [3], [3]])))   # fg IoU 1
        >>> s = acc.summary(); s["miou"], s["per_class"], s["n_episodes"]
        (0.75, {1: 0.5, 2: 1.0}, 2)
    """

    def __init__(self) -> None:
        self.sums: dict[int, list[float]] = {}  # class id -> [fg_inter, fg_union, bg_inter, bg_union]
        self.episode_iou: list[float] = []
        self.episode_dice: list[float] = []
        self.n_episodes = 0

    def update(self, class_id: int, stats: BinaryStats | Mapping[str, torch.Tensor]) -> None:
        """Add one episode (all its query images, stats of shape ``[N]``) of class ``class_id``."""
        if isinstance(stats, Mapping):
            stats = BinaryStats(**{k: stats[k] for k in BinaryStats._fields})
        totals = [float(torch.as_tensor(x).sum().item()) for x in stats]
        row = self.sums.setdefault(int(class_id), [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate(totals):
            row[i] += v
        inter, union = totals[0], totals[1]
        self.n_episodes += 1
        if union > 0:
            self.episode_iou.append(inter / union)
            self.episode_dice.append(2 * inter / (inter + union))

    def per_class(self) -> dict[int, float]:
        """Foreground IoU of each class with a non-zero summed union, from its summed inter/union."""
        return {c: r[0] / r[1] for c, r in sorted(self.sums.items()) if r[1] > 0}

    def summary(self) -> dict:
        """Metrics as plain floats/ints/dicts (NaN where nothing was measured)."""
        per_class = self.per_class()
        ious = list(per_class.values())
        fi, fu, bi, bu = (sum(r[i] for r in self.sums.values()) for i in range(4))
        fb_per_class = [(_ratio(r[0], r[1]) + _ratio(r[2], r[3])) / 2
                        for c, r in sorted(self.sums.items()) if r[1] > 0 and r[3] > 0]
        episode_ci = _ci95(self.episode_iou)
        return {
            "miou": _mean(ious),
            "miou_ci95": episode_ci,
            "fb_iou": (_ratio(fi, fu) + _ratio(bi, bu)) / 2,
            "fb_iou_class_mean": _mean(fb_per_class),
            "per_class": per_class,
            "episode_iou_mean": _mean(self.episode_iou),
            "episode_iou_ci95": episode_ci,
            "class_iou_ci95": _ci95(ious),
            "dice": _mean(self.episode_dice),
            "n_episodes": self.n_episodes,
            "n_classes": len(ious),
        }
