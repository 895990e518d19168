"""Atomic, code-free checkpoints: a directory holding

    weights.safetensors   the tensors (safetensors: no pickle, no code)
    meta.json             the caller's JSON-able metadata (config, iteration, ...) plus
                          ``{"versions": {"fewseg", "torch", "python"}}`` and ``"integrity"``: the SHA-256
                          of each other file and the metadata values they describe (:mod:`.integrity`)
    optimizer.pt          optional: optimizer state (and any other plain tensor/number/string dict),
                          read back with ``torch.load(weights_only=True)``

One module: saving, its renames (inside :func:`~fewseg.engine.signals.delay_keyboard_interrupt`) and loading
(with its fallback to the moved-aside copy) are one crash protocol over the same ``.tmp-<pid>``/``.old-<pid>``
names. Loading checks each file against the SHA-256 recorded at saving; a checkpoint from before that record
loads with a warning.

A save writes everything into a sibling ``<dir>.tmp-<pid>`` and fsyncs it; then, inside
:func:`delay_keyboard_interrupt`, it moves an existing ``<dir>`` aside to ``<dir>.old-<pid>``, renames the
new directory into place and deletes the old one. A crash at any point leaves either the old or the new
checkpoint complete, and :func:`load_checkpoint` falls back to ``<dir>.old-*`` when ``<dir>`` itself is
missing (a crash between the two renames). Loading never executes stored code.

Example:
    >>> import tempfile, torch
    >>> from fewseg.engine.checkpoint import load_checkpoint, save_checkpoint
    >>> d = tempfile.mkdtemp() + "/last"
    >>> save_checkpoint(d, {"w": torch.zeros(2)}, {"iteration": 3})
    >>> ckpt = load_checkpoint(d)
    >>> ckpt.meta["iteration"], ckpt.tensors["w"].tolist(), ckpt.optimizer_state
    (3, [0.0, 0.0], None)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fewseg._version import __version__
from fewseg.engine.integrity import (
    INTEGRITY,
    check_meta,
    check_training_state,
    integrity_record,
    verify_files,
)
from fewseg.engine.signals import delay_keyboard_interrupt, sigterm_as_interrupt
from fewseg.errors import CheckpointError

__all__ = [
    "META",
    "OPTIMIZER",
    "WEIGHTS",
    "Checkpoint",
    "check_meta",
    "delay_keyboard_interrupt",
    "load_checkpoint",
    "save_checkpoint",
    "sigterm_as_interrupt",
]

WEIGHTS = "weights.safetensors"
META = "meta.json"
OPTIMIZER = "optimizer.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    ``tensors``: name -> CPU tensor; ``meta``: the JSON metadata (with ``"versions"``);
    ``optimizer_state``: the dict given to :func:`save_checkpoint` as ``optimizer_state``, or None;
    ``path``: the directory actually read (``<dir>.old-<pid>`` after a recovered crash).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    optimizer_state: dict[str, Any] | None = None
    path: Path = field(default_factory=Path)


# --- saving ---------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:

    return {"fewseg": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _prepare_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, each owning its whole storage (safetensors refuses shared ones)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint tensors must be a dict of str -> Tensor (bad entry {name!r})")
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
            storage = t.untyped_storage()
        if t.numel() > 0:
            seen.add(storage.data_ptr())
        out[name] = t
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours
        return True
    return True


def save_checkpoint(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict,
                    optimizer_state: dict | None = None) -> None:
    """Write a checkpoint directory atomically (layout and crash guarantees: module docstring).

    Args:
        directory: the checkpoint directory; replaced as a whole if it exists.
        tensors: name -> tensor (any device/dtype; saved detached, contiguous, on CPU).
        meta: JSON-serialisable metadata; a ``"versions"`` entry is added (overwriting one given).
        optimizer_state: optional dict of what ``torch.load(weights_only=True)`` accepts (tensors,
            containers, numbers, strings): ``optimizer.state_dict()`` and ``Generator.get_state()`` do.

    Raises ``TypeError``/``ValueError`` for a bad argument before anything is written.

    Example:
        >>> import os, tempfile, torch
        >>> from fewseg.engine.checkpoint import save_checkpoint
        >>> model = torch.nn.Linear(2, 1); opt = torch.optim.Adam(model.parameters())
        >>> d = tempfile.mkdtemp() + "/ckpt"
        >>> save_checkpoint(d, model.state_dict(), {"iteration": 0}, {"optimizer": opt.state_dict()})
        >>> sorted(os.listdir(d))
        ['meta.json', 'optimizer.pt', 'weights.safetensors']
    """
    final = Path(directory)
    # serialise what can fail before touching the disk
    tensors = _prepare_tensors(tensors)
    meta = {k: v for k, v in meta.items() if k != INTEGRITY}
    meta["versions"] = _versions()
    json.dumps(meta)
    final.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    tmp = final.with_name(f"{final.name}.tmp-{pid}")
    old = final.with_name(f"{final.name}.old-{pid}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS))
        _fsync_file(tmp / WEIGHTS)
        if optimizer_state is not None:
            with open(tmp / OPTIMIZER, "wb") as f:
                torch.save(optimizer_state, f)
                f.flush()
                os.fsync(f.fileno())
        meta[INTEGRITY] = integrity_record(tmp, (WEIGHTS, OPTIMIZER), meta)  # of the bytes on disk
        with open(tmp / META, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=2))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    with delay_keyboard_interrupt():
        moved_aside = False
        try:
            if final.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.rename(final, old)
                moved_aside = True
            os.replace(tmp, final)
        except BaseException:
            # put the previous checkpoint back if the new one did not make it into place
            if moved_aside and not final.exists() and old.exists():
                with contextlib.suppress(OSError):
                    os.rename(old, final)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    # leftovers of crashed saves: superseded copies and unfinished temp dirs of dead processes
    for stale in final.parent.glob(f"{final.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        if not _pid_alive(_pid_of(stale)):
            shutil.rmtree(stale, ignore_errors=True)


# --- loading --------------------------------------------------------------------------------------------
def _resolve(directory: Path) -> Path:
    if directory.is_dir():
        return directory
    # a crash between moving the old checkpoint aside and renaming the new one into place
    candidates = [p for p in directory.parent.glob(f"{directory.name}.old-*")
                  if (p / WEIGHTS).is_file() and (p / META).is_file()]
    if candidates:
        return max(candidates, key=lambda p: p.stat().st_mtime)
    if directory.exists():
        raise CheckpointError(f"checkpoint {directory} is not a directory")
    raise CheckpointError(f"no checkpoint at {directory}")


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].strip()}" if text else type(exc).__name__


def _torch_load_reason(exc: BaseException) -> str:
    """The useful part of torch.load(weights_only=True)'s long multi-line error, without its advice to
    retry with ``weights_only=False`` (which would run the file's code)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if code:
        return f"it refers to code ({code.group(1)}), which fewseg never loads or runs"
    opcode = re.search(r"Unsupported operand (\d+)", text)
    if opcode:
        return f"it is not a plain-data pickle (pickle opcode {opcode.group(1)} is refused)"
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if detail:
        return f"not plain data: {detail.group(1).strip()}"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _check_tensors(tensors: dict[str, torch.Tensor], weights: Path) -> None:
    """Refuse weights holding NaN or infinite values (a diverged or tampered file), naming the tensor."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint weights {weights} hold NaN or infinite values (tensor {name!r}); "
                                  "refusing them rather than predicting empty masks")


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, without executing any stored code.

    Raises :class:`~fewseg.errors.CheckpointError` with a one-line message naming the path or file
    when the directory or a required file is missing, or a file is corrupt or holds anything but plain
    data (a pickle referring to code is refused, never run), does not match the SHA-256 recorded in
    ``meta.json``, or a recorded metadata value was edited (:func:`~fewseg.engine.integrity.verify_files`).
    A checkpoint written before that record existed loads with a warning.

    Example:
        >>> import tempfile, torch
        >>> from fewseg.engine.checkpoint import load_checkpoint, save_checkpoint
        >>> d = tempfile.mkdtemp() + "/ckpt"
        >>> save_checkpoint(d, {"w": torch.ones(1)}, {"iteration": 1}, {"step": 1})
        >>> load_checkpoint(d).optimizer_state
        {'step': 1}
    """
    path = _resolve(Path(directory))
    weights, meta_file, opt_file = path / WEIGHTS, path / META, path / OPTIMIZER
    for required in (weights, meta_file):
        if not required.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {required}")
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as exc:  # noqa: BLE001  (any parse failure -> CheckpointError)
        raise CheckpointError(f"corrupt checkpoint weights {weights} ({_first_line(exc)})") from None
    _check_tensors(tensors, weights)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001  (any parse failure -> CheckpointError)
        raise CheckpointError(f"corrupt checkpoint metadata {meta_file} ({_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"corrupt checkpoint metadata {meta_file} (not a JSON object)")
    if meta.get("kind") == "meta":
        check_meta(meta, meta_file)
    optimizer_state = None
    if opt_file.exists():
        try:
            with warnings.catch_warnings():  # torch's multi-line warning about a foreign pickle protocol
                warnings.simplefilter("ignore")
                optimizer_state = torch.load(opt_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (any parse failure -> CheckpointError)
            raise CheckpointError(f"unreadable or unsafe checkpoint file {opt_file} "
                                  f"({_torch_load_reason(exc)})") from None
    verify_files(path, meta, (WEIGHTS, OPTIMIZER))
    if meta.get("kind") == "meta" and optimizer_state is not None:
        check_training_state(meta, optimizer_state, tensors, meta_file, opt_file)
    return Checkpoint(tensors=tensors, meta=meta, optimizer_state=optimizer_state, path=path)
