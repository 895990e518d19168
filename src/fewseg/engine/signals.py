"""Signals around work that must not be cut in half: Ctrl-C (SIGINT) and SIGTERM held back during a block
(:func:`delay_keyboard_interrupt`), or SIGTERM turned into an exception handled like Ctrl-C
(:func:`sigterm_as_interrupt`). Used by checkpoint writes, the training loop and the CLI.

Example:
    >>> from fewseg.engine.signals import delay_keyboard_interrupt
    >>> with delay_keyboard_interrupt():
    ...     pass  # a step that must not be cut in half
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from fewseg.errors import Terminated

__all__ = ["delay_keyboard_interrupt", "sigterm_as_interrupt"]

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def delay_keyboard_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) and SIGTERM until the block ends, then deliver them.

    While the block runs, both signals are only recorded. Afterwards the previous handlers are restored and
    each signal that arrived is delivered to its previous handler (Python's default SIGINT handler raises
    ``KeyboardInterrupt``, as does SIG_DFL; SIG_DFL for SIGTERM terminates the process as the signal would
    have; SIG_IGN drops it). If the block itself raises, that exception propagates instead. Signal handlers
    can only be set in the main thread: elsewhere this does nothing.

    Example:
        >>> from fewseg.engine.signals import delay_keyboard_interrupt
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
