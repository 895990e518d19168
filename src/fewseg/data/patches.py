"""Episodes drawn as patches of large images: ``data.options.patch: 256``.

A set of a few dozen large images (aerial tiles of 2000 x 1500 pixels) squeezed whole to the network's 64 px loses
every thin structure, and gives few distinct episodes. With ``patch: P`` a file dataset (``labelmap``, ``ccp``,
``camvid``, ``folder``) makes each episode image a random P x P crop of the image at its own resolution, resized to
``image_size`` as a training image is: the same scale a segmenter with ``tile=P`` (:mod:`fewseg.tiling`) predicts
at. Options (``data.options``):

- ``patch``: the crop side in pixels of the original image (None: whole images, as before). An image that fits in
  one patch (both sides <= P) is used whole, resized as without patches; a side shorter than P is padded (the
  ``pad`` mode: the padding is ignored), so every crop keeps the scale ``image_size / P``.
- ``patches_per_image`` (1): how many items each (image, class) pair lists, so a class present in few large images
  still fills ``shots + queries``; each item is a fresh random crop of the same image.
- ``separate_sources`` (default: true with ``patch``): support and query patches of an episode never come from the
  same source image (with ``patches_per_image > 1`` several items share one image; the sampler then draws the
  support and the query items from disjoint sets of images, and leaves out classes that cannot fill both).
- ``query_patches``: ``foreground`` (default: each query crop holds the class, as every whole query image does) or
  ``random`` (anywhere in the image, so queries may hold none of it).

Support crops always hold the class: a foreground pixel is drawn, then a crop position that contains it. The
draws come from the :class:`~fewseg.data.sampler.EpisodeSampler`'s generator, so seeded episodes replay exactly;
``dataset.load(key, class_id)`` without a generator draws from one seeded by the dataset's seed, the key and the
class (the same crop every time). Evaluation scores patch episodes at the network's size (there is no label map
of a crop on disk).

Example:
    >>> import numpy as np, torch
    >>> labels = np.zeros((300, 400), np.uint8); labels[250:, 350:] = 1       # the class in one corner
    >>> g = torch.Generator().manual_seed(0)
    >>> top, left, h, w = choose_crop(labels == 1, 128, g)
    >>> (h, w), bool((labels[top:top + h, left:left + w] == 1).any())
    ((128, 128), True)
    >>> image, lab = crop_pair(np.zeros((300, 400, 3), np.uint8), labels, (top, left, h, w), 32)
    >>> tuple(image.shape), tuple(lab.shape)                                  # at image_size, as one training image
    ((3, 32, 32), (32, 32))
"""
from __future__ import annotations

import zlib
from collections.abc import Hashable

import numpy as np
import torch

from fewseg.data.base import Sample
from fewseg.data.transforms import resize_pair

IGNORE = 255
QUERY_PATCHES = ("foreground", "random")


