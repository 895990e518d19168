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

Support negatives (``negatives``, off by default): some support images are images of *other* classes that do not
show the episode's class, with an all-background mask, as users label them ("this image has none of it"):

    >>> sampler = fewseg.EpisodeSampler(ds, shots=3, queries=1, seed=0, negatives=2)
    >>> ep = sampler.sample()
    >>> sorted(int(m.sum() > 0) for m in ep.support_y)   # 2 negatives (empty masks), 1 positive
    [0, 0, 1]
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Iterator

import torch

from fewseg.choices import CLASS_SAMPLING
from fewseg.data.base import Sample, SegmentationDataset
from fewseg.data.episode import Episode, MetaBatch, collate
from fewseg.errors import DataError


class EpisodeSampler:
    """Draws episodes: a class, then ``shots`` support and ``queries`` query images of it, disjoint.

    Classes with fewer than ``shots + queries`` usable images are skipped with a warning (or, with
    ``strict=True``, raise a :class:`DataError` naming them). All randomness comes from ``self.generator``.
    ``augment(image, mask, ignore, generator)`` is applied per image when given (training only).
    ``class_sampling``: "uniform" over classes, or "images" (proportional to each class's image count, the
    long-tailed distribution that class-frequency task weighting corrects).

    Patches of large images (a dataset with ``patch``, :mod:`fewseg.data.patches`): each image is a random crop
    drawn with ``self.generator``, holding the class in the support set. ``separate_sources`` (default: the
    dataset's, on with ``patch``): where several items share a source image (``dataset.source_of``), the support
    and the query items come from disjoint sets of source images, and a class that cannot fill both is skipped.

    Support negatives (``negatives``; default 0, off: episodes exactly as without the option): a whole number N
    makes N of the ``shots`` support images negatives (at most ``shots - 1``: one positive image always stays); a
    fraction p in (0, 1) makes each support image but one a negative with probability p (drawn per episode). A
    negative is an item of another class of the dataset (uniformly drawn, whether or not that class has enough
    images for episodes of its own) whose image does not show the episode's class (:func:`holds_class`), loaded
    as that class's item (augmented like the others) with an all-background mask: its pixels count as
    background in the support loss. Negatives take random places in the support set; the ``shots - negatives``
    positives are drawn as before, the queries are unchanged.
    """

    def __init__(self, dataset: SegmentationDataset, shots: int = 5, queries: int = 5, seed: int = 0,
                 strict: bool = False, augment: Callable | None = None, class_sampling: str = "uniform",
                 separate_sources: bool | None = None, negatives: float = 0):
        if shots < 1 or queries < 1:
            raise ValueError(f"shots and queries must be >= 1, got shots={shots}, queries={queries}")
        self.negatives = check_negatives(negatives)
        if class_sampling not in CLASS_SAMPLING:
            raise ValueError(f"class_sampling must be one of {', '.join(CLASS_SAMPLING)}; got {class_sampling!r}")
        self.class_sampling = class_sampling
        self.dataset, self.shots, self.queries, self.augment = dataset, shots, queries, augment
        self.generator = torch.Generator().manual_seed(seed)
        self.patched = getattr(dataset, "patch", None) is not None
        if separate_sources is None:
            separate_sources = bool(getattr(dataset, "separate_sources", False))
        self.separate_sources = bool(separate_sources)
        source_of = getattr(dataset, "source_of", None) if self.separate_sources else None
        need = shots + queries
        self.classes: list[int] = []
        self._items: dict[int, list] = {}
        self._groups: dict[int, list[list[int]]] = {}  # classes whose items share source images: item indices
        too_few = []
        for c in dataset.class_ids():
            items = list(dataset.items(c))
            groups = _by_source(items, source_of) if source_of is not None else None
            if groups is not None and len(groups) == len(items):
                groups = None  # one item per image: disjoint items are disjoint images
            if len(items) >= need and (groups is None or _split_sources(groups, _largest_first(groups),
                                                                        shots, queries) is not None):
                self.classes.append(c)
                self._items[c] = items
                if groups is not None:
                    self._groups[c] = groups
            elif len(items) >= need:
                too_few.append(f"{dataset.class_names[c]!r} ({len(items)} patches of {len(groups)} images, "
                               "too few to keep support and query images apart)")
            else:
                too_few.append(f"{dataset.class_names[c]!r} ({len(items)} images)")
        if too_few:
            msg = (f"{len(too_few)} class(es) of {dataset.name} have fewer than shots+queries={need} usable "
                   f"images: {', '.join(too_few[:5])}{' ...' if len(too_few) > 5 else ''}")
            if strict or not self.classes:
                raise DataError(msg + ("" if self.classes else "; no class is left to sample"))
            warnings.warn(msg + "; skipping them", stacklevel=2)
        # support negatives: the images of every class of the split, episodes' classes or not
        self._pool: dict[int, list] = {}
        if self.negatives:
            if not can_tell_classes(dataset):
                raise DataError(f"support negatives need to know which images show a class, and {dataset.name} "
                                "cannot tell (give the dataset a holds_class(key, own_class, class_id) method)")
            for c in dataset.class_ids():
                items = self._items[c] if c in self._items else list(dataset.items(c))
                if items:
                    self._pool[c] = items
            if len(self._pool) < 2:
                raise DataError(f"support negatives are images of other classes, but {dataset.name} has "
                                f"{len(self._pool)} class(es) with images")

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
        n_neg = self._negative_count()
        shots = self.shots - n_neg  # the positives
        if c in self._groups:
            order = self._separate_order(self._groups[c], shots)
        else:
            order = torch.randperm(len(items), generator=self.generator)[: shots + self.queries].tolist()
        samples, keys = [], [items[i] for i in order]
        for n, i in enumerate(order):
            samples.append(self._load(items[i], c, "support" if n < shots else "query"))
        if n_neg:
            negatives = self._negatives(c, n_neg)
            support = list(zip(keys[:shots], samples[:shots])) + [(k, self._load(k, o, "support", negative=True))
                                                                for k, o in negatives]
            support = [support[i] for i in torch.randperm(self.shots, generator=self.generator).tolist()]
            keys = [k for k, _ in support] + keys[shots:]
            samples = [s for _, s in support] + samples[shots:]

        def stack(part: list, field: str) -> torch.Tensor:
            return torch.stack([getattr(s, field) for s in part])

        sup, qry = samples[: self.shots], samples[self.shots:]
        return Episode(stack(sup, "image"), stack(sup, "mask"), stack(qry, "image"), stack(qry, "mask"),
                       stack(sup, "ignore"), stack(qry, "ignore"), c, tuple(keys))

    def _load(self, key: Hashable, c: int, role: str, negative: bool = False) -> Sample:
        """Item ``key`` of class ``c`` (a crop drawn with this sampler's generator for patch datasets), augmented;
        ``negative``: with an all-background mask."""
        if self.patched:
            s = self.dataset.load_patch(key, c, self.generator, role)
        else:
            s = self.dataset.load(key, c)
        if negative:
            s = Sample(s.image, torch.zeros_like(s.mask), s.ignore)
        if self.augment is not None:
            s.image, s.mask, s.ignore = self.augment(s.image, s.mask, s.ignore, self.generator)
        return s

    def _negative_count(self) -> int:
        """How many of this episode's support images are negatives (no draw when the option is off)."""
        if not self.negatives or self.shots < 2:
            return 0
        if isinstance(self.negatives, int):
            return min(self.negatives, self.shots - 1)
        return int((torch.rand(self.shots - 1, generator=self.generator) < self.negatives).sum())

    def _negatives(self, c: int, n: int) -> list[tuple[Hashable, int]]:
        """``n`` (key, own class) items of other classes whose images do not show class ``c``, all different."""
        others = [k for k in self._pool if k != c]
        source_of = getattr(self.dataset, "source_of", None)
        chosen, seen, tries = [], set(), 0
        while len(chosen) < n:
            if tries >= MAX_NEGATIVE_TRIES * n:
                raise DataError(f"{self.dataset.name}: found {len(chosen)} of {n} support negatives for class "
                                f"{self.dataset.class_names[c]!r} in {tries} draws of other classes' images (nearly "
                                "all of them show it)")
            tries += 1
            other = others[self._randint(len(others))]
            key = self._pool[other][self._randint(len(self._pool[other]))]
            source = (other, key if source_of is None else source_of(key))
            if source in seen or holds_class(self.dataset, key, other, c):
                continue
            seen.add(source)
            chosen.append((key, other))
        return chosen

    def _separate_order(self, groups: list[list[int]], shots: int | None = None) -> list[int]:
        """Item indices: ``shots`` support items, then ``queries`` query items, of disjoint source images."""
        shots = self.shots if shots is None else shots
        perm = torch.randperm(len(groups), generator=self.generator).tolist()
        split = _split_sources(groups, perm, shots, self.queries)
        if split is None:  # this order cannot fill both sides: largest images first (feasible, checked at init)
            split = _split_sources(groups, _largest_first(groups, perm), shots, self.queries)
        support, query = ([i for g in side for i in groups[g]] for side in split)
        pick_s = torch.randperm(len(support), generator=self.generator)[:shots].tolist()
        pick_q = torch.randperm(len(query), generator=self.generator)[:self.queries].tolist()
        return [support[k] for k in pick_s] + [query[k] for k in pick_q]

    def meta_batch(self, num_tasks: int) -> MetaBatch:
        """``num_tasks`` episodes of independently drawn classes, collated."""
        return collate([self.sample() for _ in range(num_tasks)])

    def fixed_episodes(self, n: int) -> list[Episode]:
        """``n`` episodes cycling over the classes in order (balanced per class), for evaluation."""
        return [self.sample(self.classes[i % len(self.classes)]) for i in range(n)]

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()


