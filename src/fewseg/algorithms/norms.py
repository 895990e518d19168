"""Normalisation layers under meta-learning: BatchNorm needs an explicit policy so that no running statistic
leaks from query images into adaptation.

Example:
    >>> import torch
    >>> from fewseg.algorithms.norms import check_norm_layers
    >>> check_norm_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4)), "error")
    >>> check_norm_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), "error")
    Traceback (most recent call last):
    ...
    ValueError: model has BatchNorm layer '1': use GroupNorm, or pass batchnorm='batch-stats' ...
"""
from __future__ import annotations

import torch
from torch import nn

from fewseg.choices import BATCHNORM_POLICIES

NORM_TYPES = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.InstanceNorm2d)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_norm_layers(model: nn.Module, batchnorm: str) -> None:
    """batchnorm="error" (default): refuse models with BatchNorm. "batch-stats": every BatchNorm uses the
    statistics of the current batch only (train and test, as in the original MAML), no running statistics."""
    if batchnorm not in BATCHNORM_POLICIES:
        raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_POLICIES)}, got {batchnorm!r}")
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    if batchnorm == "batch-stats":
        torch.func.replace_all_batch_norm_modules_(model)
        return
    raise ValueError(f"model has BatchNorm layer {bns[0]!r}: use GroupNorm, or pass batchnorm='batch-stats' "
                     "(per-batch statistics, no running statistics)")
