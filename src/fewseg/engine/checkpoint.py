"""Atomic, code-free checkpoints: a directory holding

    weights.safetensors   the tensors (safetensors: no pickle, no code)
    meta.json             the caller's JSON-able metadata (config, iteration, ...) plus
                          ``{"versions": {"fewseg", "torch", "python"}}``
    optimizer.pt          optional: optimizer state (and any other plain tensor/number/string dict),
                          read back with ``torch.load(weights_only=True)``

One module: saving, the interrupt guard around its renames and loading (with its fallback to the moved-aside
copy) are one crash protocol over the same ``.tmp-<pid>``/``.old-<pid>`` names.

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
import math
import os
import platform
import re
import reprlib
import shutil
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fewseg._version import __version__
from fewseg.errors import CheckpointError, Terminated

__all__ = [
    "META",
    "OPTIMIZER",
    "WEIGHTS",
    "Checkpoint",
    "delay_keyboard_interrupt",
    "load_checkpoint",
    "save_checkpoint",
    "sigterm_as_interrupt",
]

WEIGHTS = "weights.safetensors"
META = "meta.json"
OPTIMIZER = "optimizer.pt"
_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


# --- Ctrl-C --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def delay_keyboard_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) and SIGTERM until the block ends, then deliver them.

    While the block runs, both signals are only recorded. Afterwards the previous handlers are restored and
    each signal that arrived is delivered to its previous handler (Python's default SIGINT handler raises
    ``KeyboardInterrupt``, as does SIG_DFL; SIG_DFL for SIGTERM terminates the process as the signal would
    have; SIG_IGN drops it). If the block itself raises, that exception propagates instead. Signal handlers
    can only be set in the main thread: elsewhere this does nothing.

    Example:
        >>> from fewseg.engine.checkpoint import delay_keyboard_interrupt
        >>> with delay_keyboard_interrupt():
        ...     pass  # a step that must not be cut in half
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    previous = {signum: signal.getsignal(signum) for signum in _HELD_SIGNALS}
    for signum in _HELD_SIGNALS:
        signal.signal(signum, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    delivered: set[int] = set()
    for signum, frame in received:
        if signum in delivered:
            continue
        delivered.add(signum)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_IGN:
            continue
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # SIG_DFL of SIGTERM: end the process as the signal would have
            signal.raise_signal(signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`~fewseg.errors.Terminated` (a ``KeyboardInterrupt``), so the
    Ctrl-C paths (finish the checkpoint write, save the resume point, exit) also serve SLURM, Kubernetes and
    ``timeout``. The previous handler is restored afterwards; off the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"received signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


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
    meta_text = json.dumps({**meta, "versions": _versions()}, indent=2)
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
        with open(tmp / META, "w", encoding="utf-8") as f:
            f.write(meta_text)
            f.flush()
            os.fsync(f.fileno())
        if optimizer_state is not None:
            with open(tmp / OPTIMIZER, "wb") as f:
                torch.save(optimizer_state, f)
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


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, without executing any stored code.

    Raises :class:`~fewseg.errors.CheckpointError` with a one-line message naming the path or file
    when the directory or a required file is missing, or a file is corrupt or holds anything but plain
    data (a pickle referring to code is refused, never run).

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
    return Checkpoint(tensors=tensors, meta=meta, optimizer_state=optimizer_state, path=path)
