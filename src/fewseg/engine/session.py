"""What the CLI runs on a trained checkpoint: evaluation beside baselines, and adaptation to a user's folder."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fewseg.algorithms.test_time import describe_plans
from fewseg.baselines import check_baselines
from fewseg.config import DataConfig
from fewseg.data.io import IMAGE_EXTS  # noqa: F401  (the image files fewseg reads; still importable here)
from fewseg.data.pairing import expected_masks, pair_images
from fewseg.distributed import close_process_group, init_process_group
from fewseg.engine.builders import build_dataset, model_channels
from fewseg.engine.eval_settings import eval_settings
from fewseg.engine.folders import predict_folder
from fewseg.engine.protocol import build_methods, format_domain_table, format_table, run_protocol
from fewseg.engine.tiled_eval import TiledEvaluation
from fewseg.errors import DataError
from fewseg.loading import load_algorithm, resolve_checkpoint, run_dir_of  # noqa: F401  (still importable here)
from fewseg.registry import BASELINES
from fewseg.segmenter import load as load_segmenter
from fewseg.tiling import tile_options


def describe_split(split: str, d: dict, limit: int = 400) -> str:
    """One line: the split's classes and how they were chosen (fold, minimum foreground, resize)."""
    keys = ("fold", "n_folds", "min_foreground", "resize")
    how = ", ".join(f"{k}={d[k]}" for k in keys if k in d)
    names = ", ".join(str(n) for n in d["classes"].values())
    names = names if len(names) <= limit else names[:limit] + " ..."
    return f"{split}: {d['name']} {len(d['classes'])} classes ({how}): {names}"


def evaluate_checkpoint(checkpoint, shots=None, episodes=None, queries=None, steps=None, seed=0, baselines=None,
                        dataset=None, data_root=None, output=None, device="cpu", log=print, tile=None,
                        overlap=None) -> dict:
    """Score the checkpoint (and baselines) on test classes; print the table, write JSON; return results.

    shots, episodes, queries: None reads them from the run's stored ``eval`` config; pixels count as
    foreground above its ``eval.threshold``. baselines: None for none, an empty list for all of them.
    tile, overlap: large images at their own resolution (``--tile PX --overlap F``; None: the run's ``eval.tile``
    and ``eval.overlap``, ``tile=0``: none): each episode's support images are adapted on as tile-pixel patches
    and each query is predicted window by window and scored at its label map's size
    (:mod:`fewseg.engine.tiled_eval`), for the meta-learned model and every baseline.
    Under ``torchrun`` the test episodes are split across ranks and their intersection/union sums gathered
    (the same table as one process); rank 0 prepares the cached transfer network first, prints and writes.
    """
    baselines = [] if baselines is None else (BASELINES.names() if len(baselines) == 0 else check_baselines(baselines))
    group = init_process_group(torch.device(device) if isinstance(device, str) else device, timeout_s=3600.0)
    if not group.is_main:
        log = _silent
    try:
        return _evaluate(checkpoint, shots, episodes, queries, steps, seed, baselines, dataset, data_root, output,
                         device, log, group, tile, overlap)
    finally:
        close_process_group()


def _silent(*_args, **_kwargs) -> None:
    return None


