"""Large images at their own resolution: sliding-window prediction with overlap blending, and support patches.

A network meta-trained on S x S inputs sees a 2000 x 1500 aerial tile squeezed to S x S, where a road is a pixel
wide. With a **tile** of T pixels (of the original image) the image is instead cut into T x T windows, each resized
to S x S as one training image was, and the network predicts them ``batch_size`` windows at a time: memory is that
of one batch of network inputs plus two float maps of the image's size, never the whole image through the network.

- **Windows** (:func:`tile_starts`): along each side of length L > T, windows start every ``T - overlap`` pixels and
  the last one is flush with the border, so every pixel is covered; a side of L <= T is one window of L pixels,
  padded to the tile's aspect as the ``pad`` resize mode does (centred, zeros, so the scale stays S/T). An image
  that fits in one tile (H <= T and W <= T) goes through the network whole, exactly as without tiling.
- **Blending** (:func:`blend_window`): each window's logits are weighted by a separable window that rises over
  the first ``overlap`` pixels and falls over the last ``overlap`` pixels (cosine squared: two neighbours' ramps
  add up to 1) and stays 1 at the image's own borders; the logits are averaged with those weights, so a pixel near
  a window's edge (where zero padding of the convolutions shows) is decided by the neighbour that sees it in the
  middle, and no grid shows.
- **Overlap** is a fraction of the tile when below 1 (default 0.25: 64 px of a 256 px tile) and a whole number
  of pixels from 1 up (``overlap=64``); 0 abuts the windows without blending.
- **Support patches** (:func:`patch_flags`, :func:`select_patches`, :func:`support_patch`): a large support
  image and its mask become the T x T patches of a grid of non-overlapping windows (the last flush with the
  border), each resized to S x S, so adaptation runs on patches at the network's input size: every patch holding
  foreground, plus as many background patches (chosen by a seeded generator, so the same inputs give the same
  patches), at most ``max_patches`` in all.

Example (a fully convolutional stand-in for a network; T = S = 16, so windows are not resized):
    >>> import numpy as np, torch
    >>> net = torch.nn.Conv2d(3, 1, 3, padding=1)
    >>> image = np.random.default_rng(0).random((40, 50, 3), dtype=np.float32)
    >>> logits = tiled_logits(image, Tiling(16, 0.25), lambda x: net(x).detach(), size=16, batch_size=4)
    >>> tuple(logits.shape), tile_starts(50, 16, 12)
    ((40, 50), [0, 12, 24, 34])
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fewseg.data.channels import convert_channels
from fewseg.data.transforms import content_box, resize_pair, to_original
from fewseg.errors import ConfigError, DataError

__all__ = ["DEFAULT_MAX_PATCHES", "DEFAULT_OVERLAP", "INHERIT", "Tiling", "blend_window", 
           "make_tiling", "overlap_arg", "patch_flags", "select_patches", "support_patch", "support_patches", "tile_boxes",
           "tile_options", "tile_starts", "tiled_logits"]

DEFAULT_OVERLAP = 0.25       # a quarter of the tile
DEFAULT_MAX_PATCHES = 32     # support patches per adaptation (all support images together)
IGNORE = 255


class _Inherit:
    """The default of a per-call ``tile`` / ``overlap``: the object's own setting."""

    def __repr__(self) -> str:
        return "<the segmenter's setting>"


INHERIT = _Inherit()


