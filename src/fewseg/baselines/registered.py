"""The baselines of ``fewseg evaluate`` and the demo, one registered factory each (``fewseg.list_baselines()``).

A factory takes a :class:`~fewseg.baselines.context.BaselineContext` and returns a
:class:`~fewseg.baselines.context.Method` (or None when the baseline does not apply to the model).
They run, and appear in the table, in the order registered here.

Example:
    >>> from fewseg.registry import BASELINES
    >>> BASELINES.names()
    ['zero-shot', 'random-init', 'random-init-long', 'transfer', 'prototype']
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from fewseg.baselines.context import BaselineContext, Method
from fewseg.baselines.finetune import FineTuneLearner
from fewseg.baselines.prototype import PrototypeLearner
from fewseg.engine.evaluator import MetaLearner
from fewseg.errors import ConfigError
from fewseg.registry import BASELINES


@BASELINES.register("zero-shot")
def zero_shot(ctx: BaselineContext) -> Method:
    """The meta-learned initialisation without any adaptation step."""
    return Method("zero-shot", "0 steps (meta-learned init)", MetaLearner(ctx.algo, steps=0))


@BASELINES.register("random-init")
def random_init(ctx: BaselineContext) -> Method:
    """A random initialisation fine-tuned with the meta-learned model's step count (rate chosen on val)."""
    return ctx.tuned("random-init", ctx.random_model())


@BASELINES.register("random-init-long")
def random_init_long(ctx: BaselineContext) -> Method:
    """The same random initialisation with ``eval.long_steps`` Adam steps."""
    long = ctx.cfg.eval.long_steps
    return Method("random-init-long", f"{long} Adam steps, lr 1e-3",
                  FineTuneLearner(ctx.random_model(), long, 1e-3, optimizer="adam"))


@BASELINES.register("transfer")
def transfer(ctx: BaselineContext) -> Method:
    """Conventional pre-training on the training classes, then fine-tuning (rate chosen on val)."""
    return ctx.tuned("transfer", ctx.transfer_model(), "pre-train + ")


@BASELINES.register("prototype")
def prototype(ctx: BaselineContext) -> Method | None:
    """Masked average pooling + cosine similarity on the transfer network's features (no gradient steps)."""
    model = ctx.transfer_model()
    if not hasattr(model, "features"):
        ctx.log("prototype: skipped, the model has no features() method")
        return None
    return Method("prototype", "0 steps (MAP + cosine, transfer encoder)", PrototypeLearner(copy.deepcopy(model).features))


def check_baselines(names: Iterable[str]) -> list[str]:
    """``names`` in registration order; an unknown name is a one-line :class:`ConfigError` listing the choices."""
    names = list(names)
    for name in names:
        if name not in BASELINES.names():
            raise ConfigError(f"unknown baseline {name!r}; choose from: {', '.join(BASELINES.names())}")
    return [n for n in BASELINES.names() if n in names]
