"""Encoder/decoder models: what lets the meta-learners run an encoder once per task, and name its parts.

A model that splits into an encoder and a decoder declares ``encoder_prefix`` (the parameter-name prefix of the
encoder) and accepts two more kinds of input in ``forward``: ``EncodeOnly(images)`` returns the encoder's
features (an ``EncoderFeatures``), and an ``EncoderFeatures`` runs the decoder and head alone. Because both go
through ``forward``, ``torch.func.functional_call`` with any weights (a task's adapted ones, MR-MAML's noisy
ones) splits the same way. When the inner loop adapts no encoder parameter, the MAML family encodes the support
and query images once per task instead of once per inner step (``MetaAlgorithm.encoder_is_fixed``).

``parameter_groups()`` names regexes of parameter names ("encoder", "decoder", "head", "stage0", ...), so that
``adapt_pattern`` can say ``"@decoder|@head"`` or ``"@stage4|@decoder|@head"``.

Example:
    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     encoder_prefix = "enc."
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.enc, self.dec = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 1, 1)
    ...     def parameter_groups(self):
    ...         return {"encoder": r"^enc\\.", "decoder": r"^dec\\."}
    ...     def forward(self, x):
    ...         if isinstance(x, EncodeOnly):
    ...             return EncoderFeatures([self.enc(x.images)], x.images.shape[-2:])
    ...         feats = x if isinstance(x, EncoderFeatures) else EncoderFeatures([self.enc(x)], x.shape[-2:])
    ...         return self.dec(feats.maps[0])
    >>> net, x = Net(), torch.rand(2, 3, 8, 8)
    >>> torch.equal(net(net(EncodeOnly(x))), net(x))
    True
    >>> expand_groups("@decoder", net)
    '(?:^dec\\\\.)'
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch
from torch import nn


class EncodeOnly(NamedTuple):
    """``model(EncodeOnly(images))``: the encoder's features of images [N,C,H,W]."""

    images: torch.Tensor


class EncoderFeatures(NamedTuple):
    """An encoder's output: feature maps [N,C_i,H_i,W_i] (shallow to deep) and the images' size (H, W)."""

    maps: list[torch.Tensor]
    size: tuple[int, int]


def expand_groups(pattern: str, model: nn.Module) -> str:
    """``pattern`` with every ``@name`` replaced by the regex of the model's parameter group ``name``; a one-line
    error names an unknown group and lists the model's groups."""
    if "@" not in pattern:
        return pattern
    groups = model.parameter_groups() if hasattr(model, "parameter_groups") else {}

    def group(m: re.Match) -> str:
        name = m.group(1)
        if name not in groups:
            known = ", ".join("@" + g for g in groups) or "none (the model declares no parameter_groups)"
            raise ValueError(f"adapt_pattern {pattern!r}: unknown parameter group @{name}; this model's groups: "
                             f"{known}")
        return f"(?:{groups[name]})"
    return re.sub(r"@([A-Za-z_][\w-]*)", group, pattern)