@dataclass(frozen=True)
class Tiling:
    """``tile``: the window side in pixels of the original image; ``overlap``: a fraction of the tile in [0, 1) or
    a whole number of pixels >= 1 (below ``tile``)."""

    tile: int
    overlap: float = DEFAULT_OVERLAP

    def __post_init__(self):
        tile, overlap = self.tile, self.overlap
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise ConfigError(f"tile must be a whole number of pixels >= 1 (or None: no tiling), got {tile!r}")
        object.__setattr__(self, "tile", int(tile))
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.integer, np.floating)) \
                or not math.isfinite(overlap) or overlap < 0:
            raise ConfigError(f"overlap must be a fraction of the tile in [0, 1) or a whole number of pixels >= 1, "
                              f"got {overlap!r}")
        if overlap >= 1:
            if float(overlap) != int(overlap):
                raise ConfigError(f"overlap {overlap!r} is >= 1, so a number of pixels: it must be whole "
                                  "(a fraction of the tile is below 1)")
            if int(overlap) >= self.tile:
                raise ConfigError(f"overlap of {int(overlap)} px must be smaller than the tile ({self.tile} px)")
            object.__setattr__(self, "overlap", int(overlap))
        else:
            object.__setattr__(self, "overlap", float(overlap))

    @property
    def overlap_pixels(self) -> int:
        """The overlap in pixels (a fraction is rounded; always < tile)."""
        if isinstance(self.overlap, int):
            return self.overlap
        return min(self.tile - 1, round(self.overlap * self.tile))

    @property
    def stride(self) -> int:
        return self.tile - self.overlap_pixels

    def covers(self, height: int, width: int) -> bool:
        """True when one tile holds the whole image (it is then predicted whole, as without tiling)."""
        return height <= self.tile and width <= self.tile

    def to_dict(self) -> dict:
        return {"tile": self.tile, "overlap": self.overlap, "overlap_pixels": self.overlap_pixels}

    @classmethod
    def from_dict(cls, d: dict | None) -> Tiling | None:
        """A record of :meth:`to_dict` (None or one without a tile: no tiling)."""
        if not d or d.get("tile") is None:
            return None
        return cls(int(d["tile"]), d.get("overlap", DEFAULT_OVERLAP))


def make_tiling(tile, overlap=DEFAULT_OVERLAP) -> Tiling | None:
    """``Tiling(tile, overlap)``, or None for ``tile`` None (or 0: no tiling)."""
    if isinstance(tile, Tiling):
        return tile if overlap is INHERIT else Tiling(tile.tile, overlap)
    if tile is None or (not isinstance(tile, bool) and isinstance(tile, (int, np.integer)) and tile == 0):
        return None
    return Tiling(tile, DEFAULT_OVERLAP if overlap is INHERIT or overlap is None else overlap)


def resolve(current: Tiling | None, tile=INHERIT, overlap=INHERIT) -> Tiling | None:
    """The tiling of one call: ``tile`` (None or 0: none) and ``overlap`` replace ``current``'s where given."""
    if tile is INHERIT:
        if current is None or overlap is INHERIT:
            return current
        return Tiling(current.tile, overlap)
    if overlap is INHERIT:
        overlap = current.overlap if current is not None else DEFAULT_OVERLAP
    return make_tiling(tile, overlap)


def tile_options(tile: int | None, overlap: float | None) -> dict:
    """Keyword arguments from command-line values (None: not given; ``--tile 0``: no tiling)."""
    out = {}
    if tile is not None:
        out["tile"] = None if tile == 0 else tile
    if overlap is not None:
        out["overlap"] = overlap
    return out


