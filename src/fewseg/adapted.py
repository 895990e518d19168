"""An adapted model and its results: :class:`AdaptedSegmenter` (``predict``, ``save``), :class:`Prediction` and
:func:`load_adapted`. :meth:`fewseg.segmenter.Segmenter.adapt` makes one; the user API re-exports all three from
:mod:`fewseg.segmenter` and :mod:`fewseg`.

Example (an untrained network; a real one comes from ``seg.adapt(...)`` or ``fewseg.load_adapted(path)``):
    >>> import numpy as np, torch
    >>> from fewseg.preprocess import Preprocessing
    >>> net = torch.nn.Conv2d(3, 1, 3, padding=1)
    >>> adapted = AdaptedSegmenter(net, Preprocessing(16, "stretch", 3), threshold=0.5, model_config={})
    >>> pred = adapted.predict(np.zeros((20, 30, 3), np.uint8))
    >>> pred.mask.shape, pred.probabilities.dtype, adapted.info["tiling"]
    ((20, 30), dtype('float32'), None)
    >>> pred.overlay().size, pred._repr_png_()[:4]                   # the mask over the photo (Jupyter shows it)
    ((30, 20), b'\x89PNG')
"""
from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewseg.engine.folders import OVERLAY_COLOR, overlay
from fewseg.errors import DataError
from fewseg.inputs import as_image, as_list, describe, is_batch
from fewseg.preprocess import Preprocessing
from fewseg.saved import read_adapted
from fewseg.tiling import INHERIT, Tiling, resolve, tiled_logits

__all__ = ["AdaptedSegmenter", "Prediction", "load_adapted", "network_with"]


DISPLAY_SIDE = 1024             # Jupyter shows a prediction at most this many pixels a side


@dataclass
class Prediction:
    """One image's result at its own size: ``probabilities`` float32 [H,W], ``mask`` bool [H,W] (p > threshold),
    ``image``: the photo as it was given to ``predict`` (a path, PIL image, array or tensor; None when not known),
    read again only by :meth:`overlay`. In Jupyter a prediction shows itself as its overlay (``_repr_png_``)."""

    probabilities: np.ndarray
    threshold: float
    mask: np.ndarray = field(init=False)
    image: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.mask = self.probabilities > self.threshold

    def overlay(self, alpha: float = 0.5, color: tuple[int, int, int] | str = OVERLAY_COLOR, image: Any = None):
        """The photo with the predicted mask over it, a PIL RGB image of the photo's size: the foreground tinted
        with ``color`` (RGB 0-255 or a colour name) at opacity ``alpha`` and outlined in green, as the
        ``overlays/`` that ``fewseg predict`` writes (the defaults give the same pixels). ``image``: the photo,
        when the prediction does not hold it."""
        from PIL import Image, ImageColor
        source = self.image if image is None else image
        if source is None:
            raise DataError("this prediction does not hold its photo: give it, overlay(image=...)")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise DataError(f"overlay alpha must be a number in [0, 1], got {alpha!r}")
        try:
            rgb = ImageColor.getrgb(color) if isinstance(color, str) else tuple(int(c) for c in color)
        except (ValueError, TypeError):
            raise DataError(f"overlay color must be (R, G, B) in 0-255 or a colour name, got {color!r}") from None
        if len(rgb) < 3 or not all(0 <= c <= 255 for c in rgb[:3]):
            raise DataError(f"overlay color must be (R, G, B) in 0-255 or a colour name, got {color!r}")
        photo = as_image(source, describe(source, "image"))
        if self.mask.shape != photo.shape[:2]:
            raise DataError(f"the photo is {photo.shape[1]}x{photo.shape[0]} but the mask is "
                            f"{self.mask.shape[1]}x{self.mask.shape[0]}: give the photo this prediction was made from")
        return Image.fromarray(overlay(photo, self.mask, alpha, rgb[:3]))

    def _repr_png_(self) -> bytes:
        """PNG bytes for Jupyter: the overlay (the probability map in grey without the photo), at most
        :data:`DISPLAY_SIDE` pixels a side."""
        from PIL import Image
        if self.image is not None:
            shown = self.overlay()
        else:
            shown = Image.fromarray((np.clip(self.probabilities, 0, 1) * 255 + 0.5).astype(np.uint8))
        shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
        buffer = io.BytesIO()
        shown.save(buffer, format="PNG")
        return buffer.getvalue()

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def confidence(self) -> float:
        """Mean probability of the label given to each pixel (1: certain everywhere, 0.5: a coin toss)."""
        p = self.probabilities
        return float(np.maximum(p, 1.0 - p).mean()) if p.size else 1.0