MAX_NEGATIVE_TRIES = 200  # draws per wanted negative before giving up (every other image showing the class)


def check_negatives(negatives: float) -> float:
    """The ``negatives`` option checked: an int >= 0 (that many negatives) or a float fraction in [0, 1) (the
    chance of each support image but one being a negative); 0 (off) as the int 0."""
    if isinstance(negatives, bool) or not isinstance(negatives, (int, float)):
        raise TypeError(f"negatives must be a whole number >= 0 or a fraction in [0, 1), got {negatives!r}")
    if isinstance(negatives, int):
        if negatives < 0:
            raise ValueError(f"negatives must be a whole number >= 0 or a fraction in [0, 1), got {negatives!r}")
        return int(negatives)
    if not (math.isfinite(negatives) and 0.0 <= negatives < 1.0):
        raise ValueError(f"negatives as a fraction must lie in [0, 1) (a whole number gives a count), "
                         f"got {negatives!r}")
    return float(negatives) if negatives > 0 else 0


def holds_class(dataset: SegmentationDataset, key: Hashable, own_class: int, class_id: int) -> bool:
    """Whether image ``key`` (an item of ``own_class``) may show ``class_id``, so that it cannot be a support
    negative of it: the dataset's own ``holds_class`` (label maps and annotations know), else, for the synthetic
    set, whether ``class_id`` is among the image's distractors."""
    own = getattr(dataset, "holds_class", None)
    if own is not None:
        return bool(own(key, own_class, class_id))
    render = getattr(dataset, "render", None)
    if render is not None:  # the synthetic set: other classes appear as distractors
        return int(class_id) in render(own_class, key).distractor_classes
    raise DataError(f"{dataset.name} cannot tell which images show a class (no holds_class method)")


