"""Checks of the CLI's arguments that run before any work: the argparse type of ``--port`` and the
checks of ``fewseg adapt`` / ``fewseg predict`` (every path they name, the images to segment collected and what
was left out reported), so that a bad argument is one line and exit 2 before a model is loaded or adapted.

Example:
    >>> port_arg("0"), port_arg("65535")
    (0, 65535)
    >>> port_arg("99999")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: a port is 0-65535 (0: any free port), got 99999
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from fewseg.errors import ConfigError, DataError

MAX_PORT = 65535


def port_arg(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is 0-{MAX_PORT} (0: any free port), got {value}")
    return value


port_arg.__name__ = "port"


def warn(line: str) -> None:
    print(f"fewseg: warning: {line}", file=sys.stderr)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within the block every Python warning is one line on stderr, ``fewseg: warning: <message>``."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: warn(str(message))
        yield


def check_train_args(args) -> None:
    """``--resume`` continues a run with the config stored in it: a ``--config`` beside it would be ignored."""
    if args.resume and args.config is not None:
        raise ConfigError(f"--resume {args.resume} continues that run with the config stored in it, so --config "
                          f"{args.config} would be ignored: leave --config out (change settings with overrides, e.g. "
                          f"`fewseg train --resume {args.resume} train.iterations=600`)")


def _check_outputs(args) -> None:
    """``--threshold``, ``--masks``, ``--output`` and the images to segment (collected into ``args.images``, a
    list of files)."""
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:  # also NaN
        raise DataError(f"--threshold: threshold must lie strictly between 0 and 1, got {args.threshold}")
    if args.masks is not None and not Path(args.masks).is_dir():
        raise DataError(f"--masks: masks folder {args.masks} does not exist")
    if args.output is not None and Path(args.output).exists() and not Path(args.output).is_dir():
        raise DataError(f"--output {args.output} is a file: give a folder (created if missing)")
    if args.images is not None:
        from fewseg.image_files import collect_images
        found = collect_images(args.images, recursive=args.recursive)
        for line in found.report():
            warn(line)
        args.images = found.paths


def check_adapt_args(args) -> None:
    """Every argument of ``fewseg adapt``, before the model is loaded: something to do, the checkpoint, the support
    folder and its masks, the images to segment, ``--masks``, ``--output`` and ``--save-adapted``."""
    from fewseg.engine.session import find_support_pairs
    from fewseg.loading import resolve_checkpoint
    from fewseg.ready import is_ready_name
    if args.images is None and args.save_adapted is None:
        raise DataError("nothing to do: give --images FILES --output OUT to segment, or --save-adapted PATH")
    if args.images is not None and args.output is None:
        raise DataError("--images needs --output OUT (where masks and overlays are written)")
    if args.images is None and args.output is not None:
        warn(f"--output {args.output} is not used without --images (the images to segment)")
    if not is_ready_name(args.checkpoint):
        resolve_checkpoint(args.checkpoint)
    find_support_pairs(Path(args.support))
    if args.save_adapted is not None:
        target = Path(args.save_adapted)
        if target.exists() and not target.is_dir():
            raise DataError(f"--save-adapted {target} is a file: give a new folder name")
        if target.is_dir() and any(target.iterdir()) and not (target / "meta.json").is_file():
            raise DataError(f"--save-adapted {target} is a folder holding other files, which saving would replace: "
                            "give a new folder name")
    _check_outputs(args)


def check_predict_args(args) -> None:
    """Every argument of ``fewseg predict``, before the adapted model is loaded."""
    if not Path(args.adapted).is_dir():
        from fewseg.errors import CheckpointError
        raise CheckpointError(f"no adapted model at {args.adapted} (expected a directory with weights.safetensors "
                              "and meta.json)")
    _check_outputs(args)


# --- argument types -----------------------------------------------------------------------------------------
def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int, count_int = int_at_least(1), int_at_least(0)


def seed_int(text: str) -> int:
    from fewseg.config import MAX_SEED
    value = count_int(text)
    if value > MAX_SEED - 1:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_SEED - 1}, got {value}")
    return value
