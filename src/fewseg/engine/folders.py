"""Segmenting a folder with an adapted model: masks, overlays and ``results.json`` (what ``fewseg predict`` and
``fewseg adapt`` write).

One image is decoded, predicted and written at a time, so memory stays that of one image (a 4000x3000 photo:
its pixels, its probability map and its mask, about 100 MB) whatever the folder holds.

Example:
    >>> import numpy as np, tempfile, fewseg
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> seg = fewseg.Segmenter.untrained("seed-cnn", {"width": 4}, image_size=16, steps=1)
    >>> adapted = seg.adapt([np.zeros((16, 16, 3), np.uint8)], [np.eye(16, dtype=np.uint8)])
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "in").mkdir(); Image.new("RGB", (30, 20)).save(d / "in" / "a.jpg")
    >>> record = predict_folder(adapted, d / "in", d / "out", progress=False, log=lambda *a: None)
    >>> sorted(p.name for p in (d / "out").iterdir()), record["images"][0]["width"]
    (['masks', 'overlays', 'results.json'], 30)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fewseg.errors import DataError
from fewseg.inputs import as_image, as_mask, list_images, output_names


def display_rgb(image: np.ndarray) -> np.ndarray:
    """[H,W,C] uint8 or float in [0,1] -> uint8 [H,W,3] to look at (grey repeated; more channels: the first 3)."""
    a = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 2:
        return np.concatenate([a, a[:, :, :1]], axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its border (4-neighbour erosion, bool [H,W])."""
    inner = mask.copy()
    for _ in range(width):
        eroded = inner.copy()
        eroded[1:] &= inner[:-1]
        eroded[:-1] &= inner[1:]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return mask & ~inner


OVERLAY_COLOR = (255, 30, 30)   # the foreground tint of overlays (fewseg predict's and Prediction.overlay's)
OUTLINE_COLOR = (0, 255, 0)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
            color: tuple[int, int, int] = OVERLAY_COLOR) -> np.ndarray:
    """``image`` [H,W,C] (uint8, or float in [0, 1]) with ``mask`` bool [H,W] tinted ``color`` at opacity ``alpha``
    and outlined in green (uint8 [H,W,3]), the outline about 1/150 of the shorter side thick so that it shows on a
    large photo too."""
    out = display_rgb(image).copy()
    if mask.any():
        out[mask] = ((1.0 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float64)).astype(np.uint8)
        out[outline(mask, max(1, min(8, min(mask.shape) // 150)))] = OUTLINE_COLOR
    return out


def iou(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Foreground IoU over the pixels not ignored (1.0 when both are empty)."""
    keep = ~ignore if ignore is not None else np.ones(pred.shape, bool)
    inter = np.count_nonzero(pred & truth & keep)
    union = np.count_nonzero((pred | truth) & keep)
    return 1.0 if union == 0 else inter / union


def find_truth(masks: Path, image: Path) -> Path | None:
    for candidate in (masks / f"{image.stem}.png", masks / f"{image.stem}_mask.png"):
        if candidate.is_file() and candidate != image:
            return candidate
    return None


def predict_folder(adapted, images: str | Path, output: str | Path, threshold: float | None = None,
                   masks: str | Path | None = None, progress: bool = True, log=print) -> dict:
    """Segment every image of ``images`` with ``adapted``; write ``output/masks/<name>.png`` (0/255, each image's
    size), ``output/overlays/<name>.png`` and ``output/results.json`` (per image: foreground fraction, mean
    confidence and, where ``masks/<stem>.png`` exists, IoU). Returns the results record."""
    from tqdm import tqdm

    paths = list_images(images, "images")
    masks = Path(masks) if masks is not None else None
    if masks is not None and not masks.is_dir():
        raise DataError(f"masks folder {masks} does not exist")
    out = Path(output)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    t = adapted.threshold if threshold is None else float(threshold)
    rows, t0 = [], time.perf_counter()
    for path, name in tqdm(list(zip(paths, output_names(paths))), desc="segmenting", unit="image",
                           disable=not progress):
        image = as_image(path, str(path))
        pred = adapted.predict(image, threshold=t)
        Image.fromarray(pred.mask.astype(np.uint8) * 255).save(out / "masks" / name)
        Image.fromarray(overlay(image, pred.mask)).save(out / "overlays" / name)
        row = {"image": path.name, "mask": f"masks/{name}", "overlay": f"overlays/{name}",
               "width": int(image.shape[1]), "height": int(image.shape[0]),
               "foreground_fraction": round(pred.foreground_fraction, 6), "mean_confidence": round(pred.confidence, 6)}
        truth = find_truth(masks, path) if masks is not None else None
        if truth is not None:
            fg, ign = as_mask(truth, str(truth))
            if fg.shape != pred.mask.shape:
                raise DataError(f"mask {truth} is {fg.shape[1]}x{fg.shape[0]} but image {path} is "
                                f"{image.shape[1]}x{image.shape[0]}")
            row["iou"] = round(iou(pred.mask, fg, ign), 6)
        rows.append(row)
        del image, pred
    scored = [r["iou"] for r in rows if "iou" in r]
    record = {"threshold": t, "n_images": len(rows), "seconds": round(time.perf_counter() - t0, 3),
              "mean_iou": round(float(np.mean(scored)), 6) if scored else None, "n_scored": len(scored),
              "adaptation": adapted.info, "images": rows}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    scored_text = f"; mean IoU {record['mean_iou']:.3f} over {len(scored)} images with masks" if scored else ""
    log(f"wrote {len(rows)} masks to {out / 'masks'}, overlays to {out / 'overlays'} and {out / 'results.json'}"
        f"{scored_text}")
    return record
