"""The contract every dataset follows: it lists (image, mask, class) records and loads one.

A dataset knows nothing of episodes; :class:`fewseg.data.sampler.EpisodeSampler` builds them.

Example:
    >>> import fewseg
    >>> ds = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=16)
    >>> c = ds.class_ids()[0]; key = ds.items(c)[0]
    >>> s = ds.load(key, c)        # Sample(image [3,H,W] float32, mask [1,H,W] {0,1}, ignore [1,H,W] bool)
    >>> tuple(s.image.shape), tuple(s.mask.shape), s.ignore.dtype
    ((3, 16, 16), (1, 16, 16), torch.bool)
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Record:
    """One (image, mask, class) entry. ``key`` identifies the image within its dataset."""

    key: Hashable
    class_id: int
    image_path: str | None = None  # None for generated data
    mask_path: str | None = None


@dataclass
class Sample:
    """One image with its binary mask for one class.

    image:  [3,H,W] float32, normalised as the dataset states (synthetic: [0,1])
    mask:   [1,H,W] float32 in {0,1}, 1 = the class
    ignore: [1,H,W] bool, True = pixel excluded from loss and metrics (all False if none)
    """

    image: torch.Tensor
    mask: torch.Tensor
    ignore: torch.Tensor


class SegmentationDataset:
    """Base class. Subclasses fill ``class_names`` (id -> name) and implement ``items``/``load``.

    ``class_ids()`` are the classes of *this split* only; splits of one dataset are disjoint.
    """

    name: str = "base"
    image_size: int = 64
    class_names: dict[int, str]

    def class_ids(self) -> list[int]:
        return sorted(self.class_names)

    def items(self, class_id: int) -> Sequence[Hashable]:
        """Keys of the images usable as examples of ``class_id``."""
        raise NotImplementedError

    def load(self, key: Hashable, class_id: int) -> Sample:
        """The image ``key`` with the binary mask of ``class_id``, resized to ``image_size``."""
        raise NotImplementedError

    def records(self) -> list[Record]:
        return [Record(k, c) for c in self.class_ids() for k in self.items(c)]

    def describe(self) -> dict:
        return {"name": self.name, "image_size": self.image_size,
                "classes": {int(c): self.class_names[c] for c in self.class_ids()}}
