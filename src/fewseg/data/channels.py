"""Images with the channel count a network declares: grey (1), RGB (3) or any other count C.

File-based datasets decode photos as RGB; :func:`convert_channels` turns them into what the model takes
(RGB -> grey by ITU-R 601 luma, grey -> RGB by repetition) and :class:`ChannelView` applies it to every
sample of a dataset, so ``model.options.in_channels: 1`` trains, evaluates and adapts on grey images end
to end. Other counts (multispectral) come from a dataset or arrays that already hold C channels.

Example:
    >>> import torch
    >>> convert_channels(torch.ones(3, 2, 2), 1).shape
    torch.Size([1, 2, 2])
    >>> convert_channels(torch.ones(1, 2, 2), 3).shape
    torch.Size([3, 2, 2])
"""
from __future__ import annotations

from collections.abc import Hashable

import torch

from fewseg.data.base import Sample, SegmentationDataset
from fewseg.errors import DataError

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L" conversion


def convert_channels(image: torch.Tensor, channels: int, name: str = "image") -> torch.Tensor:
    """``[..., c, H, W]`` -> ``[..., channels, H, W]``: identity, RGB -> grey, grey -> RGB; else a DataError."""
    c = image.shape[-3]
    if c == channels:
        return image
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image * w).sum(dim=-3, keepdim=True)
    if c == 1:
        return image.expand(*image.shape[:-3], channels, *image.shape[-2:]).contiguous()
    if c == 4 and channels == 3:  # RGBA: drop alpha
        return image[..., :3, :, :]
    raise DataError(f"{name} has {c} channels but the model takes {channels} (grey and RGB convert into each "
                    f"other; other counts must match the model's in_channels)")


class ChannelView(SegmentationDataset):
    """``dataset`` with every image converted to ``channels`` channels; everything else is the dataset's own."""

    def __init__(self, dataset: SegmentationDataset, channels: int):
        self.dataset, self.channels = dataset, int(channels)

    def __getattr__(self, name: str):  # name, image_size, class_names, resize, full_resolution, ...
        if name in ("dataset", "channels"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def name(self) -> str:  # a class attribute of SegmentationDataset, so not reached by __getattr__
        return self.dataset.name

    @property
    def image_size(self) -> int:
        return self.dataset.image_size

    @property
    def class_names(self) -> dict[int, str]:
        return self.dataset.class_names

    def class_ids(self) -> list[int]:
        return self.dataset.class_ids()

    def items(self, class_id: int):
        return self.dataset.items(class_id)

    def load(self, key: Hashable, class_id: int) -> Sample:
        return self._converted(self.dataset.load(key, class_id), key)

    def load_patch(self, key: Hashable, class_id: int, generator=None, role: str = "support") -> Sample:
        """The dataset's patch of ``key`` (:mod:`fewseg.data.patches`), converted."""
        return self._converted(self.dataset.load_patch(key, class_id, generator, role), key)

    def _converted(self, s: Sample, key: Hashable) -> Sample:
        return Sample(convert_channels(s.image, self.channels, f"{self.dataset.name} image {key}"), s.mask, s.ignore)

    def records(self):
        return self.dataset.records()

    def describe(self) -> dict:
        return {**self.dataset.describe(), "channels": self.channels}


def with_channels(dataset: SegmentationDataset, channels: int | None) -> SegmentationDataset:
    """``dataset`` itself when it already gives ``channels`` (or None: as it is), else a :class:`ChannelView`."""
    return dataset if channels in (None, 3) else ChannelView(dataset, channels)
