"""Prototype baseline (PANet-style): masked average pooling of support features, cosine similarity on queries.

Example:
    >>> import torch, fewseg
    >>> from fewseg.baselines.prototype import PrototypeLearner
    >>> model = fewseg.create_model("seed-cnn", width=4)
    >>> support_x, support_y = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    >>> learner = PrototypeLearner(encoder=model.features, scale=20.0)
    >>> learner.adapt(support_x, support_y).predict(torch.rand(3, 3, 16, 16)).shape   # [Q,1,H,W]
    torch.Size([3, 1, 16, 16])
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Prototypes:
    encoder: Callable[[torch.Tensor], torch.Tensor]
    fg: torch.Tensor  # [C]
    bg: torch.Tensor  # [C]
    scale: float

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(images)                                     # [N,C,h,w]
        protos = torch.stack([self.bg, self.fg])                         # [2,C]
        sim = F.cosine_similarity(feats.unsqueeze(1), protos[None, :, :, None, None], dim=2)  # [N,2,h,w]
        prob = torch.softmax(self.scale * sim, dim=1)[:, 1:2]            # [N,1,h,w]
        return F.interpolate(prob, size=images.shape[-2:], mode="bilinear", align_corners=False)


@dataclass
class PrototypeLearner:
    """Foreground/background prototypes from the support set; no gradient steps at test time.

    Each prototype pools its pixels over all support images at once: a negative image (an empty mask: it shows
    none of the class) adds nothing to the foreground prototype and all its (non-ignored) pixels to the
    background one. A support set without foreground gives a zero foreground prototype (cosine 0 everywhere),
    never NaN.
    """

    encoder: Callable[[torch.Tensor], torch.Tensor]
    scale: float = 20.0

    @torch.no_grad()
    def adapt(self, support_x, support_y, support_ignore=None) -> Prototypes:
        feats = self.encoder(support_x)                                  # [S,C,h,w]
        size = feats.shape[-2:]
        fg = F.interpolate(support_y.float(), size=size, mode="bilinear", align_corners=False)  # [S,1,h,w]
        valid = torch.ones_like(fg) if support_ignore is None else \
            1 - F.interpolate(support_ignore.float(), size=size, mode="nearest")
        bg = (1 - fg) * valid
        fg = fg * valid

        def pool(weights: torch.Tensor) -> torch.Tensor:
            return (feats * weights).sum((0, 2, 3)) / weights.sum().clamp_min(1e-6)  # [C]

        return Prototypes(self.encoder, pool(fg), pool(bg), self.scale)