def _evaluate(checkpoint, shots, episodes, queries, steps, seed, baselines, dataset, data_root, output, device, log,
              group, tile=None, overlap=None) -> dict:
    cfg, algo, ckpt_dir = load_algorithm(checkpoint, device)
    settings = eval_settings(cfg, shots, episodes, queries, tile, overlap)
    shots, episodes, queries, tiling = settings.shots, settings.episodes, settings.queries, settings.tiling
    if dataset is None:
        test_set = build_dataset(cfg.data, "test", cfg.seed, model_channels(cfg))
    else:  # cross-dataset: every class of a dataset the model never saw
        test_set = build_dataset(DataConfig(name=dataset, root=data_root, image_size=cfg.data.image_size),
                                 "all" if data_root is not None or dataset != cfg.data.name else "test", cfg.seed,
                                 model_channels(cfg))
    if tiling is not None:  # a dataset without images at their own size: one line before any baseline's work
        TiledEvaluation.for_dataset(test_set, tiling)
    log(describe_split("test", test_set.describe()))
    train_set = build_dataset(cfg.data, "train", cfg.seed, model_channels(cfg)) if baselines else None
    val_set = build_dataset(cfg.data, "val", cfg.seed, model_channels(cfg)) if baselines else None
    t0 = time.perf_counter()
    cached = run_dir_of(ckpt_dir) is not None and bool({"transfer", "prototype"} & set(baselines))
    if cached and not group.is_main:  # the transfer network: trained (or loaded) once by rank 0, then read
        group.barrier()
    methods = build_methods(cfg, algo, steps, baselines, train_set, val_set, run_dir_of(ckpt_dir), device, log,
                            shots=shots)
    if steps is None and algo.test_time:
        log(f"test-time plans (chosen on validation classes): {describe_plans(algo, shots)}")
    if cached and group.is_main:
        group.barrier()
    results = run_protocol(methods, test_set, shots, queries, episodes, seed, device, log,
                           full_resolution=cfg.eval.full_resolution, threshold=cfg.eval.threshold, group=group,
                           tiling=tiling, channels=model_channels(cfg))
    scored_at = ("original label resolution" if cfg.eval.full_resolution and hasattr(test_set, "full_resolution")
                 else f"{cfg.data.image_size}x{cfg.data.image_size}")
    if tiling is not None:  # images within one tile are scored as without tiling (scored_at above)
        within = "" if scored_at == "original label resolution" else f", images within one tile at {scored_at}"
        scored_at = (f"original label resolution, images larger than {tiling.tile} px predicted in tiles of "
                     f"{tiling.tile} px (overlap {tiling.overlap_pixels} px){within}")
    table, by_domain = format_table(results), format_domain_table(results)
    log(f"\n{test_set.name} test classes: {len(test_set.class_ids())}, episodes per shot count: {episodes}, "
        f"{queries} queries, seed {seed}, scored at {scored_at}\n{table}")
    if by_domain:
        log(f"\nper domain:\n{by_domain}")
    record = {"checkpoint": str(ckpt_dir), "dataset": test_set.describe(), "episodes": episodes, "queries": queries,
              "seed": seed, "steps": algo.eval_steps if steps is None and not algo.test_time else steps,
              "test_time": {str(s): algo.plan_for(s).to_dict() for s in shots} if steps is None else None,
              "threshold": cfg.eval.threshold, "scored_at": scored_at,
              **({"tiling": tiling.to_dict()} if tiling is not None else {}),
              "results": {str(k): v for k, v in results.items()}, "table": table,
              **({"domain_table": by_domain} if by_domain else {}),
              "seconds": time.perf_counter() - t0, "world_size": group.world}
    if not group.is_main:
        return record
    out = Path(output) if output else ckpt_dir.parent.parent / "eval.json" if run_dir_of(ckpt_dir) \
        else ckpt_dir / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    log(f"results written to {out}")
    return record


def find_support_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a support folder, in file-name order: with a ``masks/`` subfolder, ``masks/<stem>.png``
    of the images in ``images/`` (if there) or the folder itself; else masks beside the images
    (:func:`fewseg.data.pairing.pair_images`: ``<stem>_mask.png``, or ``<stem>.png`` beside a non-PNG image)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"support folder {folder} does not exist")
    mask_dir = folder / "masks" if (folder / "masks").is_dir() else None
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    pairs = sorted(pair_images(image_dir, mask_dir, what="support folder"))
    for img, mask in pairs:
        if mask is None:
            looked = ", ".join(str(m) for m in expected_masks(img, mask_dir))
            raise DataError(f"support image {img} has no mask (looked for {looked})")
    if not pairs:
        raise DataError(f"support folder {folder} holds no image with a mask")
    return pairs


def adapt_folder(checkpoint, support, images=None, output=None, steps=None, device="cpu", save_adapted=None,
                 threshold=None, masks=None, progress=True, log=print, tile=None, overlap=None) -> dict:
    """Adapt to the labelled images in ``support`` (:func:`find_support_pairs`); keep the adapted model in
    ``save_adapted`` and/or write masks, overlays and results.json of ``images`` to ``output``
    (:func:`fewseg.engine.folders.predict_folder`). A thin user of :func:`fewseg.load`.

    ``tile``, ``overlap``: large images at their own resolution (:mod:`fewseg.tiling`), as ``--tile`` and
    ``--overlap`` give them: None leaves the segmenter's default (no tiling),
    ``tile=0`` turns tiling off."""
    if images is None and save_adapted is None:
        raise DataError("nothing to do: give --images DIR --output OUT to segment, or --save-adapted PATH")
    if images is not None and output is None:
        raise DataError("--images needs --output OUT (where masks and overlays are written)")
    seg = load_segmenter(checkpoint, device, **tile_options(tile, overlap))
    pairs = find_support_pairs(Path(support))
    adapted = seg.adapt([img for img, _ in pairs], [mask for _, mask in pairs], steps=steps)
    t_adapt = adapted.info["seconds"]
    log(f"adapted on {len(pairs)} support images in {t_adapt:.2f} s ({adapted.info['steps']} steps)")
    result = {"adapt_seconds": t_adapt, "n_support": len(pairs), "n_images": 0}
    if save_adapted is not None:
        adapted.save(save_adapted)
        log(f"adapted model saved to {save_adapted} (use it with `fewseg predict --adapted {save_adapted}`)")
    if images is not None:
        record = predict_folder(adapted, images, output, threshold=threshold, masks=masks, progress=progress,
                                log=log)
        result.update(n_images=record["n_images"], mean_iou=record["mean_iou"])
    return result
