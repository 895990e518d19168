"""A mixture of domains: one dataset whose classes are the classes of several datasets, each kept apart.

One task is one class of one domain: the classes of every domain are listed under ``<prefix>/<name>`` (the prefix
is the domain's ``prefix``, by default its dataset name) and get ids ``domain_index * STRIDE + own id``, the same
in every split. A split of the mixture is the union of the same split of every domain, so each domain's held-out
classes stay held out. An episode is drawn from one class, so its support and query images all come from that
class's domain; a record's key is ``(domain_index, own key)``. Every domain reads and prepares its images itself
(``image_size``, ``resize``, full-resolution label maps); images with another channel count go through
``data.channels`` like any dataset's.

Options (``data.options`` of ``data.name: mixture``; ``data.root`` is not used, each domain names its own)::

    domains:
      - {name: synthetic, options: {num_classes: 60}}
      - {name: ccp, root: ../shared/data/ccp, options: {fold: 0}}
      - {name: camvid, options: {fold: 0}, prefix: camvid}

Each domain takes ``name`` (a registered dataset, not ``mixture``), and optionally ``root``, ``options`` (that
dataset's keyword arguments) and ``prefix`` (default: ``name``; give one when a dataset appears twice).
Evaluation reports every metric per domain too (``domain_of``).

Example:
    >>> from fewseg.data.sources.mixture import MixtureDataset
    >>> ds = MixtureDataset([{"name": "synthetic", "options": {"num_classes": 3}},
    ...                      {"name": "synthetic", "prefix": "shapes", "options": {"num_classes": 2}}],
    ...                     split="test", image_size=16)
    >>> sorted({ds.domain_of(n) for n in ds.class_names.values()}), len(ds.class_ids())
    (['shapes', 'synthetic'], 5)
    >>> c = ds.class_ids()[-1]; ds.class_names[c].split("/")[0], ds.items(c)[0]
    ('shapes', (1, 0))
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from fewseg.data.base import Sample, SegmentationDataset
from fewseg.data.sampler import holds_class
from fewseg.errors import DataError, FewsegError
from fewseg.registry import DATASETS

STRIDE = 1_000_000  # class id = domain index * STRIDE + the domain's own class id
DOMAIN_KEYS = ("name", "root", "options", "prefix")
SEPARATOR = "/"


def domain_of(class_name: str) -> str:
    """The domain prefix of a mixture class name (``'ccp/shirt'`` -> ``'ccp'``)."""
    return class_name.split(SEPARATOR, 1)[0]


class MixtureDataset(SegmentationDataset):
    """The ``split`` of several datasets at once; class names ``<prefix>/<name>`` (see the module docstring)."""

    name = "mixture"

    def __init__(self, domains: Sequence[Mapping] | None = None, split: str = "train", seed: int = 0,
                 image_size: int = 64, root: str | None = None):
        if root is not None:
            raise ValueError("data.root is not used by 'mixture': give each domain its own root in "
                             "data.options.domains[i].root")
        if not isinstance(domains, Sequence) or isinstance(domains, (str, bytes)) or not domains:
            raise ValueError("mixture needs data.options.domains: a non-empty list of mappings with keys "
                             f"{', '.join(DOMAIN_KEYS)}, got {domains!r}")
        self.split, self.seed, self.image_size = split, seed, int(image_size)
        self.domains: list[SegmentationDataset] = []
        self.prefixes: list[str] = []
        for i, spec in enumerate(domains):
            where = f"data.options.domains[{i}]"
            if not isinstance(spec, Mapping):
                raise TypeError(f"{where} must be a mapping with keys {', '.join(DOMAIN_KEYS)}, got {spec!r}")
            unknown = [k for k in spec if k not in DOMAIN_KEYS]
            if unknown:
                raise ValueError(f"{where}: unknown key {unknown[0]!r} (a domain takes {', '.join(DOMAIN_KEYS)})")
            name = spec.get("name")
            if name == self.name or name not in DATASETS.names():
                others = [n for n in DATASETS.names() if n != self.name]
                raise ValueError(f"{where}.name: {name!r} is not a dataset a mixture can hold; choose one of: "
                                 f"{', '.join(others)}")
            prefix = spec.get("prefix", name)
            if not isinstance(prefix, str) or not prefix or SEPARATOR in prefix:
                raise ValueError(f"{where}.prefix must be a non-empty string without {SEPARATOR!r}, got {prefix!r}")
            if prefix in self.prefixes:
                raise ValueError(f"{where}: prefix {prefix!r} is used twice; give the domain its own prefix")
            options = spec.get("options") or {}
            if not isinstance(options, Mapping):
                raise TypeError(f"{where}.options must be a mapping, got {options!r}")
            kwargs = {**options, "split": split, "seed": seed, "image_size": image_size}
            if spec.get("root") is not None:
                kwargs["root"] = spec["root"]
            try:
                ds = DATASETS.get(name)(**kwargs)
            except FewsegError as exc:
                raise DataError(f"{where} ({name}): {exc}") from None
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where} ({name}): {exc}") from None
            self.domains.append(ds)
            self.prefixes.append(prefix)
        self.class_names = {}
        for d, ds in enumerate(self.domains):
            for c in ds.class_ids():
                if not 0 <= int(c) < STRIDE:
                    raise DataError(f"{self.prefixes[d]}: class id {c} is outside [0, {STRIDE}) and cannot be "
                                    "mixed")
                self.class_names[d * STRIDE + int(c)] = f"{self.prefixes[d]}{SEPARATOR}{ds.class_names[c]}"

    # --- the dataset contract -------------------------------------------------------------------------
    def _split_id(self, class_id: int) -> tuple[int, int]:
        if class_id not in self.class_names:
            raise DataError(f"class {class_id} is not in the {self.split} split of this mixture")
        return divmod(int(class_id), STRIDE)

    def items(self, class_id: int) -> Sequence[Hashable]:
        d, c = self._split_id(class_id)
        return [(d, k) for k in self.domains[d].items(c)]

    def load(self, key: Hashable, class_id: int) -> Sample:
        d, c = self._split_id(class_id)
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == d):
            raise DataError(f"image key {key!r} is not a key of domain {self.prefixes[d]!r} of this mixture")
        return self.domains[d].load(key[1], c)

    def holds_class(self, key: Hashable, own_class: int, class_id: int) -> bool:
        """Whether image ``key`` may show ``class_id``: the domain's answer within a domain; across domains
        unknown, so yes (support negatives come from the class's own domain)."""
        d, own = self._split_id(own_class)
        d2, c = self._split_id(class_id)
        return d != d2 or holds_class(self.domains[d], key[1], own, c)

    # --- patches of large images (a domain's ``patch`` option, :mod:`fewseg.data.patches`) -------------------
    @property
    def patch(self) -> int | None:
        """The largest ``patch`` of a domain (None: no domain draws patches)."""
        sizes = [p for p in (getattr(ds, "patch", None) for ds in self.domains) if p is not None]
        return max(sizes) if sizes else None

    @property
    def separate_sources(self) -> bool:
        return any(getattr(ds, "separate_sources", False) for ds in self.domains)

    def source_of(self, key: Hashable) -> Hashable:
        own = getattr(self.domains[key[0]], "source_of", None)
        return key if own is None else (key[0], own(key[1]))

    def load_patch(self, key: Hashable, class_id: int, generator=None, role: str = "support") -> Sample:
        d, c = self._split_id(class_id)
        if getattr(self.domains[d], "patch", None) is None:
            return self.load(key, class_id)
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == d):
            raise DataError(f"image key {key!r} is not a key of domain {self.prefixes[d]!r} of this mixture")
        return self.domains[d].load_patch(key[1], c, generator, role)

    def full_resolution(self, key: Hashable, class_id: int):
        """The domain's own full-resolution label map (None for a domain without one, e.g. synthetic)."""
        d, c = self._split_id(class_id)
        own = getattr(self.domains[d], "full_resolution", None)
        return None if own is None else own(key[1], c)

    @staticmethod
    def domain_of(class_name: str) -> str:
        """The domain a class name belongs to: its prefix (evaluation groups classes by it)."""
        return domain_of(class_name)

    def describe(self) -> dict:
        d = super().describe()
        d.update(split=self.split, seed=self.seed,
                 domains=[{"prefix": p, **ds.describe()} | {"classes": len(ds.class_ids())}
                          for p, ds in zip(self.prefixes, self.domains)])
        return d


DATASETS.register("mixture")(MixtureDataset)
