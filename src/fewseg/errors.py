"""Exceptions with one clear line of message, caught by the CLI."""


class FewsegError(Exception):
    """Base class: the CLI prints ``fewseg: <message>`` and exits 2, no traceback."""


class DataError(FewsegError, ValueError):
    """Bad input data: a corrupt or missing image, a bad mask, a class with too few images."""


class ConfigError(FewsegError, ValueError):
    """A bad config key or value."""


class CheckpointError(FewsegError, ValueError):
    """A missing, corrupt or incompatible checkpoint."""


class WeightsError(FewsegError, ValueError):
    """Pretrained weights that cannot be found, read safely, downloaded or fitted to the model."""


class MissingDependency(FewsegError, ImportError):
    """An optional dependency (a fewseg extra, e.g. ``fewseg[timm]``) is not installed or does not import."""


class TrainingError(FewsegError, RuntimeError):
    """Training cannot continue (e.g. a NaN or exploding meta-loss)."""


class Interrupted(TrainingError):
    """Training stopped by Ctrl-C (SIGINT) or SIGTERM after writing ``checkpoints/last``.

    ``signal_name`` is ``"SIGINT"`` or ``"SIGTERM"``; the CLI exits 130 after Ctrl-C and 0 after SIGTERM
    (a preempted job whose state is saved), so a scheduler can requeue it with ``--resume``.
    """

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (while fewseg's handler is installed), handled like Ctrl-C."""
