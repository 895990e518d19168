"""The allowed values of every enumerated setting, in one place (configs, algorithms and the sampler read them).

Example:
    >>> from fewseg.choices import STRATEGIES
    >>> STRATEGIES
    ('auto', 'loop', 'vmap')
"""
from __future__ import annotations

STRATEGIES = ("auto", "loop", "vmap")                      # algorithm.strategy: how tasks run in a meta-step
TASK_WEIGHTINGS = ("uniform", "hard", "class-frequency")   # algorithm.options.task_weighting
BATCHNORM_POLICIES = ("error", "frozen-stats", "batch-stats", "group-norm")  # algorithm.options.batchnorm
INNER_OPTIMIZERS = ("sgd", "adam")                         # reptile's algorithm.options.inner_optimizer
SCHEDULES = ("constant", "cosine")                         # train.schedule
OUTER_OPTIMIZERS = ("adam", "sgd")                         # train.outer_optimizer
CLASS_SAMPLING = ("uniform", "images")                     # train.class_sampling
AUTOCAST = ("none", "bf16")                                # train.autocast
