"""A bounded cache of a frozen encoder's features, keyed by each image's exact content.

A frozen encoder gives the same features for the same image every time, yet meta-training draws every image
again in episode after episode, and an evaluation feeds the same query images to every method, shot count and
schedule candidate. ``lite-probe`` (option ``feature_cache``, in MB) keeps the features of the images it has
seen: a hit returns the stored tensor, the misses of a batch are encoded together. The key is a digest of the
image's bytes (with its dtype and shape) and a stamp of the encoder weights (each encoder tensor's storage and
version counter, so ``load_state_dict`` or any in-place change of the weights invalidates every entry). Exact:
an augmented image (flip, scale, jitter) is a different key, so caching pays off when training images come
unaugmented (``data.augment: false``) or the same view recurs. A copy of the network (``copy.deepcopy``, as the
fine-tuning baselines make one per episode) gets an empty cache of the same size, not a copy of the stored
features: its steps then encode each support image once, and nothing is duplicated.

Example:
    >>> import torch
    >>> calls = []
    >>> def encode(x):                                    # [B,3,H,W] -> [B,2,H,W]
    ...     calls.append(x.shape[0]); return torch.cat([x[:, :1], x[:, 1:2] * 2], dim=1)
    >>> cache = FeatureCache(max_mb=1)
    >>> a, b = torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8)
    >>> y1 = cache(a, encode, stamp=0)
    >>> y2 = cache(torch.cat([b, a[1:]]), encode, stamp=0)   # a[1] is a hit: only b is encoded
    >>> calls, torch.equal(y2[1], y1[1]), len(cache)
    ([2, 1], True, 3)
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


def image_key(image: torch.Tensor) -> tuple:
    """(dtype, shape, 16-byte digest of the bytes) of one image [C,H,W]."""
    data = image.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()
    return str(data.dtype), tuple(data.shape), digest


class FeatureCache:
    """Least-recently-used store of per-image features, at most ``max_mb`` megabytes of tensors."""

    def __init__(self, max_mb: float):
        if not (isinstance(max_mb, (int, float)) and not isinstance(max_mb, bool) and max_mb >= 0):
            raise ValueError(f"feature_cache is a size in MB (>= 0), got {max_mb!r}")
        self.max_bytes = int(max_mb * 2 ** 20)
        self.bytes, self.hits, self.misses = 0, 0, 0
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __deepcopy__(self, memo) -> FeatureCache:
        """An empty cache of the same size (the copy's encoder is other tensors: nothing stored would hit)."""
        return FeatureCache(self.max_bytes / 2 ** 20)

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
                 stamp: Hashable) -> torch.Tensor:
        """``encode(images)`` [B,...] for images [B,C,H,W], running ``encode`` on the images not yet stored."""
        keys = [(stamp, *image_key(img)) for img in images]
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        found = {k: self._store[k] for k in keys if k in self._store}
        for k in found:
            self._store.move_to_end(k)  # recently used
        if missing:
            encoded = encode(images[missing])
            for j, i in enumerate(missing):
                found[keys[i]] = encoded[j]
                self._put(keys[i], encoded[j])
        return torch.stack([found[k] for k in keys])

    def _put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes or key in self._store:
            return
        self._store[key] = value.detach().clone()
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