def network_with(model: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``params`` (the adapted weights actually used at test time) and its buffers."""
    net = copy.deepcopy(model)
    state = {**dict(net.state_dict()), **{n: p.detach() for n, p in params.items()}}
    net.load_state_dict(state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class AdaptedSegmenter:
    """A model adapted to one class: ``predict(images)``, ``save(path)``; :func:`fewseg.load_adapted` reads it back."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing, threshold: float, model_config: dict,
                 info: dict | None = None, device: str | torch.device = "cpu", batch_size: int = 8,
                 tiling: Tiling | None = INHERIT):
        self.network = network.to(device).eval()
        self.preprocessing, self.threshold = preprocessing, float(threshold)
        self.model_config, self.info = dict(model_config), dict(info or {})
        self.device, self.batch_size = torch.device(device), int(batch_size)
        # the tiling predict uses (None: whole images); not given: the one recorded in ``info`` (a saved model's)
        self.tiling = Tiling.from_dict(self.info.get("tiling")) if tiling is INHERIT else tiling

    @property
    def tiling(self) -> Tiling | None:
        """Large images: windows of ``tiling.tile`` pixels with ``tiling.overlap`` (:mod:`fewseg.tiling`), or None
        (each image resized whole). Setting it also sets ``info["tiling"]``, which :meth:`save` records."""
        return self._tiling

    @tiling.setter
    def tiling(self, value: Tiling | None) -> None:
        if value is not None and not isinstance(value, Tiling):
            raise TypeError(f"tiling must be a fewseg.tiling.Tiling or None, got {type(value).__name__} "
                            "(give tile=..., overlap=... to load_adapted or predict)")
        self._tiling = value
        self.info["tiling"] = None if value is None else value.to_dict()

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Network-size images [N,C,S,S] in [0,1] -> logits [N,1,S,S], ``batch_size`` images per pass."""
        return torch.cat([self.network(x[i:i + self.batch_size].to(self.device)).float().cpu()
                          for i in range(0, x.shape[0], self.batch_size)])

    def predict_iter(self, images: Any, threshold: float | None = None, *, tile: int | None = INHERIT,
                     overlap: float = INHERIT) -> Iterator[Prediction]:
        """Like :meth:`predict`, one result at a time, decoding ``batch_size`` images at once (bounded memory)."""
        t = self.threshold if threshold is None else float(threshold)
        if not 0.0 < t < 1.0:
            raise DataError(f"threshold must lie strictly between 0 and 1, got {t}")
        tiling = resolve(self.tiling, tile, overlap)
        chunk, sizes, given = [], [], []

        def whole() -> Iterator[Prediction]:
            logits = self.logits(torch.stack(chunk))
            for lg, hw, item in zip(logits, sizes, given):
                full = self.preprocessing.to_original(lg[None], hw)
                yield Prediction(torch.sigmoid(full).numpy(), t, image=item)
            chunk.clear(), sizes.clear(), given.clear()

        for i, item in enumerate(as_list(images)):
            name = describe(item, f"image {i}")
            arr = as_image(item, name)
            if tiling is not None and not tiling.covers(*arr.shape[:2]):
                if chunk:
                    yield from whole()
                logits = tiled_logits(arr, tiling, self.logits, self.preprocessing.image_size, self.batch_size,
                                      self.preprocessing.channels, name)
                del arr
                yield Prediction(torch.sigmoid_(logits).numpy(), t, image=item)
                continue
            sizes.append(arr.shape[:2])
            given.append(item)
            chunk.append(self.preprocessing.image(arr, self.preprocessing.predict_mode, name))
            del arr
            if len(chunk) == self.batch_size:
                yield from whole()
        if chunk:
            yield from whole()

    def predict(self, images: Any, threshold: float | None = None, *, tile: int | None = INHERIT,
                overlap: float = INHERIT) -> Prediction | list[Prediction]:
        """Masks and probabilities at each image's own size: one :class:`Prediction` for one image, a list
        for a list (or a 4-D batch). ``threshold``: foreground above it (default: the checkpoint's).
        ``tile``, ``overlap``: predict images larger than the tile window by window at their own resolution
        (:mod:`fewseg.tiling`; default: this model's ``tiling``, ``tile=None``: each image resized whole)."""
        results = list(self.predict_iter(images, threshold, tile=tile, overlap=overlap))
        return results if is_batch(images) else results[0]

    def save(self, path: str | Path) -> Path:
        """Write this adapted model to the directory ``path`` (weights.safetensors + meta.json, atomic)."""
        from fewseg.saved import save_adapted
        return save_adapted(self, path)


def load_adapted(path: str | Path, device: str | torch.device = "cpu", *, tile: int | None = INHERIT,
                 overlap: float = INHERIT) -> AdaptedSegmenter:
    """An :class:`AdaptedSegmenter` saved by :meth:`AdaptedSegmenter.save` (checked, never unpickled); it predicts
    with the tiling it was saved with unless ``tile`` / ``overlap`` are given (``tile=None``: whole images)."""
    parts = read_adapted(path)
    adapted = AdaptedSegmenter(parts.network, parts.preprocessing, parts.threshold, parts.model, parts.info, device)
    if tile is not INHERIT or overlap is not INHERIT:
        adapted.tiling = resolve(adapted.tiling, tile, overlap)
    return adapted
