"""Exceptions with one clear line of message, caught by the CLI."""


class FewsegError(Exception):
    """Base class: the CLI prints ``fewseg: <message>`` and exits 2, no traceback."""


class DataError(FewsegError, ValueError):
    """Bad input data: a corrupt or missing image, a bad mask, a class with too few images."""


class ConfigError(FewsegError, ValueError):
    """A bad config key or value."""


class CheckpointError(FewsegError, ValueError):
    """A missing, corrupt or incompatible checkpoint."""


class TrainingError(FewsegError, RuntimeError):
    """Training cannot continue (e.g. a NaN or exploding meta-loss)."""
