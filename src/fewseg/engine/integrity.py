"""Checkpoint integrity: the SHA-256 record of each file beside ``meta.json``, and ``meta.json`` values checked
against the files they describe.

:func:`~fewseg.engine.checkpoint.save_checkpoint` adds to ``meta.json``::

    "integrity": {"sha256": {"weights.safetensors": "<64 hex>", "optimizer.pt": "<64 hex>"},
                  "describes": {"iteration": 12, "preprocessing.image_size": 48}}

``sha256`` holds the digest of every file written beside ``meta.json``; ``describes`` the values of
:data:`DESCRIBED` that the metadata held when those files were written. Loading (:func:`verify_files`) refuses,
in one line naming the file, a file whose bytes changed (flipped bits, a truncated copy, a file swapped in from
another checkpoint), a recorded file that is gone, or a described value edited since. This detects corruption and
edits, not forgery: the record is not signed. A checkpoint written before the record existed still loads, with a
warning that its files were not verified.

:func:`check_training_state` checks what can be checked without any record: the ``iteration`` of a meta-training
checkpoint against the steps its optimiser state has taken, and the shape of that state against the weights.

Example:
    >>> import json, tempfile, torch
    >>> from pathlib import Path
    >>> from fewseg.engine.checkpoint import save_checkpoint, load_checkpoint
    >>> d = Path(tempfile.mkdtemp()) / "ck"
    >>> save_checkpoint(d, {"w": torch.zeros(2)}, {"iteration": 3})
    >>> record = json.loads((d / "meta.json").read_text())["integrity"]
    >>> sorted(record["sha256"]), record["describes"]
    (['weights.safetensors'], {'iteration': 3})
    >>> _ = (d / "weights.safetensors").write_bytes((d / "weights.safetensors").read_bytes()[:-1] + b"\\x01")
    >>> load_checkpoint(d)
    Traceback (most recent call last):
    ...
    fewseg.errors.CheckpointError: .../weights.safetensors does not match the SHA-256 recorded in .../meta.json ...
"""
from __future__ import annotations

import hashlib
import math
import re
import reprlib
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from fewseg.errors import CheckpointError

__all__ = ["DESCRIBED", "INTEGRITY", "check_meta", "check_training_state", "file_sha256", "input_size_problem",
           "integrity_record", "verify_files"]

