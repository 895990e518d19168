"""Figures of a run: training curves, mIoU vs steps / shots, and overlay grids (matplotlib, Agg)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training(log_path: Path, out: Path) -> Path:
    rows = read_log(log_path)
    it = [r["iteration"] for r in rows]
    loss = np.array([r["loss"] for r in rows])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(it, loss, alpha=0.3, color="C0", label="meta-loss")
    if len(loss) >= 10:
        k = max(len(loss) // 30, 5)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        a.plot(it[k - 1:], smooth, color="C0", label=f"moving mean ({k})")
    a.set_xlabel("meta-iteration"), a.set_ylabel("query loss after adaptation"), a.legend()
    val = [(r["iteration"], r["val_miou"]) for r in rows if "val_miou" in r]
    if val:
        b.plot(*zip(*val), marker="o", color="C1")
    b.set_xlabel("meta-iteration"), b.set_ylabel("val mIoU"), b.set_title("validation classes")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_curves(curves: dict[str, dict], xlabel: str, out: Path, title: str = "") -> Path:
    """curves: {method: {x: miou}} -> a line plot of mIoU (%)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (name, points) in enumerate(curves.items()):
        xs = sorted(points)
        ax.plot(xs, [100 * points[x] for x in xs], marker="o", label=name, color=f"C{i}")
    ax.set_xlabel(xlabel), ax.set_ylabel("test mIoU (%)"), ax.set_title(title), ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _rgb(img: torch.Tensor) -> np.ndarray:
    return img.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def overlay(image: torch.Tensor, mask: torch.Tensor, colour=(1.0, 0.1, 0.1), alpha=0.5) -> np.ndarray:
    """image [3,H,W] in [0,1], mask [1,H,W] -> [H,W,3] with the mask tinted."""
    rgb = _rgb(image)
    m = mask.detach().cpu()[0].numpy()[..., None] > 0.5
    return np.where(m, (1 - alpha) * rgb + alpha * np.array(colour), rgb)


def plot_overlay_grid(episode, predictions: dict[str, torch.Tensor], out: Path, max_queries: int = 3) -> Path:
    """Rows: support (image+mask) then, per query, the image, truth and each method's prediction."""
    S = episode.support_x.shape[0]
    Q = min(max_queries, episode.query_x.shape[0])
    cols = max(S, 2 + len(predictions))
    fig, axes = plt.subplots(1 + Q, cols, figsize=(1.6 * cols, 1.7 * (1 + Q)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for s in range(S):
        axes[0, s].imshow(overlay(episode.support_x[s], episode.support_y[s], (0.1, 0.9, 0.1)))
        axes[0, s].set_title(f"support {s + 1}", fontsize=7)
    for q in range(Q):
        row = axes[1 + q]
        row[0].imshow(_rgb(episode.query_x[q])), row[0].set_title("query", fontsize=7)
        row[1].imshow(overlay(episode.query_x[q], episode.query_y[q], (0.1, 0.9, 0.1)))
        row[1].set_title("truth", fontsize=7)
        for j, (name, probs) in enumerate(predictions.items()):
            row[2 + j].imshow(overlay(episode.query_x[q], probs[q]))
            row[2 + j].set_title(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
