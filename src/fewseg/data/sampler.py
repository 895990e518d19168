"""The one place that builds episodes from any dataset, with its own seeded generator.

Example:
    >>> import fewseg
    >>> ds = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=16)
    >>> sampler = fewseg.EpisodeSampler(ds, shots=2, queries=1, seed=0)
    >>> batch = sampler.meta_batch(3)          # MetaBatch with T=3
    >>> batch.num_tasks, batch.shots, len(batch.class_ids)
    (3, 2, 3)
    >>> episodes = sampler.fixed_episodes(4)   # a fixed list for evaluation
    >>> len(episodes), tuple(episodes[0].query_x.shape)
    (4, (1, 3, 16, 16))
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch

from fewseg.choices import CLASS_SAMPLING
from fewseg.data.base import SegmentationDataset
from fewseg.data.episode import Episode, MetaBatch, collate
from fewseg.errors import DataError


class EpisodeSampler:
    """Draws episodes: a class, then ``shots`` support and ``queries`` query images of it, disjoint.

    Classes with fewer than ``shots + queries`` usable images are skipped with a warning (or, with
    ``strict=True``, raise a :class:`DataError` naming them). All randomness comes from ``self.generator``.
    ``augment(image, mask, ignore, generator)`` is applied per image when given (training only).
    ``class_sampling``: "uniform" over classes, or "images" (proportional to each class's image count, the
    long-tailed distribution that class-frequency task weighting corrects).
    """

    def __init__(self, dataset: SegmentationDataset, shots: int = 5, queries: int = 5, seed: int = 0,
                 strict: bool = False, augment: Callable | None = None, class_sampling: str = "uniform"):
        if shots < 1 or queries < 1:
            raise ValueError(f"shots and queries must be >= 1, got shots={shots}, queries={queries}")
        if class_sampling not in CLASS_SAMPLING:
            raise ValueError(f"class_sampling must be one of {', '.join(CLASS_SAMPLING)}; got {class_sampling!r}")
        self.class_sampling = class_sampling
        self.dataset, self.shots, self.queries, self.augment = dataset, shots, queries, augment
        self.generator = torch.Generator().manual_seed(seed)
        need = shots + queries
        self.classes: list[int] = []
        self._items: dict[int, list] = {}
        too_few = []
        for c in dataset.class_ids():
            items = list(dataset.items(c))
            if len(items) >= need:
                self.classes.append(c)
                self._items[c] = items
            else:
                too_few.append(f"{dataset.class_names[c]!r} ({len(items)} images)")
        if too_few:
            msg = (f"{len(too_few)} class(es) of {dataset.name} have fewer than shots+queries={need} usable "
                   f"images: {', '.join(too_few[:5])}{' ...' if len(too_few) > 5 else ''}")
            if strict or not self.classes:
                raise DataError(msg + ("" if self.classes else "; no class is left to sample"))
            warnings.warn(msg + "; skipping them", stacklevel=2)

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def class_counts(self) -> dict[int, int]:
        """{class id: usable images} of the sampled classes."""
        return {c: len(self._items[c]) for c in self.classes}

    def _draw_class(self) -> int:
        if self.class_sampling == "images":  # long-tailed: a class as often as it has images
            counts = torch.tensor([float(len(self._items[c])) for c in self.classes])
            return self.classes[int(torch.multinomial(counts, 1, generator=self.generator))]
        return self.classes[self._randint(len(self.classes))]

    def sample(self, class_id: int | None = None) -> Episode:
        """One episode of ``class_id`` (or of a drawn class: uniformly, or by image count)."""
        c = self._draw_class() if class_id is None else class_id
        if c not in self._items:
            raise DataError(f"class {c} is not available in this sampler (too few images or other split)")
        items = self._items[c]
        order = torch.randperm(len(items), generator=self.generator)[: self.shots + self.queries].tolist()
        samples = []
        for i in order:
            s = self.dataset.load(items[i], c)
            if self.augment is not None:
                s.image, s.mask, s.ignore = self.augment(s.image, s.mask, s.ignore, self.generator)
            samples.append(s)

        def stack(part: list, field: str) -> torch.Tensor:
            return torch.stack([getattr(s, field) for s in part])

        sup, qry = samples[: self.shots], samples[self.shots:]
        return Episode(stack(sup, "image"), stack(sup, "mask"), stack(qry, "image"), stack(qry, "mask"),
                       stack(sup, "ignore"), stack(qry, "ignore"), c, tuple(items[i] for i in order))

    def meta_batch(self, num_tasks: int) -> MetaBatch:
        """``num_tasks`` episodes of independently drawn classes, collated."""
        return collate([self.sample() for _ in range(num_tasks)])

    def fixed_episodes(self, n: int) -> list[Episode]:
        """``n`` episodes cycling over the classes in order (balanced per class), for evaluation."""
        return [self.sample(self.classes[i % len(self.classes)]) for i in range(n)]

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()
