"""How an image of any size reaches the network, and how its prediction returns to the image's own size.

The network sees ``image_size x image_size`` inputs prepared as in meta-training (the checkpoint stores the
size and the resize mode). Images of any size are resized down (bilinear, antialiased) and the logits are
upsampled back, so memory stays proportional to one image plus one network-size batch: a 4000x3000 photo
costs its decoded pixels and its probability map (about 100 MB), never a network pass at full size.

Example:
    >>> import numpy as np, torch
    >>> prep = Preprocessing(image_size=16, resize="pad", channels=3)
    >>> x = prep.image(np.zeros((30, 60, 3), np.uint8))                   # [C,S,S] in [0,1]
    >>> tuple(x.shape)
    (3, 16, 16)
    >>> y, ignore = prep.mask(np.ones((30, 60), bool), np.zeros((30, 60), bool))
    >>> int(ignore.sum())                                                 # the padding is ignored
    128
    >>> prep.to_original(torch.zeros(1, 1, 16, 16), (30, 60)).shape       # logits back at 30x60
    torch.Size([30, 60])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from fewseg.data.channels import convert_channels
from fewseg.data.transforms import RESIZE_MODES, content_box, resize_pair, to_original
from fewseg.errors import CheckpointError

PIXELS = "floats in [0, 1] (uint8 / 255), no mean/std normalisation"


@dataclass(frozen=True)
class Preprocessing:
    """image_size: the network's side; resize: stretch, pad or crop (as in training); channels: the model's."""

    image_size: int
    resize: str = "stretch"
    channels: int = 3

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise CheckpointError(f"unknown resize mode {self.resize!r} (expected one of {', '.join(RESIZE_MODES)})")
        if not isinstance(self.image_size, int) or self.image_size < 1 or self.channels < 1:
            raise CheckpointError(f"bad preprocessing: image_size={self.image_size!r}, channels={self.channels!r}")

    @property
    def predict_mode(self) -> str:
        """The resize of new images: a centre crop would leave their borders unsegmented, so crop -> pad."""
        return "pad" if self.resize == "crop" else self.resize

    def image(self, array: np.ndarray, mode: str | None = None, name: str = "image") -> torch.Tensor:
        """[H,W,c] uint8 or float in [0,1] -> float32 [channels,S,S] in [0,1] (``mode``: default the training one)."""
        x, _ = resize_pair(array, np.zeros(array.shape[:2], np.uint8), self.image_size, mode or self.resize)
        return convert_channels(x, self.channels, name)

    def mask(self, fg: np.ndarray, ignore: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(fg, ignore) bool [H,W] -> (y float [1,S,S] in {0,1}, ignore bool [1,S,S]; padding is ignored)."""
        labels = np.where(ignore, 255, fg.astype(np.uint8)).astype(np.uint8)
        _, lab = resize_pair(np.zeros((*fg.shape, 1), np.uint8), labels, self.image_size, self.resize)
        return (lab == 1).float()[None], (lab == 255)[None]

    def to_original(self, logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Network-size logits [1,1,S,S] of an image prepared with :attr:`predict_mode` -> [H,W] (bilinear)."""
        box = content_box(hw[0], hw[1], self.image_size, self.predict_mode)
        return to_original(logits, box, hw[0], hw[1])[0, 0]

    def to_dict(self) -> dict:
        return {**asdict(self), "pixels": PIXELS}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        try:
            return cls(int(d["image_size"]), str(d.get("resize", "stretch")), int(d.get("channels", 3)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"bad preprocessing record {d!r}: {exc}") from None
