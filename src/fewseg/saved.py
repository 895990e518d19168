"""Adapted models on disk: a directory with ``weights.safetensors`` (the adapted weights and buffers, exactly
those used at test time: for MAML++ with per-step norms, the final step's) and ``meta.json``::

    {"kind": "adapted", "format": 1, "model": {"name", "options"},
     "preprocessing": {"image_size", "resize", "channels", "pixels"}, "threshold",
     "adaptation": {"algorithm", "steps", "shots", "support", "checkpoint", "seconds"},
     "versions": {"fewseg", "torch", "python"}}

Written atomically by :func:`~fewseg.engine.checkpoint.save_checkpoint`, which also records the SHA-256 of
``weights.safetensors`` and the ``preprocessing.image_size`` it was adapted at in ``meta.json``'s ``"integrity"``;
read back with safetensors and JSON only (no pickle, no code), checking the kind, the format number, the keys,
every tensor name and shape, the file against its SHA-256 (:func:`~fewseg.engine.integrity.verify_files`; a model
saved before that record loads with a warning) and that the network takes images of the recorded size.
:func:`read_adapted` returns the checked parts; :func:`fewseg.load_adapted` makes the
:class:`~fewseg.segmenter.AdaptedSegmenter` of them (this module never imports the segmenter).

Example:
    >>> import tempfile, torch, fewseg
    >>> seg = fewseg.Segmenter.untrained("seed-cnn", {"width": 4}, image_size=16, steps=1)
    >>> adapted = seg.adapt([torch.rand(3, 16, 16)], [torch.ones(16, 16)])
    >>> path = save_adapted(adapted, tempfile.mkdtemp() + "/cls")
    >>> sorted(p.name for p in path.iterdir())
    ['meta.json', 'weights.safetensors']
    >>> read_adapted(path).preprocessing.image_size
    16
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from safetensors.torch import load_file
from torch import nn

from fewseg.engine.checkpoint import META, WEIGHTS, save_checkpoint
from fewseg.engine.integrity import input_size_problem, verify_files
from fewseg.errors import CheckpointError
from fewseg.models import weights_free_options
from fewseg.preprocess import Preprocessing
from fewseg.registry import MODELS

FORMAT = 1      # bump when the layout changes; older formats stay readable
KIND = "adapted"


class AdaptedParts(NamedTuple):
    """What an adapted-model directory holds, checked: the network with the adapted weights (on the CPU, frozen),
    its preprocessing, threshold, model config ``{"name", "options"}`` and the adaptation record."""

    network: nn.Module
    preprocessing: Preprocessing
    threshold: float
    model: dict
    info: dict


def save_adapted(adapted, path: str | Path) -> Path:
    """Write ``adapted`` (an :class:`~fewseg.segmenter.AdaptedSegmenter`) to the directory ``path``."""
    path = Path(path)
    meta = {"kind": KIND, "format": FORMAT, "model": adapted.model_config,
            "preprocessing": adapted.preprocessing.to_dict(), "threshold": adapted.threshold,
            "adaptation": adapted.info}
    save_checkpoint(path, dict(adapted.network.state_dict()), meta)
    return path


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt adapted-model metadata {path / META} ({str(exc)[:200]})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        hint = " (a meta-training checkpoint: adapt it first, `fewseg adapt ... --save-adapted PATH`)" \
            if kind == "meta" else ""
        raise CheckpointError(f"{path} is not an adapted model (kind={kind!r}){hint}")
    fmt = meta.get("format")
    if not isinstance(fmt, int) or fmt < 1 or fmt > FORMAT:
        saved_by = meta.get("versions", {}).get("fewseg", "?")
        raise CheckpointError(f"adapted model {path} has format {fmt!r} (written by fewseg {saved_by}); "
                              f"this fewseg reads formats 1-{FORMAT}: upgrade fewseg")
    for key in ("model", "preprocessing", "threshold"):
        if key not in meta:
            raise CheckpointError(f"adapted model {path / META} lacks the key {key!r}")
    if not isinstance(meta["model"], dict) or "name" not in meta["model"]:
        raise CheckpointError(f"adapted model {path / META}: 'model' must name the network")
    return meta


def read_adapted(path: str | Path) -> AdaptedParts:
    """The parts of the adapted model saved at ``path`` (:class:`AdaptedParts`); one-line CheckpointError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no adapted model at {path} (expected a directory with {WEIGHTS} and {META})")
    if (path / "checkpoints").is_dir():
        raise CheckpointError(f"{path} is a training run, not an adapted model: adapt it first "
                              f"(fewseg adapt --checkpoint {path} --support DIR --save-adapted PATH)")
    for required in (path / WEIGHTS, path / META):
        if not required.is_file():
            raise CheckpointError(f"adapted model {path} is incomplete: missing {required.name}")
    meta = _read_meta(path)
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except Exception as exc:  # noqa: BLE001  (any parse failure -> CheckpointError)
        raise CheckpointError(f"corrupt adapted-model weights {path / WEIGHTS} ({type(exc).__name__})") from None
    verify_files(path, meta, (WEIGHTS,), what="adapted model")
    name, options = meta["model"]["name"], dict(meta["model"].get("options") or {})
    if name not in MODELS.names():
        raise CheckpointError(f"adapted model {path} uses network {name!r}, unknown to this fewseg "
                              f"(known: {', '.join(MODELS.names())})")
    try:
        network = MODELS.create(name, **weights_free_options(name, options))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"adapted model {path}: cannot build {name!r} with {options}: {exc}") from None
    expected = network.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"adapted model {path} does not fit network {name!r}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    network.load_state_dict(tensors)
    for p in network.parameters():
        p.requires_grad_(False)
    if not isinstance(meta["preprocessing"], dict):
        raise CheckpointError(f"adapted model {path / META}: 'preprocessing' must be a mapping")
    prep = Preprocessing.from_dict(meta["preprocessing"])
    problem = input_size_problem(lambda: MODELS.create(name, **weights_free_options(name, options)), prep.channels,
                                 prep.image_size)
    if problem is not None:
        raise CheckpointError(f"adapted model {path / META}: 'preprocessing.image_size' {prep.image_size} does not "
                              f"fit its network {name!r}: {problem}")
    threshold = meta["threshold"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 < threshold < 1.0:
        raise CheckpointError(f"adapted model {path}: threshold {threshold!r} is not a number in (0, 1)")
    info = {**dict(meta.get("adaptation") or {}), "versions": meta.get("versions", {})}
    return AdaptedParts(network, prep, float(threshold), meta["model"], info)
