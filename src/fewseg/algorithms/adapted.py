"""A network with task-adapted weights: what adaptation returns and what predicts new images.

Example:
    >>> import torch, fewseg
    >>> algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1)
    >>> adapted = algo.adapt(torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float())
    >>> adapted.predict(torch.rand(3, 3, 16, 16)).shape
    torch.Size([3, 1, 16, 16])
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fewseg.algorithms.inner_loop import Params
from fewseg.data.episode import check_images, check_unit_range


@dataclass
class Adapted:
    """``predict(images [N,C,H,W] in [0,1]) -> [N,1,H,W]`` foreground probabilities, ``chunk`` images per forward."""

    forward: Callable[[Params, torch.Tensor], torch.Tensor]
    params: Params
    chunk: int = 16
    info: dict = field(default_factory=dict)  # what adaptation did (steps taken, plan, support images)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        weights = next((p for p in self.params.values() if p.dim() == 4), None)  # the first convolution's
        check_images("images", images, 4, channels=None if weights is None else weights.shape[1])
        check_unit_range("images", images)
        return torch.cat([self.forward(self.params, images[i:i + self.chunk])
                          for i in range(0, images.shape[0], self.chunk)])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(images))
