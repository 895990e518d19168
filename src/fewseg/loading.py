"""Find and load a meta-training checkpoint: (config, algorithm with its meta-learned weights, checkpoint directory).

The one place that turns a path into a trained algorithm, for :func:`fewseg.load`, ``fewseg evaluate``, ``fewseg
tune`` and ``fewseg evaluate --explain``. It depends on the engine's builders and checkpoint reader only, so every
user imports it at module level (no import cycle).

Example:
    >>> from pathlib import Path
    >>> run_dir_of(Path("runs/demo/checkpoints/best")).as_posix()
    'runs/demo'
    >>> run_dir_of(Path("exported/checkpoint")) is None
    True
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from fewseg.config import config_from_dict
from fewseg.engine.builders import build_all, build_model, model_channels
from fewseg.engine.checkpoint import META, load_checkpoint
from fewseg.engine.integrity import input_size_problem
from fewseg.errors import CheckpointError
from fewseg.models import weights_free_options
from fewseg.yaml_reader import short_repr

__all__ = ["check_preprocessing", "load_algorithm", "resolve_checkpoint", "run_dir_of"]


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


def check_preprocessing(meta: dict, cfg, meta_file: Path) -> None:
    """The ``preprocessing`` a checkpoint's ``meta.json`` records can feed its network: ``image_size`` an integer
    side that the network of ``cfg`` takes (a dry run on the meta device), else a one-line CheckpointError."""
    prep = meta.get("preprocessing") or {}
    if "image_size" not in prep:
        return
    size = prep["image_size"]
    if not isinstance(size, int) or isinstance(size, bool):
        raise CheckpointError(f"{meta_file}: 'preprocessing.image_size' must be an integer, got {size!r}")
    problem = input_size_problem(lambda: build_model(cfg.model), model_channels(cfg) or 3, size)
    if problem is not None:
        raise CheckpointError(f"{meta_file}: 'preprocessing.image_size' {size} does not fit its network: model "
                              f"{cfg.model.name!r} ({short_repr(cfg.model.options)}) cannot take {size}x{size} "
                              f"images ({problem})")


def load_algorithm(path: str | Path, device: torch.device | str = "cpu"):
    """(config, algorithm with meta-learned weights, checkpoint directory) from a checkpoint or run directory.

    The checkpoint's files are checked against their SHA-256 record and its metadata against the network
    (:func:`~fewseg.engine.checkpoint.load_checkpoint`, :func:`check_preprocessing`): a one-line CheckpointError."""
    ckpt_dir = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt.meta.get("kind") != "meta" or "config" not in ckpt.meta:
        raise CheckpointError(f"{ckpt_dir} is not a meta-training checkpoint (kind={ckpt.meta.get('kind')!r})")
    cfg = config_from_dict(ckpt.meta["config"], stored=True)  # drops keys removed since (LEGACY_KEYS)
    cfg.device = str(device)
    stored = copy.deepcopy(cfg)  # the network is rebuilt without reading pretrained weights: the checkpoint has all
    stored.model.options = weights_free_options(cfg.model.name, cfg.model.options)
    _, algo = build_all(stored, torch.device(device))  # checks the network itself first (check_model_input)
    check_preprocessing(ckpt.meta, stored, ckpt.path / META)
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
    """The run directory holding ``ckpt_dir`` (``RUN/checkpoints/NAME``), or None for a bare checkpoint."""
    return ckpt_dir.parent.parent if ckpt_dir.parent.name == "checkpoints" else None