def overlap_arg(text: str) -> float | int:
    """argparse type of ``--overlap``: a fraction of the tile below 1 (0.25), or whole pixels from 1 up (64)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction of the tile in [0, 1) or a number of pixels, "
                                         f"got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"expected a fraction of the tile in [0, 1) or a whole number of pixels "
                                         f">= 1, got {text!r}")
    return int(value) if value >= 1 else value


# --- windows ------------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of the windows along a side of ``length``: every ``stride`` pixels, the last flush with the end
    (one window at 0 when ``length <= tile``)."""
    if length <= tile:
        return [0]
    stride = max(1, int(stride))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_boxes(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of every window, row by row; h = min(tile, height), w = min(tile, width)."""
    h, w = min(tile, height), min(tile, width)
    return [(y, x, h, w) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]


def _ramp(n: int, ramp: int, rise: bool, fall: bool) -> torch.Tensor:
    """[n] weights in (0, 1]: cos² ramps of ``ramp`` pixels at the start (``rise``) and the end (``fall``)."""
    w = torch.ones(n, dtype=torch.float64)
    r = min(int(ramp), n)
    if r > 0:
        up = torch.sin(math.pi * (torch.arange(r, dtype=torch.float64) + 0.5) / (2 * ramp)) ** 2
        if rise:
            w[:r] *= up
        if fall:
            w[n - r:] *= up.flip(0)
    return w


def blend_window(h: int, w: int, ramp: int, top: bool = True, bottom: bool = True, left: bool = True,
                 right: bool = True) -> torch.Tensor:
    """[h,w] float32 blending weights, the outer product of two 1-D windows: each side named True ramps from
    near 0 up to 1 over ``ramp`` pixels (cos²: where two windows overlap by ``ramp``, their weights add to 1); a
    side at the image's border (False) stays at 1. Always > 0."""
    return (_ramp(h, ramp, top, bottom)[:, None] * _ramp(w, ramp, left, right)[None, :]).float()


def prepare_window(crop: np.ndarray, size: int, channels: int | None = None, name: str = "image") -> torch.Tensor:
    """One window [h,w,C] (uint8 or float32 in [0,1]) -> [C,S,S] in [0,1]: resized with the aspect kept and
    padded (the ``pad`` mode; a T x T window is simply resized)."""
    x, _ = resize_pair(np.ascontiguousarray(crop), np.zeros(crop.shape[:2], np.uint8), size, "pad")
    return x if channels is None else convert_channels(x, channels, name)


def window_to_original(logits: torch.Tensor, hw: tuple[int, int], size: int) -> torch.Tensor:
    """Network-size logits [1,S,S] (or [S,S]) of a window prepared by :func:`prepare_window` -> [h,w]."""
    lg = logits.reshape(1, 1, size, size)
    return to_original(lg, content_box(hw[0], hw[1], size, "pad"), hw[0], hw[1])[0, 0]


Logits = Callable[[torch.Tensor], torch.Tensor]


def tiled_logits(image: np.ndarray, tiling: Tiling, logits_fn: Logits, size: int, batch_size: int = 8,
                 channels: int | None = None, name: str = "image") -> torch.Tensor:
    """Logits [H,W] (float32, CPU) of ``image`` [H,W,C] (uint8, or float32 in [0,1]) predicted window by window.

    ``logits_fn(x)`` maps network inputs [N,C,S,S] (N <= ``batch_size``) to logits [N,1,S,S]; ``size`` is S;
    ``channels`` converts each window to the network's channel count (None: as it is). Windows are prepared,
    predicted and blended ``batch_size`` at a time, so memory is one batch plus two [H,W] float maps. Call it
    for images that :meth:`Tiling.covers` does not hold: a single window is blended like any other (the caller
    predicts an image that fits in one tile whole).
    """
    H, W = image.shape[:2]
    batch_size = max(1, int(batch_size))
    ramp = tiling.overlap_pixels
    total = torch.zeros(H, W, dtype=torch.float32)
    weight = torch.zeros(H, W, dtype=torch.float32)
    windows: dict[tuple, torch.Tensor] = {}

    def flush(boxes: list, inputs: list) -> None:
        out = logits_fn(torch.stack(inputs))
        if out.shape[0] != len(inputs):
            raise DataError(f"the network returned {out.shape[0]} outputs for {len(inputs)} windows")
        out = out.detach().float().cpu()
        for (y, x, h, w), lg in zip(boxes, out):
            flags = (y > 0, y + h < H, x > 0, x + w < W)
            key = (h, w) + flags
            if key not in windows:
                windows[key] = blend_window(h, w, ramp, *flags)
            wt = windows[key]
            total[y:y + h, x:x + w] += window_to_original(lg, (h, w), size) * wt
            weight[y:y + h, x:x + w] += wt

    boxes, inputs = [], []
    for box in tile_boxes(H, W, tiling.tile, tiling.stride):
        y, x, h, w = box
        boxes.append(box)
        inputs.append(prepare_window(image[y:y + h, x:x + w], size, channels, name))
        if len(inputs) == batch_size:
            flush(boxes, inputs)
            boxes, inputs = [], []
    if inputs:
        flush(boxes, inputs)
    return total.div_(weight)


# --- support patches --------------------------------------------------------------------------------------------
def patch_flags(fg: np.ndarray, tile: int) -> list[tuple[tuple[int, int, int, int], bool]]:
    """[(box, holds foreground)] of the support patches of a mask ``fg`` [H,W]: the windows of a non-overlapping
    grid (the last flush with the border), row by row."""
    return [((y, x, h, w), bool(fg[y:y + h, x:x + w].any()))
            for y, x, h, w in tile_boxes(fg.shape[0], fg.shape[1], tile, tile)]


def support_patch(image: np.ndarray, fg: np.ndarray, ignore: np.ndarray, box: tuple[int, int, int, int],
                  size: int, channels: int | None = None, name: str = "image",
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One support patch at the network's size: (x [C,S,S], y [1,S,S] in {0,1}, ignore [1,S,S] bool) of the
    window ``box`` of ``image`` [H,W,C] with ``fg``/``ignore`` bool [H,W]; padding (a side shorter than the
    tile) is ignored."""
    y, x, h, w = box
    labels = np.where(ignore[y:y + h, x:x + w], IGNORE, fg[y:y + h, x:x + w].astype(np.uint8)).astype(np.uint8)
    im, lab = resize_pair(np.ascontiguousarray(image[y:y + h, x:x + w]), labels, size, "pad", IGNORE)
    im = im if channels is None else convert_channels(im, channels, name)
    return im, (lab == 1).float()[None], (lab == IGNORE)[None]


def select_patches(flags: list[list[bool]], keep: str = "foreground", max_patches: int = DEFAULT_MAX_PATCHES,
                   seed: int = 0) -> list[tuple[int, int]]:
    """Which support patches to adapt on: (image index, patch index) pairs, in order.

    flags[i][j]: patch j of image i holds foreground. ``keep="all"``: every patch; ``"foreground"``: every patch
    with foreground plus as many background patches of the same image (drawn at random, at least one where the
    image has one); a negative image (no foreground patch: its mask is empty) gives as many background patches as
    the positive images have foreground patches on average (at least one), so that it weighs like one of them.
    At most ``max_patches`` in all: a random subset, at least half of it foreground where there is that much.
    Deterministic: the draws come from a generator seeded by ``seed``.

    Example (image 0 has foreground in 2 of its 4 patches, image 1 is a negative):
        >>> select_patches([[True, False, True, False], [False, False, False, False]], seed=0)
        [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 3)]
    """
    if keep not in ("foreground", "all"):
        raise ConfigError(f"support patches: keep must be 'foreground' or 'all', got {keep!r}")
    if isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 1:
        raise ConfigError(f"max_patches must be an integer >= 1, got {max_patches!r}")
    g = torch.Generator().manual_seed(seed)
    fore, back = [], []
    counts = [sum(row) for row in flags if any(row)]
    per_negative = max(1, round(sum(counts) / len(counts))) if counts else 1
    for i, row in enumerate(flags):
        f = [(i, j) for j, has in enumerate(row) if has]
        b = [(i, j) for j, has in enumerate(row) if not has]
        if keep == "foreground" and b:
            n = min(len(b), max(1, len(f)) if f else per_negative)
            b = [b[k] for k in sorted(torch.randperm(len(b), generator=g)[:n].tolist())]
        fore += f
        back += b
    chosen = fore + back
    if len(chosen) > max_patches:
        # foreground first: a random subset of it when it alone is too many, then background to fill the rest
        nf = min(len(fore), max_patches - min(len(back), max_patches // 2))
        nb = min(len(back), max_patches - nf)
        pick_f = sorted(torch.randperm(len(fore), generator=g)[:nf].tolist())
        pick_b = sorted(torch.randperm(len(back), generator=g)[:nb].tolist())
        chosen = [fore[k] for k in pick_f] + [back[k] for k in pick_b]
    return sorted(chosen)


def support_patches(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tile: int, size: int,
                    channels: int | None = None, max_patches: int = DEFAULT_MAX_PATCHES, keep: str = "foreground",
                    seed: int = 0, names: list[str] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, tuple[int, int, int, int]]]]:
    """The support patches of whole support images, stacked: (x [P,C,S,S], y [P,1,S,S], ignore [P,1,S,S] bool,
    chosen), where ``pairs`` holds (image [H,W,C], fg bool [H,W], ignore bool [H,W]) per support image and
    ``chosen`` lists (image index, patch box) of each patch; which patches: :func:`select_patches` over the
    :func:`patch_flags` grid of ``tile`` pixels, each patch by :func:`support_patch`.

    Example (one 40 x 50 image whose foreground lies in one of its six 20 px patches):
        >>> image = np.zeros((40, 50, 3), np.uint8); fg = np.zeros((40, 50), bool); fg[:10, :10] = True
        >>> x, y, ignore, chosen = support_patches([(image, fg, np.zeros_like(fg))], 20, size=8)
        >>> tuple(x.shape), [box for _, box in chosen]
        ((2, 3, 8, 8), [(0, 0, 20, 20), (20, 30, 20, 20)])
    """
    boxes = [patch_flags(fg, tile) for _, fg, _ in pairs]
    chosen = select_patches([[has for _, has in row] for row in boxes], keep, max_patches, seed)
    xs, ys, igs = [], [], []
    for i, j in chosen:
        image, fg, ignore = pairs[i]
        x, y, ig = support_patch(image, fg, ignore, boxes[i][j][0], size, channels,
                                 names[i] if names else f"support image {i}")
        xs.append(x), ys.append(y), igs.append(ig)
    return torch.stack(xs), torch.stack(ys), torch.stack(igs), [(i, boxes[i][j][0]) for i, j in chosen]