INTEGRITY = "integrity"
DESCRIBED = ("iteration", "preprocessing.image_size")  # meta.json values bound to the files they describe
_HEX = re.compile(r"[0-9a-f]{64}")
_MISSING = object()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits (read in 1 MB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _lookup(meta: dict, dotted: str) -> Any:
    value: Any = meta
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def integrity_record(directory: Path, names: Iterable[str], meta: dict) -> dict:
    """The ``integrity`` entry for the files ``names`` of ``directory`` (those that exist) and ``meta``."""
    hashes = {name: file_sha256(directory / name) for name in names if (directory / name).is_file()}
    described = {key: value for key in DESCRIBED if (value := _lookup(meta, key)) is not _MISSING}
    return {"sha256": hashes, "describes": described}


def verify_files(directory: Path, meta: dict, names: Iterable[str], meta_name: str = "meta.json",
                 what: str = "checkpoint") -> bool:
    """Check the files ``names`` of ``directory`` and the described values of ``meta`` against ``meta``'s
    integrity record; a one-line :class:`CheckpointError` names the first that does not match. Without a record
    (a checkpoint written before fewseg kept one), warn and return False; True once verified."""
    meta_file = directory / meta_name
    record = meta.get(INTEGRITY, _MISSING)
    if record is _MISSING:
        warnings.warn(f"{what} {directory} has no SHA-256 record of its files (saved before fewseg kept one): "
                      "loaded without verifying them", UserWarning, stacklevel=3)
        return False
    hashes = record.get("sha256") if isinstance(record, dict) else None
    described = record.get("describes", {}) if isinstance(record, dict) else None
    if not (isinstance(hashes, dict) and isinstance(described, dict)
            and all(isinstance(k, str) and isinstance(v, str) and _HEX.fullmatch(v) for k, v in hashes.items())):
        raise CheckpointError(f"{meta_file}: {INTEGRITY!r} must be {{sha256: {{file: 64 hex digits}}, describes: "
                              f"{{...}}}}, got {reprlib.repr(record)}")
    for name in names:
        path, expected = directory / name, hashes.get(name)
        if expected is None:
            if path.exists():
                raise CheckpointError(f"{path} is not in the SHA-256 record of {meta_file}: it was added after "
                                      f"the {what} was saved")
            continue
        if not path.is_file():
            raise CheckpointError(f"{what} {directory} is incomplete: {path} is recorded in {meta_file} but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(f"{path} does not match the SHA-256 recorded in {meta_file} (recorded "
                                  f"{expected[:12]}..., file {actual[:12]}...): the file changed after saving "
                                  "(corrupt, truncated or edited); refusing it")
    for key, saved in described.items():
        now = _lookup(meta, key)
        if now is _MISSING or now != saved or type(now) is not type(saved):
            shown = "missing" if now is _MISSING else reprlib.repr(now)
            raise CheckpointError(f"{meta_file}: {key!r} is {shown} but the files beside it were saved with "
                                  f"{reprlib.repr(saved)}: meta.json was edited after saving; refusing it")
    return True


# --- meta-training checkpoints --------------------------------------------------------------------------
def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_score(value: Any, optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and -1.0 <= value <= 1.0


def check_meta(meta: dict, meta_file: Path) -> None:
    """The fields of a meta-training checkpoint (``"kind": "meta"``) have the types fewseg writes, or a
    one-line :class:`CheckpointError` names the field: ``config`` a mapping, ``iteration`` an integer >= 0,
    ``best_val_miou``/``last_val_miou`` scores in [-1, 1] (or null), ``algorithm_state``/``preprocessing``
    mappings, ``pending`` null or a mapping."""
    def bad(key: str, want: str) -> CheckpointError:
        shown = reprlib.repr(meta.get(key))
        return CheckpointError(f"checkpoint metadata {meta_file}: {key!r} must be {want}, got {shown}")

    for key in ("config", "iteration"):
        if key not in meta:
            raise CheckpointError(f"checkpoint metadata {meta_file} has no {key!r}: not a complete "
                                  "meta-training checkpoint")
    if not isinstance(meta["config"], dict):
        raise bad("config", "a mapping")
    if not _is_count(meta["iteration"]):
        raise bad("iteration", "an integer >= 0")
    if "best_val_miou" in meta and not _is_score(meta["best_val_miou"]):
        raise bad("best_val_miou", "a number in [-1, 1]")
    if not _is_score(meta.get("last_val_miou"), optional=True):
        raise bad("last_val_miou", "a number in [-1, 1] or null")
    for key in ("algorithm_state", "preprocessing"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(key, "a mapping")
    pending = meta.get("pending")
    if pending is not None and not (isinstance(pending, dict) and isinstance(pending.get("record"), dict)
                                    and isinstance(pending.get("validate"), bool)
                                    and isinstance(pending.get("best"), bool)):
        raise bad("pending", "null or {record, validate, best}")


def _step_count(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def check_training_state(meta: dict, state: Any, tensors: dict[str, torch.Tensor], meta_file: Path,
                         state_file: Path) -> None:
    """The optimiser state saved beside a meta-training checkpoint fits its weights and its ``iteration``: one
    optimiser step per iteration (Adam's ``step`` counts; the most-stepped parameter's count is the iteration),
    the same state keys for every parameter, and each parameter's state tensors of one shape that the weights
    hold. A state of another layout is left to the trainer's own checks."""
    optimizer = state.get("optimizer") if isinstance(state, dict) else None
    entries = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(entries, dict) or not entries:
        return
    if not all(isinstance(e, dict) for e in entries.values()):
        raise CheckpointError(f"{state_file}: the optimiser state must map each parameter to a dict of tensors")
    keys = {frozenset(e) for e in entries.values()}
    if len(keys) > 1:
        a, b = sorted(keys, key=sorted)[:2]
        raise CheckpointError(f"{state_file}: the optimiser state is inconsistent (parameters hold {sorted(a)} and "
                              f"{sorted(b)}): corrupt or edited")
    shapes = {tuple(t.shape) for t in tensors.values()}
    for index, entry in entries.items():
        held = {k: tuple(v.shape) for k, v in entry.items() if isinstance(v, torch.Tensor) and k != "step"}
        if len(set(held.values())) > 1 or any(s not in shapes for s in held.values()):
            raise CheckpointError(f"{state_file}: the optimiser state of parameter {index} has shapes {held}, which "
                                  "no weight of the checkpoint has: corrupt or edited")
    steps = [s for e in entries.values() if (s := _step_count(e.get("step"))) is not None]
    iteration = meta.get("iteration")
    if steps and _is_count(iteration) and max(steps) != iteration:
        raise CheckpointError(f"{meta_file}: 'iteration' is {iteration} but the optimiser state beside it "
                              f"({state_file.name}) has taken {max(steps):g} steps, one per iteration: meta.json "
                              "or the optimiser state was edited")


# --- preprocessing ----------------------------------------------------------------------------------------
def input_size_problem(make_network: Callable[[], torch.nn.Module], channels: int, size: Any) -> str | None:
    """Why the network ``make_network()`` cannot take ``[1, channels, size, size]`` images, or None when it can:
    built and run on the meta device (no memory, no computation, no change to any random state), its output must
    be ``[1, 1, size, size]``. Sides above the config's limit are refused without building anything."""
    from fewseg.config import MAX_IMAGE_SIZE
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE:
        return f"an image side must be an integer in [1, {MAX_IMAGE_SIZE}]"
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            out = make_network()(torch.zeros(1, channels, size, size))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            text = str(exc).strip().splitlines()
            return text[0][:300] if text else type(exc).__name__
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 1, size, size):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"it maps a [1,{channels},{size},{size}] input to {shape}, not [1,1,{size},{size}]"
    return None
