"""Episodes (one task) and meta-batches (T tasks), with shape and dtype checks.

Example:
    >>> import torch, fewseg
    >>> sx, sy = torch.rand(4, 5, 3, 16, 16), torch.ones(4, 5, 1, 16, 16)     # [T,S,3,H,W], [T,S,1,H,W] {0,1}
    >>> qx, qy = torch.rand(4, 2, 3, 16, 16), torch.zeros(4, 2, 1, 16, 16)    # [T,Q,3,H,W], [T,Q,1,H,W]
    >>> batch = fewseg.MetaBatch(sx, sy, qx, qy)
    >>> batch.num_tasks, batch.shots, tuple(batch.task(0).query_x.shape)
    (4, 5, (2, 3, 16, 16))
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fewseg.errors import DataError


def check_images(name: str, x: torch.Tensor, ndim: int, channels: int | None = None) -> None:
    """Images: float tensor with ``ndim`` dims and ``channels`` channels at dim -3 (None: any count >= 1)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    c = "C" if channels is None else str(channels)
    if x.dim() != ndim or x.shape[-3] < 1 or (channels is not None and x.shape[-3] != channels):
        want = f"[T,N,{c},H,W]" if ndim == 5 else f"[N,{c},H,W]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def check_unit_range(name: str, x: torch.Tensor) -> None:
    """Images are floats in [0, 1]: refuse 0-255 floats, which would saturate every probability."""
    top = float(x.max()) if x.numel() else 0.0
    if top > 1.0 + 1e-3:
        raise DataError(f"{name} holds values up to {top:g}, but fewseg images are floats in [0, 1] "
                        "(divide 0-255 images by 255, or pass uint8 arrays to fewseg.load(...).adapt)")


def check_masks(name: str, y: torch.Tensor, images: torch.Tensor, binary: bool = True) -> None:
    """Masks: same leading dims and H,W as ``images`` with 1 channel; values in {0,1} when ``binary``."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    want = list(images.shape[:-3]) + [1] + list(images.shape[-2:])
    if list(y.shape) != want:
        raise ValueError(f"{name} must have shape {want} to match the images, got {list(y.shape)}")
    if binary and y.dtype != torch.bool and not ((y == 0) | (y == 1)).all():
        raise ValueError(f"{name} must hold binary masks with values in {{0,1}} "
                         f"(got values in [{y.min().item():g}, {y.max().item():g}]); divide 0/255 masks by 255")


@dataclass
class Episode:
    """One task: support and query images of one class with binary masks.

    support_x [S,3,H,W], support_y [S,1,H,W] {0,1}, support_ignore [S,1,H,W] bool; query_* likewise with Q.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    support_ignore: torch.Tensor | None = None
    query_ignore: torch.Tensor | None = None
    class_id: int = -1
    keys: tuple = ()

    def to(self, device: torch.device | str) -> Episode:
        move = (lambda t: None if t is None else t.to(device))
        return Episode(move(self.support_x), move(self.support_y), move(self.query_x), move(self.query_y),
                       move(self.support_ignore), move(self.query_ignore), self.class_id, self.keys)


@dataclass
class MetaBatch:
    """T tasks stacked: support_x [T,S,3,H,W], support_y [T,S,1,H,W], query_x [T,Q,3,H,W], query_y [T,Q,1,H,W].

    The optional ``*_ignore`` masks (bool, like the ``*_y`` shapes) mark pixels excluded from loss and metrics.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    support_ignore: torch.Tensor | None = None
    query_ignore: torch.Tensor | None = None
    class_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_images("support_x", self.support_x, 5)
        check_images("query_x", self.query_x, 5)
        check_masks("support_y", self.support_y, self.support_x)
        check_masks("query_y", self.query_y, self.query_x)
        if self.support_x.shape[2] != self.query_x.shape[2]:
            raise ValueError(f"support_x has {self.support_x.shape[2]} channels but query_x has "
                             f"{self.query_x.shape[2]}")
        if self.support_x.shape[0] != self.query_x.shape[0]:
            raise ValueError(f"support_x has {self.support_x.shape[0]} tasks but query_x has {self.query_x.shape[0]}")
        for name in ("support_ignore", "query_ignore"):
            ign = getattr(self, name)
            if ign is not None:
                check_masks(name, ign, self.support_x if name.startswith("s") else self.query_x, binary=False)
                setattr(self, name, ign.bool())
        self.support_y = self.support_y.to(self.support_x.dtype)
        self.query_y = self.query_y.to(self.query_x.dtype)

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def shots(self) -> int:
        return self.support_x.shape[1]

    def task(self, i: int) -> Episode:
        pick = (lambda t: None if t is None else t[i])
        cid = self.class_ids[i] if i < len(self.class_ids) else -1
        return Episode(self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i],
                       pick(self.support_ignore), pick(self.query_ignore), cid)

    def to(self, device: torch.device | str) -> MetaBatch:
        move = (lambda t: None if t is None else t.to(device))
        return MetaBatch(move(self.support_x), move(self.support_y), move(self.query_x), move(self.query_y),
                         move(self.support_ignore), move(self.query_ignore), list(self.class_ids))


def collate(episodes: Sequence[Episode]) -> MetaBatch:
    """Stack T episodes of equal shots/queries/size into a :class:`MetaBatch`."""
    if not episodes:
        raise ValueError("collate needs at least one episode")

    def stack(name: str) -> torch.Tensor | None:
        values = [getattr(e, name) for e in episodes]
        if all(v is None for v in values):
            return None
        ref = next(v for v in values if v is not None)
        return torch.stack([v if v is not None else torch.zeros_like(ref, dtype=torch.bool) for v in values])

    return MetaBatch(stack("support_x"), stack("support_y"), stack("query_x"), stack("query_y"),
                     stack("support_ignore"), stack("query_ignore"), [e.class_id for e in episodes])
