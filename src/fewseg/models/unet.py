"""A U-Net with GroupNorm (vmap-safe, no running statistics).

Example:
    >>> import torch, fewseg
    >>> model = fewseg.create_model("unet", depth=2, width=4)
    >>> model(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.registry import MODELS


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ConvBlock(nn.Sequential):
    """Two (conv 3x3 -> GroupNorm -> ReLU): [B,cin,H,W] -> [B,cout,H,W]."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(),
        )


class UNet(nn.Module):
    """U-Net: ``depth`` resolution levels, channels ``width * 2**level``; input sides divisible by 2**(depth-1)."""

    head_prefix = "head."

    def __init__(self, in_channels: int = 3, depth: int = 4, width: int = 16):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"unet: depth and width must be >= 1, got depth={depth}, width={width}")
        self.depth = depth
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(ConvBlock(cin, c))
            cin = c
        self.up = nn.ModuleList()
        for c_skip, c_deep in zip(reversed(chans[:-1]), reversed(chans[1:])):
            self.up.append(ConvBlock(c_skip + c_deep, c_skip))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def parameter_groups(self) -> dict[str, str]:
        """Regexes of parameter names by part (``adapt_pattern: "@decoder|@head"``)."""
        return {"encoder": r"^down\.", "decoder": r"^up\.", "head": r"^head\."}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> [B,width,H,W] decoder features before the 1x1 head."""
        factor = 2 ** (self.depth - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"unet depth {self.depth}: image sides must be divisible by {factor}, "
                             f"got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([skip, x], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [B,1,H,W]


@MODELS.register("unet")
def unet(**kwargs) -> UNet:
    return UNet(**kwargs)
