"""What the CLI runs on a trained checkpoint: evaluation beside baselines, and adaptation to a user's folder."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fewseg.baselines import check_baselines
from fewseg.config import DataConfig, config_from_dict
from fewseg.engine.builders import build_all, build_dataset
from fewseg.engine.checkpoint import load_checkpoint
from fewseg.engine.protocol import build_methods, format_table, run_protocol
from fewseg.errors import CheckpointError
from fewseg.registry import BASELINES


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its checkpoints/best, else checkpoints/last)."""
    path = Path(path)
    if (path / "meta.json").exists() or (path / "weights.safetensors").exists():
        return path
    for name in ("best", "last"):
        if (path / "checkpoints" / name / "meta.json").exists():
            return path / "checkpoints" / name
    raise CheckpointError(f"no checkpoint found at {path} (expected meta.json + weights.safetensors, "
                          "or a run directory with checkpoints/best or checkpoints/last)")


def load_algorithm(path: str | Path, device: torch.device | str = "cpu"):
    """(config, algorithm with meta-learned weights, checkpoint directory) from a checkpoint or run directory."""
    ckpt_dir = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt.meta.get("kind") != "meta" or "config" not in ckpt.meta:
        raise CheckpointError(f"{ckpt_dir} is not a meta-training checkpoint (kind={ckpt.meta.get('kind')!r})")
    cfg = config_from_dict(ckpt.meta["config"], stored=True)  # drops keys removed since (LEGACY_KEYS)
    cfg.device = str(device)
    _, algo = build_all(cfg, torch.device(device))
    try:
        algo.load_state_dict(ckpt.tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {ckpt_dir} does not fit model {cfg.model.name!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    if hasattr(algo, "load_extra_state"):
        algo.load_extra_state(ckpt.meta.get("algorithm_state", {}))
    algo.eval()
    return cfg, algo, ckpt_dir


def run_dir_of(ckpt_dir: Path) -> Path | None:
    return ckpt_dir.parent.parent if ckpt_dir.parent.name == "checkpoints" else None


def describe_split(split: str, d: dict, limit: int = 400) -> str:
    """One line: the split's classes and how they were chosen (fold, minimum foreground, resize)."""
    keys = ("fold", "n_folds", "min_foreground", "resize")
    how = ", ".join(f"{k}={d[k]}" for k in keys if k in d)
    names = ", ".join(str(n) for n in d["classes"].values())
    names = names if len(names) <= limit else names[:limit] + " ..."
    return f"{split}: {d['name']} {len(d['classes'])} classes ({how}): {names}"


def evaluate_checkpoint(checkpoint, shots=None, episodes=None, queries=None, steps=None, seed=0, baselines=None,
                        dataset=None, data_root=None, output=None, device="cpu", log=print) -> dict:
    """Score the checkpoint (and baselines) on test classes; print the table, write JSON; return results.

    shots, episodes, queries: None reads them from the run's stored ``eval`` config; pixels count as
    foreground above its ``eval.threshold``. baselines: None for none, an empty list for all of them.
    """
    baselines = [] if baselines is None else (BASELINES.names() if len(baselines) == 0 else check_baselines(baselines))
    cfg, algo, ckpt_dir = load_algorithm(checkpoint, device)
    steps = algo.eval_steps if steps is None else steps
    shots = list(cfg.eval.shots if shots is None else shots)
    episodes = cfg.eval.episodes if episodes is None else episodes
    queries = cfg.eval.queries if queries is None else queries
    if dataset is None:
        test_set = build_dataset(cfg.data, "test", cfg.seed)
    else:  # cross-dataset: every class of a dataset the model never saw
        test_set = build_dataset(DataConfig(name=dataset, root=data_root, image_size=cfg.data.image_size),
                                 "all" if data_root is not None or dataset != cfg.data.name else "test", cfg.seed)
    log(describe_split("test", test_set.describe()))
    train_set = build_dataset(cfg.data, "train", cfg.seed) if baselines else None
    val_set = build_dataset(cfg.data, "val", cfg.seed) if baselines else None
    t0 = time.perf_counter()
    methods = build_methods(cfg, algo, steps, baselines, train_set, val_set, run_dir_of(ckpt_dir), device, log)
    results = run_protocol(methods, test_set, shots, queries, episodes, seed, device, log,
                           full_resolution=cfg.eval.full_resolution, threshold=cfg.eval.threshold)
    scored_at = ("original label resolution" if cfg.eval.full_resolution and hasattr(test_set, "full_resolution")
                 else f"{cfg.data.image_size}x{cfg.data.image_size}")
    table = format_table(results)
    log(f"\n{test_set.name} test classes: {len(test_set.class_ids())}, episodes per shot count: {episodes}, "
        f"{queries} queries, seed {seed}, scored at {scored_at}\n{table}")
    record = {"checkpoint": str(ckpt_dir), "dataset": test_set.describe(), "episodes": episodes, "queries": queries,
              "seed": seed, "steps": steps, "threshold": cfg.eval.threshold, "scored_at": scored_at,
              "results": {str(k): v for k, v in results.items()}, "table": table,
              "seconds": time.perf_counter() - t0}
    out = Path(output) if output else ckpt_dir.parent.parent / "eval.json" if run_dir_of(ckpt_dir) \
        else ckpt_dir / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    log(f"results written to {out}")
    return record


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def find_support_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: ``masks/<stem>.png`` if that subfolder exists, else ``<stem>_mask.png``
    or ``<stem>.png`` beside a non-PNG image."""
    from fewseg.errors import DataError
    if not folder.is_dir():
        raise DataError(f"support folder {folder} does not exist")
    mask_dir = folder / "masks" if (folder / "masks").is_dir() else None
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    non_png_stems = {p.stem for p in files if p.suffix.lower() != ".png"}
    pairs = []
    for img in files:
        if img.stem.endswith("_mask") or (img.suffix.lower() == ".png" and img.stem in non_png_stems
                                          and mask_dir is None):
            continue  # a mask, not an image
        candidates = ([mask_dir / f"{img.stem}.png"] if mask_dir else
                      [folder / f"{img.stem}_mask.png"] + ([folder / f"{img.stem}.png"] if img.suffix.lower() != ".png"
                                                            else []))
        mask = next((c for c in candidates if c.exists()), None)
        if mask is None:
            raise DataError(f"support image {img} has no mask (looked for {', '.join(str(c) for c in candidates)})")
        pairs.append((img, mask))
    if not pairs:
        raise DataError(f"support folder {folder} holds no image with a mask")
    return pairs


def adapt_folder(checkpoint, support, images, output, steps=None, device="cpu", log=print) -> dict:
    """Adapt to the labelled images in ``support``; write masks and overlays of ``images`` to ``output``."""
    import numpy as np
    from PIL import Image

    from fewseg.data.io import read_binary_mask, read_image
    from fewseg.data.transforms import content_box, resize_pair, to_original
    from fewseg.errors import DataError

    cfg, algo, ckpt_dir = load_algorithm(checkpoint, device)
    prep = json.loads((ckpt_dir / "meta.json").read_text()).get("preprocessing") or {}  # no second weight read
    size = int(prep.get("image_size", cfg.data.image_size))
    mode = prep.get("resize") or cfg.data.options.get("resize", "stretch")
    infer_mode = "pad" if mode == "crop" else mode  # a centre crop would leave the borders unsegmented
    sx, sy, si = [], [], []
    for img_path, mask_path in find_support_pairs(Path(support)):
        img = read_image(img_path)
        fg, ign = read_binary_mask(mask_path)
        if fg.shape != img.shape[:2]:
            raise DataError(f"mask {mask_path} is {fg.shape[1]}x{fg.shape[0]} but image {img_path} is "
                            f"{img.shape[1]}x{img.shape[0]}")
        if not fg.any():
            raise DataError(f"mask {mask_path} has no foreground pixel")
        x, lab = resize_pair(img, np.where(ign, 255, fg.astype(np.int64)), size, mode)
        sx.append(x), sy.append((lab == 1).float()[None]), si.append((lab == 255)[None])
    sx, sy, si = torch.stack(sx).to(device), torch.stack(sy).to(device), torch.stack(si).to(device)
    t0 = time.perf_counter()
    adapted = algo.adapt(sx, sy, steps=steps, support_ignore=si)
    t_adapt = time.perf_counter() - t0
    targets = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_EXTS) \
        if Path(images).is_dir() else []
    if not targets:
        raise DataError(f"no images to segment in {images}")
    out = Path(output)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    for path in targets:
        img = read_image(path)
        x, _ = resize_pair(img, np.zeros(img.shape[:2], np.int64), size, infer_mode)
        logits = adapted.logits(x[None].to(device))                                  # [1,1,size,size]
        box = content_box(img.shape[0], img.shape[1], size, infer_mode)
        logits = to_original(logits, box, img.shape[0], img.shape[1])                # [1,1,H,W]
        fg = (torch.sigmoid(logits)[0, 0] > cfg.eval.threshold).cpu().numpy()
        Image.fromarray((fg * 255).astype(np.uint8)).save(out / "masks" / f"{path.stem}.png")
        tint = img.astype(np.float32)
        tint[fg] = 0.5 * tint[fg] + 0.5 * np.array([255, 30, 30])
        Image.fromarray(tint.astype(np.uint8)).save(out / "overlays" / f"{path.stem}.png")
    log(f"adapted on {len(sx)} support images in {t_adapt:.2f} s ({algo.eval_steps if steps is None else steps} "
        f"steps); wrote {len(targets)} masks to {out / 'masks'} and overlays to {out / 'overlays'}")
    return {"adapt_seconds": t_adapt, "n_support": len(sx), "n_images": len(targets)}
