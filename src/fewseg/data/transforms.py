"""Resizing an (image, labels) pair to a square, and joint training augmentation.

Example:
    >>> import numpy as np, torch
    >>> from fewseg.data.transforms import JointAugment, resize_pair
    >>> photo, labels = np.zeros((30, 60, 3), np.uint8), np.ones((30, 60), np.uint8)   # [H,W,3], [H,W]
    >>> img, lab = resize_pair(photo, labels, 16, mode="pad")    # [3,16,16] float, [16,16] int64
    >>> img.dtype, lab.dtype, sorted(lab.unique().tolist())      # padding is labelled 255 (ignore)
    (torch.float32, torch.int64, [1, 255])
    >>> aug = JointAugment(flip=True, scale=(0.8, 1.2), colour=0.2)
    >>> g = torch.Generator().manual_seed(0)
    >>> image, mask, ignore = aug(img, (lab == 1).float()[None], (lab == 255)[None], g)
    >>> tuple(image.shape), tuple(mask.shape), ignore.dtype           # [3,H,W], [1,H,W], [1,H,W] bool
    ((3, 16, 16), (1, 16, 16), torch.bool)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["RESIZE_MODES", "JointAugment", "resize_arrays", "resize_pair"]

RESIZE_MODES = ("stretch", "pad", "crop")
CROP_ASPECT_LIMIT = 16  # "crop" of a photo longer than 16:1 cuts its centre first (bounded memory)


def _resize_image(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """[H,W,C] -> [h,w,C], bilinear (PIL antialiases when shrinking): uint8 RGB or grey through PIL's
    8-bit modes, any other channel count or float32 one channel at a time in PIL's float mode."""
    if image.shape[0] == h and image.shape[1] == w:
        return image
    if image.dtype == np.uint8 and image.shape[2] in (1, 3):
        im = Image.fromarray(image, "RGB") if image.shape[2] == 3 else Image.fromarray(image[:, :, 0], "L")
        return np.array(im.resize((w, h), Image.BILINEAR)).reshape(h, w, image.shape[2])
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c], np.float32), "F")
                         .resize((w, h), Image.BILINEAR)) for c in range(image.shape[2])]
    out = np.stack(planes, axis=2)
    return out if image.dtype == np.float32 else np.clip(np.round(out), 0, 255).astype(image.dtype)


def _resize_labels(labels: np.ndarray, w: int, h: int) -> np.ndarray:
    """integer [H,W] -> same dtype [h,w], nearest neighbour (ids are never blended)."""
    if labels.shape[0] == h and labels.shape[1] == w:
        return labels
    if labels.dtype == np.uint8:
        return np.array(Image.fromarray(labels, "L").resize((w, h), Image.NEAREST))
    # wider ids: nearest by index arithmetic (PIL's "I" mode is int32, this keeps any dtype)
    H, W = labels.shape
    rows = np.minimum(((np.arange(h) + 0.5) * (H / h)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (W / w)).astype(np.int64), W - 1)
    return labels[rows[:, None], cols[None, :]]


def content_box(H: int, W: int, size: int, mode: str) -> tuple[int, int, int, int] | None:
    """(top, left, h, w): where an H x W photo lies in the ``size`` x ``size`` network input after ``mode``;
    None for "crop" (part of the photo is cut away, so predictions cannot cover the original).

    Example:
        >>> from fewseg.data.transforms import content_box
        >>> content_box(30, 60, 32, "pad")
        (8, 0, 16, 32)
    """
    if mode == "stretch":
        return 0, 0, size, size
    if mode == "pad":
        s = size / max(H, W)
        h, w = max(1, min(size, round(H * s))), max(1, min(size, round(W * s)))
        return (size - h) // 2, (size - w) // 2, h, w
    return None


