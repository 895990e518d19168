"""Reading one request of ``fewseg serve``: thresholds, support kinds, counts, masks and images (each bad part an
:class:`~fewseg.webapp.uploads.UploadError`, one line), and segmenting its images."""
from __future__ import annotations

import math

import numpy as np

from fewseg.inputs import as_image, as_mask
from fewseg.webapp import sessions
from fewseg.webapp.sessions import Item
from fewseg.webapp.uploads import Limits, UploadError, display_name, read_upload

KINDS = ("mask", "none")           # support_kind: a mask file follows, or no object of the class (empty mask)


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        stem = n.rsplit(".", 1)[0]
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def parse_threshold(values, default: float | None = None) -> float | None:
    """``values["threshold"]`` (a form or query string; ``default`` when absent or empty), else an UploadError:
    a number strictly between 0 and 1."""
    text = values.get("threshold", "")
    if text is None or not str(text).strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:  # also NaN
        raise UploadError(f"threshold must be a number strictly between 0 and 1, got {str(text)[:40]!r}")
    return value


def support_kinds(form, n_images: int) -> list[str]:
    """Per support image, ``mask`` (a mask file follows) or ``none`` (an empty mask); all ``mask`` when absent."""
    kinds = form.getlist("support_kind")
    if not kinds:
        return ["mask"] * n_images
    if len(kinds) != n_images:
        raise UploadError(f"{n_images} support images but {len(kinds)} support_kind values: give one per image")
    for k in kinds:
        if k not in KINDS:
            raise UploadError(f"support_kind must be 'mask' or 'none' (no object of the class), got {k[:40]!r}")
    return kinds


def check_counts(sup_images: list, sup_masks: list, kinds: list[str], queries: list, limits: Limits) -> None:
    """The numbers of support images, masks and images to segment of one request, else an UploadError."""
    if not sup_images:
        raise UploadError("add at least one support image with its mask")
    wanted = kinds.count("mask")
    if len(sup_masks) != wanted:
        extra = f" ({len(kinds) - wanted} marked as none of the class)" if wanted < len(kinds) else ""
        raise UploadError(f"{len(sup_images)} support images{extra} but {len(sup_masks)} masks: give every support "
                          "image a mask (upload one or draw on the image) or mark it as none of the class")
    if len(sup_images) > limits.support:
        raise UploadError(f"{len(sup_images)} support images; the page takes 1-{limits.support}")
    check_queries(queries, limits)


def check_queries(queries: list, limits: Limits) -> None:
    if not queries:
        raise UploadError("add at least one image to segment")
    if len(queries) > limits.queries:
        raise UploadError(f"{len(queries)} images to segment; the limit is {limits.queries} per request")


def read_mask(image: np.ndarray, upload, name: str, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, void) of the uploaded mask of ``image``, checked against the image's size."""
    fg, ign = as_mask(read_upload(upload.read(), f"mask of {name}", "mask", limits), f"mask of {name}")
    if fg.shape != image.shape[:2]:
        raise UploadError(f"the mask of {name} is {fg.shape[1]}x{fg.shape[0]} but {name} is "
                          f"{image.shape[1]}x{image.shape[0]}: masks must match their image")
    return fg, ign


def read_support(sup_images: list, sup_masks: list, kinds: list[str], limits: Limits) -> tuple[list, list]:
    """Decoded support images and their masks (0/1, 255 = void); an empty mask is a negative example, and at
    least one image must show the object."""
    images, masks, uploads = [], [], iter(sup_masks)
    for i, (fi, kind) in enumerate(zip(sup_images, kinds)):
        name = display_name(fi.filename, f"support_{i + 1}")
        images.append(as_image(read_upload(fi.read(), name, "image", limits), name))
        if kind == "none":
            masks.append(np.zeros(images[-1].shape[:2], np.uint8))
            continue
        fg, ign = read_mask(images[-1], next(uploads), name, limits)
        masks.append(np.where(ign, 255, fg).astype(np.uint8))  # 0/1, 255 = void
    if not any((m == 1).any() for m in masks):
        raise UploadError("mark the object in at least one support image (images marked as none of the class, "
                          "or with an empty mask, only show what the class is not)")
    return images, masks


def segment_images(adapted, queries: list, threshold: float, limits: Limits) -> tuple[list[dict], list[Item]]:
    """(results shown in the page, kept probabilities) of the images to segment, one photo decoded at a time."""
    names = [display_name(f.filename, f"image_{j + 1}") for j, f in enumerate(queries)]
    out, items = [], []
    for f, name, stem in zip(queries, names, unique_names(names)):
        img = as_image(read_upload(f.read(), name, "image", limits), name)
        pred = adapted.predict(img, threshold=threshold)
        q = sessions.quantize(pred.probabilities)
        items.append(Item(name, stem, q))
        out.append({"name": name, "width": int(img.shape[1]), "height": int(img.shape[0]),
                    **sessions.stats(q, threshold), "image": sessions.photo_preview(img),
                    "probabilities": sessions.probability_preview(pred.probabilities)})
        del img, pred
    return out, items
