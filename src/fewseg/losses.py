"""Pixel losses on foreground logits, all honouring an optional ignore mask.

Every loss maps (logits [N,1,H,W], target {0,1} [N,1,H,W], ignore bool [N,1,H,W] | None) -> scalar.

An image whose target is all background (a negative support image: it shows none of the class) counts in every
loss as background pixels; means over foreground (``balanced-bce``) pool the foreground of all N images, and a
batch without any foreground (or with every pixel ignored) gives a finite loss and gradient, never a division by
zero.

Example:
    >>> import torch
    >>> from fewseg.losses import LOSSES, get_loss
    >>> loss_fn = get_loss("bce+dice")
    >>> round(loss_fn(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), None).item(), 4)
    1.023
    >>> empty = torch.zeros(2, 1, 8, 8)                                # two negatives: no foreground at all
    >>> all(bool(torch.isfinite(fn(torch.randn(2, 1, 8, 8), empty, None))) for fn in LOSSES.values())
    True
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _weights(target: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(target) if ignore is None else (~ignore).to(target.dtype)


def bce(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy with logits over the non-ignored pixels."""
    if ignore is None:  # one fused op (and a shorter double-backward graph for second-order MAML)
        return F.binary_cross_entropy_with_logits(logits, target)
    w = _weights(target, ignore)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_pixel * w).sum() / w.sum().clamp_min(1.0)


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Class-balanced BCE: the mean over foreground pixels and the mean over background pixels, averaged.

    Small objects (a few % of the pixels) otherwise contribute almost nothing to the gradient.
    """
    w = _weights(target, ignore)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w
    fg, bg = target * w, (1 - target) * w
    return 0.5 * ((per_pixel * fg).sum() / fg.sum().clamp_min(1.0) + (per_pixel * bg).sum() / bg.sum().clamp_min(1.0))


def dice(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None,
         eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss (1 - Dice) per image, averaged over images; robust to class imbalance."""
    w = _weights(target, ignore)
    prob = torch.sigmoid(logits) * w
    tgt = target * w
    dims = tuple(range(1, logits.dim()))
    inter = (prob * tgt).sum(dims)
    return (1 - (2 * inter + eps) / (prob.sum(dims) + tgt.sum(dims) + eps)).mean()


def focal(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None,
          gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al.) averaged over non-ignored pixels."""
    w = _weights(target, ignore)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return (((1 - p_t) ** gamma) * ce * w).sum() / w.sum().clamp_min(1.0)


def bce_dice(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    return bce(logits, target, ignore) + dice(logits, target, ignore)


LOSSES: dict[str, LossFn] = {"bce": bce, "balanced-bce": balanced_bce, "dice": dice, "focal": focal, "bce+dice": bce_dice}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]
