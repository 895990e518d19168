"""Small pieces of a training run: the outer rate's schedule, the output folder's check, reading log lines."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from fewseg.config import Config
from fewseg.errors import ConfigError


def outer_lr_at(cfg: Config, iteration: int) -> float:
    """Outer learning rate at ``iteration``: constant, or cosine annealed to 1% of the base rate."""
    base = cfg.train.outer_lr
    if cfg.train.schedule == "cosine" and cfg.train.iterations > 0:
        progress = min(iteration / cfg.train.iterations, 1.0)
        return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    return base


def check_writable(out: Path) -> None:
    """The run directory exists (or can be made) and takes files, else a one-line :class:`ConfigError`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fewseg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"config key 'output': cannot write into {out} ({exc.strerror or exc})") from None


def log_iteration(line: str) -> int | None:
    """The iteration of one log.jsonl line; None for a line cut short by a crash (or otherwise unreadable)."""
    try:
        value = json.loads(line).get("iteration")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