def choose_crop(foreground: np.ndarray | None, patch: int, generator: torch.Generator,
                shape: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop of ``patch`` pixels (h = min(patch, H), w = min(patch, W)) that holds a
    foreground pixel drawn uniformly from ``foreground`` (bool [H,W]); anywhere when it is None or empty
    (``shape`` gives (H, W) when ``foreground`` is None). All draws from ``generator``."""
    H, W = foreground.shape if foreground is not None else shape
    h, w = min(patch, H), min(patch, W)
    n = int(foreground.sum()) if foreground is not None else 0
    if n:
        k = int(torch.randint(n, (1,), generator=generator))
        py, px = divmod(int(np.flatnonzero(foreground)[k]), W)
        lo_y, hi_y = max(0, py - h + 1), min(py, H - h)
        lo_x, hi_x = max(0, px - w + 1), min(px, W - w)
    else:
        lo_y, hi_y, lo_x, hi_x = 0, H - h, 0, W - w
    top = lo_y + int(torch.randint(hi_y - lo_y + 1, (1,), generator=generator))
    left = lo_x + int(torch.randint(hi_x - lo_x + 1, (1,), generator=generator))
    return top, left, h, w


def crop_pair(image: np.ndarray, labels: np.ndarray, box: tuple[int, int, int, int], size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop ``box`` of ``image`` [H,W,C] and ``labels`` [H,W] (0/1/255) at ``size``: image [C,S,S] in [0,1],
    labels int64 [S,S]; a crop shorter than the patch on one side is padded (255 = ignore) to keep its scale."""
    top, left, h, w = box
    return resize_pair(np.ascontiguousarray(image[top:top + h, left:left + w]),
                       np.ascontiguousarray(labels[top:top + h, left:left + w]), size, "pad", IGNORE)


def _check_options(patch, patches_per_image, separate_sources, query_patches) -> None:
    if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int) or patch < 1):
        raise ValueError(f"patch must be a whole number of pixels >= 1 (or null: whole images), got {patch!r}")
    if isinstance(patches_per_image, bool) or not isinstance(patches_per_image, int) or patches_per_image < 1:
        raise ValueError(f"patches_per_image must be an integer >= 1, got {patches_per_image!r}")
    if patch is None and patches_per_image != 1:
        raise ValueError("patches_per_image needs patch (the crop side in pixels)")
    if separate_sources is not None and not isinstance(separate_sources, bool):
        raise ValueError(f"separate_sources must be true or false, got {separate_sources!r}")
    if query_patches not in QUERY_PATCHES:
        raise ValueError(f"query_patches must be one of {', '.join(QUERY_PATCHES)}, got {query_patches!r}")


class PatchSource:
    """Mixin of the file datasets: ``patch`` options, patch items and :meth:`load_patch`.

    A dataset calls :meth:`init_patches` in its constructor, lists :meth:`patch_keys` in ``items`` and sends
    ``load`` to :meth:`load_patch` while ``patch`` is set; it provides ``native(source, class_id)`` -> (image
    [H,W,C] uint8, labels uint8 [H,W] with 1 = the class, 255 = ignore, 0 = the rest) at the image's own size.
    """

    patch: int | None = None
    patches_per_image: int = 1
    separate_sources: bool = False
    query_patches: str = "foreground"

    def init_patches(self, patch: int | None = None, patches_per_image: int = 1,
                     separate_sources: bool | None = None, query_patches: str = "foreground") -> None:
        _check_options(patch, patches_per_image, separate_sources, query_patches)
        self.patch, self.patches_per_image, self.query_patches = patch, patches_per_image, query_patches
        self.separate_sources = (patch is not None) if separate_sources is None else separate_sources

    def patch_keys(self, keys: list) -> list:
        """The items of a class: its image keys, or ``(key, j)`` for j < ``patches_per_image``."""
        if self.patch is None or self.patches_per_image == 1:
            return keys
        return [(k, j) for k in keys for j in range(self.patches_per_image)]

    def source_of(self, key: Hashable) -> Hashable:
        """The image an item comes from (the key itself without ``patches_per_image``)."""
        return key[0] if self.patch is not None and self.patches_per_image > 1 else key

    def native(self, source: Hashable, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _key_generator(self, key: Hashable, class_id: int) -> torch.Generator:
        seed = zlib.crc32(repr((getattr(self, "seed", 0), key, int(class_id))).encode("utf-8"))
        return torch.Generator().manual_seed(seed)

    def load_patch(self, key: Hashable, class_id: int, generator: torch.Generator | None = None,
                   role: str = "support") -> Sample:
        """A crop of ``patch`` pixels of item ``key`` at ``image_size``: it holds the class for the support set
        (and for queries unless ``query_patches="random"``); the whole image when it fits in one patch."""
        image, labels = self.native(self.source_of(key), class_id)
        H, W = labels.shape
        if H <= self.patch and W <= self.patch:  # fits in one patch: whole, as without patches
            x, lab = resize_pair(image, labels, self.image_size, self.resize, IGNORE)
        else:
            g = generator if generator is not None else self._key_generator(key, class_id)
            wanted = labels == 1 if role == "support" or self.query_patches == "foreground" else None
            x, lab = crop_pair(image, labels, choose_crop(wanted, self.patch, g, (H, W)), self.image_size)
        return Sample(x, (lab == 1).to(torch.float32)[None], (lab == IGNORE)[None])
