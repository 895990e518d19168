"""The reference network of the project: three 3x3 convolutions.

Example:
    >>> import torch, fewseg
    >>> model = fewseg.create_model("seed-cnn", width=4)
    >>> model(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
"""
from __future__ import annotations

import torch
from torch import nn

from fewseg.registry import MODELS


class SeedCNN(nn.Sequential):
    """Conv(3->32, 3x3, pad 1)-ReLU-Conv(32->64)-ReLU-Conv(64->1): [B,3,H,W] -> [B,1,H,W] logits."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> [B,2*width,H,W] penultimate features (used by the prototype baseline)."""
        for layer in list(self)[:-1]:
            x = layer(x)
        return x

    head_prefix = "4."  # parameter-name prefix of the last layer (ANIL's default head)

    def parameter_groups(self) -> dict[str, str]:
        """Regexes of parameter names by part (``adapt_pattern: "@head"``)."""
        return {"body": r"^[0-3]\.", "head": r"^4\."}


@MODELS.register("seed-cnn")
def seed_cnn(**kwargs) -> SeedCNN:
    return SeedCNN(**kwargs)
