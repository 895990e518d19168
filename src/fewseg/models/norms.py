"""Normalisation layers under meta-learning: BatchNorm needs an explicit policy so that no statistic leaks from
query images into adaptation, and so that the inner loop (and vmap) never writes running statistics.

Policies (``apply_batchnorm_policy``; the algorithm option ``batchnorm`` and the ``timm-unet`` model option of
the same name use it):

- ``frozen-stats``: every BatchNorm stays in eval mode for good, normalising with its stored running statistics
  (a pretrained encoder's ImageNet statistics); the affine weights still learn and adapt. Each image is then
  processed on its own: nothing of one image (a query) can change another's (a support image's) prediction.
  The usual practice of few-shot segmentation with pretrained encoders.
- ``batch-stats``: statistics of the current batch only, at training and test time, no running statistics
  (the original MAML). fewseg forwards support and query sets separately, so query images never normalise the
  support set, but the images *within* one forward normalise each other (test-time predictions depend on the
  other images predicted with them).
- ``group-norm``: each BatchNorm becomes a GroupNorm with the BatchNorm's affine weights (running statistics
  dropped): per-image statistics, as in fewseg's U-Net. Changes a pretrained network's features; suits encoders
  trained from scratch.
- ``error`` (the algorithm's default): refuse a model with a BatchNorm that has no policy yet.

The layers keep their parameter and buffer names (the policy swaps the class of each module), so checkpoints
and pretrained weights load either side of the conversion, and timm's BatchNorm-with-activation layers keep
their activation.

Example:
    >>> import torch
    >>> from fewseg.models.norms import apply_batchnorm_policy, batchnorm_policy_of, check_norm_layers
    >>> check_norm_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4)), "error")
    >>> check_norm_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), "error")
    Traceback (most recent call last):
    ...
    ValueError: model has BatchNorm layer '1' with no policy: pass batchnorm='frozen-stats', 'batch-stats' or ...
    >>> net = apply_batchnorm_policy(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)),
    ...                              "frozen-stats")
    >>> net.train()[1].training, batchnorm_policy_of(net)
    (False, 'frozen-stats')
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.choices import BATCHNORM_POLICIES

NORM_TYPES = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.InstanceNorm2d)
MODEL_POLICIES = ("frozen-stats", "batch-stats", "group-norm")  # the ones that change the model


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_policy_of(model: nn.Module) -> str | None:
    """The policy every BatchNorm of ``model`` is under ("frozen-stats", ...), None without BatchNorm or with
    BatchNorm under no policy; "mixed" when the layers differ."""
    policies = {getattr(m, "fewseg_batchnorm", None) for _, m in batchnorm_layers(model)}
    if not policies or policies == {None}:
        return None
    return policies.pop() if len(policies) == 1 else "mixed"


def groups_for(channels: int) -> int:
    """GroupNorm groups for ``channels``: the largest of 32, 16, 8, 4, 2, 1 that divides it."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


_CLASSES: dict[tuple[type, str], type] = {}


def _policy_class(cls: type, policy: str) -> type:
    """A subclass of the BatchNorm class ``cls`` under ``policy`` (one per class and policy)."""
    key = (cls, policy)
    if key not in _CLASSES:
        if policy == "frozen-stats":
            def train(self, mode: bool = True):  # eval mode for good: running statistics, never updated
                return super(new, self).train(False)
            body = {"train": train}
        else:  # group-norm
            def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,C,...] -> [N,C,...], per-image statistics
                y = F.group_norm(x, self.fewseg_groups, self.weight, self.bias, self.eps)
                if hasattr(self, "act"):  # timm's BatchNormAct2d: norm, then dropout and activation
                    y = self.act(self.drop(y))
                return y
            body = {"forward": forward}
        new = type(f"{cls.__name__}[{policy}]", (cls,), {**body, "fewseg_batchnorm": policy,
                                                         "__module__": __name__})
        _CLASSES[key] = new
    return _CLASSES[key]


def apply_batchnorm_policy(model: nn.Module, policy: str) -> nn.Module:
    """Put every BatchNorm of ``model`` under ``policy`` (one of ``MODEL_POLICIES``), in place; returns ``model``.
    Layers already under a policy keep theirs only if it is the same one (else a one-line error)."""
    if policy not in MODEL_POLICIES:
        raise ValueError(f"batchnorm policy must be one of {', '.join(MODEL_POLICIES)}, got {policy!r}")
    for name, m in batchnorm_layers(model):
        current = getattr(m, "fewseg_batchnorm", None)
        if current == policy:
            continue
        if current is not None:
            raise ValueError(f"BatchNorm layer {name!r} is already under policy {current!r}, not {policy!r}")
        if policy == "batch-stats":
            m.running_mean = m.running_var = m.num_batches_tracked = None
            m.track_running_stats = False
            m.fewseg_batchnorm = "batch-stats"
            continue
        if policy == "group-norm":
            if not m.affine:
                m.weight = nn.Parameter(torch.ones(m.num_features))
                m.bias = nn.Parameter(torch.zeros(m.num_features))
            m.fewseg_groups = groups_for(m.num_features)
        m.__class__ = _policy_class(type(m), policy)
        if policy == "frozen-stats":
            if not m.track_running_stats or m.running_mean is None:
                raise ValueError(f"BatchNorm layer {name!r} keeps no running statistics: frozen-stats needs them "
                                 "(use batch-stats or group-norm)")
            m.train(False)
    return model


def check_norm_layers(model: nn.Module, batchnorm: str) -> None:
    """The algorithm option ``batchnorm``: "error" (default) refuses a BatchNorm that is under no policy yet;
    a policy name applies that policy to the layers that have none (``apply_batchnorm_policy``)."""
    if batchnorm not in BATCHNORM_POLICIES:
        raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_POLICIES)}, got {batchnorm!r}")
    bare = [n for n, m in batchnorm_layers(model) if getattr(m, "fewseg_batchnorm", None) is None]
    if not bare:
        return
    if batchnorm != "error":
        apply_batchnorm_policy(model, batchnorm)
        return
    raise ValueError(f"model has BatchNorm layer {bare[0]!r} with no policy: pass batchnorm='frozen-stats', "
                     "'batch-stats' or 'group-norm' (README: BatchNorm), or use GroupNorm")