def to_original(values: torch.Tensor, box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """Network-size maps ``[N,C,S,S]`` (logits) -> ``[N,C,height,width]`` over the photo's ``box`` (bilinear)."""
    top, left, h, w = box
    inside = values[..., top:top + h, left:left + w]
    return torch.nn.functional.interpolate(inside, size=(height, width), mode="bilinear", align_corners=False)


def resize_arrays(image: np.ndarray, labels: np.ndarray, size: int, mode: str = "stretch",
                  fill_label: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`resize_pair` but stays in numpy: uint8 ``[size,size,3]`` and labels ``[size,size]``
    of the input's dtype (handy for caching small arrays).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)  # so the pad value 255 stays distinct from True
    if image.ndim != 3 or labels.shape != image.shape[:2] or image.dtype not in (np.uint8, np.float32):
        raise ValueError(f"expected image [H,W,C] (uint8, or float32 in [0,1]) and labels [H,W] of the same size, "
                         f"got {image.shape} {image.dtype} and {labels.shape}")
    H, W = labels.shape
    if mode == "stretch":
        return _resize_image(image, size, size), _resize_labels(labels, size, size)
    if mode == "pad":
        top, left, h, w = content_box(H, W, size, mode)
        im, lab = _resize_image(image, w, h), _resize_labels(labels, w, h)
        out_im = np.zeros((size, size, image.shape[2]), dtype=image.dtype)
        out_lab = np.full((size, size), fill_label, dtype=labels.dtype)
        out_im[top:top + h, left:left + w] = im
        out_lab[top:top + h, left:left + w] = lab
        return out_im, out_lab
    # crop: shorter side -> size, centre crop of the longer one
    s = size / min(H, W)
    h, w = max(size, round(H * s)), max(size, round(W * s))
    if h * w > CROP_ASPECT_LIMIT * size * size:
        # a sliver (e.g. 1 x 5000) would be scaled to size x (size * 5000) first: cut the source to its centre
        # square (plus a margin for the filter) before resizing, so memory stays that of a size x size image
        side = min(H, W)
        margin = max(1, side // 4)
        keep_h, keep_w = min(H, side + 2 * margin), min(W, side + 2 * margin)
        top0, left0 = (H - keep_h) // 2, (W - keep_w) // 2
        image = image[top0:top0 + keep_h, left0:left0 + keep_w]
        labels = labels[top0:top0 + keep_h, left0:left0 + keep_w]
        h, w = max(size, round(keep_h * s)), max(size, round(keep_w * s))
    im, lab = _resize_image(image, w, h), _resize_labels(labels, w, h)
    top, left = (h - size) // 2, (w - size) // 2
    return (np.ascontiguousarray(im[top:top + size, left:left + size]),
            np.ascontiguousarray(lab[top:top + size, left:left + size]))


def resize_pair(image: np.ndarray, labels: np.ndarray, size: int, mode: str = "stretch",
                fill_label: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a photo and its label map together to ``size x size``.

    image: uint8 ``[H,W,3]`` (or ``[H,W,C]``, uint8 or float32 in [0,1]); labels: integer ``[H,W]`` (class
    ids or 0/1/255). Returns image float32 ``[C,size,size]`` in [0,1] (bilinear, antialiased when shrinking)
    and labels int64 ``[size,size]`` (nearest).

    Modes: ``"stretch"`` ignores the aspect ratio; ``"pad"`` scales the longer side to ``size``, centres
    it and pads the image with 0 and the labels with ``fill_label`` (255 = ignore by convention);
    ``"crop"`` scales the shorter side to ``size`` and takes the centre crop.

    Example:
        >>> import numpy as np
        >>> from fewseg.data.transforms import resize_pair
        >>> img, lab = resize_pair(np.zeros((30, 60, 3), np.uint8), np.zeros((30, 60), np.uint8), 32, "pad")
        >>> img.shape, lab.shape, int(lab[0, 0])
        (torch.Size([3, 32, 32]), torch.Size([32, 32]), 255)
    """
    im, lab = resize_arrays(image, labels, size, mode, fill_label)
    img_t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float()
    img_t = img_t.div_(255.0) if im.dtype == np.uint8 else img_t
    return img_t.contiguous(), torch.from_numpy(lab.astype(np.int64))


def _rand(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * _rand(generator)


def _grey(image: torch.Tensor) -> torch.Tensor:
    """[3,H,W] -> [1,H,W] luma (ITU-R 601)."""
    return (0.299 * image[0:1] + 0.587 * image[1:2] + 0.114 * image[2:3])


class JointAugment:
    """Random flip, scale+crop and colour jitter applied consistently to an image and its masks.

    * ``flip``: horizontal flip with probability 0.5, the same for image, mask and ignore.
    * ``scale=(lo, hi)``: zoom by a factor drawn uniformly from [lo, hi], then crop (zoom-in) or place
      (zoom-out) at a random offset back to the input size H,W. Image bilinear, mask/ignore nearest.
      After zoom-out the area outside the source is image 0, mask 0, ignore True. ``None`` disables it.
    * ``crop_area=(lo, hi)``: a random crop of a fraction of the area drawn uniformly from [lo, hi], of aspect
      ratio drawn log-uniformly from ``crop_aspect``, resized back to H,W (image bilinear, mask/ignore nearest;
      it only zooms in, so no ignore border is added). ``None`` (the default) disables it.
    * ``colour``: brightness, contrast and saturation factors each drawn from [1-colour, 1+colour]
      (image only, clamped to [0,1]); 0 disables it. Images with other than 3 channels get brightness and
      contrast only.

    All randomness comes from the ``generator`` passed to ``__call__``, so a fixed seed replays the same
    augmentation.

    Example:
        >>> import torch
        >>> from fewseg.data.transforms import JointAugment
        >>> aug = JointAugment()
        >>> g = torch.Generator().manual_seed(0)
        >>> ign = torch.zeros(1, 16, 16, dtype=torch.bool)
        >>> img, mask, ign = aug(torch.rand(3, 16, 16), torch.zeros(1, 16, 16), ign, g)
        >>> tuple(img.shape), tuple(mask.shape), tuple(ign.shape)
        ((3, 16, 16), (1, 16, 16), (1, 16, 16))
    """

    def __init__(self, flip: bool = True, scale: tuple[float, float] | None = (0.8, 1.2),
                 colour: float = 0.2, crop_area: tuple[float, float] | None = None,
                 crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)):
        if scale is not None and not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
        if colour < 0:
            raise ValueError(f"colour must be >= 0, got {colour}")
        if crop_area is not None and not (0 < crop_area[0] <= crop_area[1] <= 1):
            raise ValueError(f"crop_area must be (lo, hi) with 0 < lo <= hi <= 1, got {crop_area}")
        if not (0 < crop_aspect[0] <= crop_aspect[1]):
            raise ValueError(f"crop_aspect must be (lo, hi) with 0 < lo <= hi, got {crop_aspect}")
        self.flip, self.scale, self.colour = flip, scale, colour
        self.crop_area, self.crop_aspect = crop_area, crop_aspect

    def __repr__(self) -> str:
        crop = f", crop_area={self.crop_area}, crop_aspect={self.crop_aspect}" if self.crop_area else ""
        return f"JointAugment(flip={self.flip}, scale={self.scale}, colour={self.colour}{crop})"

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, ignore: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # image [C,H,W] float in [0,1] (usually C = 3), mask [1,H,W] float {0,1}, ignore [1,H,W] bool
        if self.flip and _rand(generator) < 0.5:
            image, mask, ignore = image.flip(-1), mask.flip(-1), ignore.flip(-1)
        if self.scale is not None and self.scale[1] > 0:
            s = _uniform(self.scale[0], self.scale[1], generator)
            image, mask, ignore = self._scale(image, mask, ignore, s, generator)
        if self.crop_area is not None:
            image, mask, ignore = self._crop(image, mask, ignore, generator)
        if self.colour > 0:
            image = self._jitter(image, generator)
        return image.contiguous(), mask.contiguous(), ignore.contiguous()

    @staticmethod
    def _scale(image, mask, ignore, s: float, generator: torch.Generator):
        H, W = image.shape[-2:]
        h, w = max(1, round(H * s)), max(1, round(W * s))
        if (h, w) != (H, W):
            dtype = image.dtype
            image = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=s < 1).clamp_(0, 1)[0].to(dtype)
            mask = F.interpolate(mask[None].float(), size=(h, w), mode="nearest")[0].to(mask.dtype)
            ignore = F.interpolate(ignore[None].float(), size=(h, w), mode="nearest")[0] > 0.5
        # per axis: crop when the zoomed side is longer, place (pad) when shorter
        oy = int(torch.randint(abs(h - H) + 1, (1,), generator=generator))
        ox = int(torch.randint(abs(w - W) + 1, (1,), generator=generator))
        src_y = slice(oy, oy + H) if h >= H else slice(0, h)
        dst_y = slice(0, H) if h >= H else slice(oy, oy + h)
        src_x = slice(ox, ox + W) if w >= W else slice(0, w)
        dst_x = slice(0, W) if w >= W else slice(ox, ox + w)
        out_img = image.new_zeros((image.shape[0], H, W))
        out_mask = mask.new_zeros((mask.shape[0], H, W))
        out_ign = torch.ones((ignore.shape[0], H, W), dtype=torch.bool, device=ignore.device)
        out_img[:, dst_y, dst_x] = image[:, src_y, src_x]
        out_mask[:, dst_y, dst_x] = mask[:, src_y, src_x]
        out_ign[:, dst_y, dst_x] = ignore[:, src_y, src_x]
        return out_img, out_mask, out_ign

    def _crop(self, image, mask, ignore, generator: torch.Generator):
        """A random crop of ``crop_area`` of the area (aspect in ``crop_aspect``) resized back to H,W."""
        H, W = image.shape[-2:]
        area = _uniform(self.crop_area[0], self.crop_area[1], generator)
        aspect = math.exp(_uniform(math.log(self.crop_aspect[0]), math.log(self.crop_aspect[1]), generator))
        h = min(H, max(1, round(H * math.sqrt(area / aspect))))
        w = min(W, max(1, round(W * math.sqrt(area * aspect))))
        top = int(torch.randint(H - h + 1, (1,), generator=generator))
        left = int(torch.randint(W - w + 1, (1,), generator=generator))
        box = (slice(None), slice(top, top + h), slice(left, left + w))
        if (h, w) == (H, W):
            return image, mask, ignore
        dtype = image.dtype
        image = F.interpolate(image[box][None].float(), size=(H, W), mode="bilinear",
                              align_corners=False).clamp_(0, 1)[0].to(dtype)
        mask = F.interpolate(mask[box][None].float(), size=(H, W), mode="nearest")[0].to(mask.dtype)
        ignore = F.interpolate(ignore[box][None].float(), size=(H, W), mode="nearest")[0] > 0.5
        return image, mask, ignore

    def _jitter(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.colour
        b = _uniform(1 - c, 1 + c, generator)
        k = _uniform(1 - c, 1 + c, generator)
        sat = _uniform(1 - c, 1 + c, generator)
        image = (image * b).clamp(0, 1)
        rgb = image.shape[0] == 3
        mean = (_grey(image) if rgb else image).mean()
        image = ((image - mean) * k + mean).clamp(0, 1)
        if not rgb:  # saturation needs colour: other channel counts get brightness and contrast only
            return image
        grey = _grey(image)
        return ((image - grey) * sat + grey).clamp(0, 1)