def can_tell_classes(dataset: SegmentationDataset) -> bool:
    """Whether :func:`holds_class` can answer for ``dataset``."""
    return getattr(dataset, "holds_class", None) is not None or getattr(dataset, "render", None) is not None


def _by_source(items: list, source_of: Callable) -> list[list[int]]:
    """Item indices grouped by source image, in order of first appearance."""
    groups: dict = {}
    for i, key in enumerate(items):
        groups.setdefault(source_of(key), []).append(i)
    return list(groups.values())


def _split_sources(groups: list[list[int]], order: list[int], shots: int, queries: int):
    """(support groups, query groups): groups taken in ``order`` for the support set until it holds ``shots``
    items, the rest for queries; None when the rest holds fewer than ``queries`` items. (With as many items per
    image, as ``patches_per_image`` lists, any order works when one does.)"""
    support, n = [], 0
    for g in order:
        if n >= shots:
            break
        support.append(g)
        n += len(groups[g])
    rest = [g for g in order if g not in support]
    if n < shots or sum(len(groups[g]) for g in rest) < queries:
        return None
    return support, rest


def _largest_first(groups: list[list[int]], order: list[int] | None = None) -> list[int]:
    """Group indices by decreasing size (ties in ``order``): the order the usability check tries."""
    order = list(range(len(groups))) if order is None else order
    return sorted(order, key=lambda g: -len(groups[g]))
