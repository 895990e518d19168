"""The baselines of ``fewseg evaluate`` and the demo, one registered factory each (``fewseg.list_baselines()``).

A factory takes a :class:`~fewseg.baselines.context.BaselineContext` and returns a
:class:`~fewseg.baselines.context.Method` (or None when the baseline does not apply to the model).
They run, and appear in the table, in the order registered here.

Example:
    >>> from fewseg.registry import BASELINES
    >>> BASELINES.names()
    ['zero-shot', 'random-init', 'random-init-long', 'transfer', 'prototype', 'imagenet-prototype', 'linear-probe']
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from fewseg.baselines.context import BaselineContext, Method
from fewseg.baselines.finetune import FineTuneLearner, PerShotLearner
from fewseg.baselines.probe import frozen_features, probe_algorithm, select_probe_schedule
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
    """The same random initialisation with ``eval.long_steps`` Adam steps (on the first ``eval.long_episodes`` test
    episodes of each shot count when set: the table's CI shows the precision)."""
    e = ctx.cfg.eval
    episodes = e.long_episodes or None
    return Method("random-init-long", f"{e.long_steps} Adam steps, lr 1e-3"
                  + (f", first {episodes} episodes" if episodes else ""),
                  FineTuneLearner(ctx.random_model(), e.long_steps, 1e-3, optimizer="adam",
                                  loss=ctx.cfg.algorithm.loss, episode_batch=e.batch_episodes), episodes)


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


@BASELINES.register("imagenet-prototype")
def imagenet_prototype(ctx: BaselineContext) -> Method | None:
    """Masked average pooling + cosine on frozen ImageNet EfficientNet-Lite features: no training at all."""
    variant = ctx.packaged_variant()
    if variant is None:
        return None
    features = frozen_features(variant, ctx.in_channels, ctx.device)
    return Method("imagenet-prototype", f"0 steps (MAP + cosine, frozen ImageNet {variant.split('_')[-1]})",
                  PrototypeLearner(features))


@BASELINES.register("linear-probe")
def linear_probe(ctx: BaselineContext) -> Method | None:
    """Logistic regression on frozen ImageNet EfficientNet-Lite features per episode (Adam; steps and rate
    chosen on validation classes, per shot count with ``eval.tune``)."""
    variant = ctx.packaged_variant()
    if variant is None:
        return None
    algo = probe_algorithm(variant, loss=ctx.cfg.algorithm.loss, in_channels=ctx.in_channels).to(ctx.device)
    learners, parts = {}, []
    for shots in ctx.shots if ctx.per_shot else (ctx.cfg.train.shots,):
        episodes = ctx.val_episodes(shots)
        steps, lr = algo.inner_steps, algo.inner_lr
        if episodes:
            steps, lr, score = select_probe_schedule(algo, episodes, ctx.cfg.eval.probe_steps,
                                                     ctx.cfg.eval.probe_rates, device=ctx.device,
                                                     threshold=ctx.cfg.eval.threshold)
            ctx.log(f"linear-probe, {shots}-shot: {steps} Adam steps at rate {lr:g} chosen on validation classes "
                    f"(val mIoU {100 * score:.1f})")
        learners[shots] = MetaLearner(algo, steps=steps, lr=lr)
        parts.append(f"{shots}-shot {steps} steps lr {lr:g}")
    learner = PerShotLearner(learners) if ctx.per_shot else next(iter(learners.values()))
    return Method("linear-probe", f"Adam on frozen ImageNet {variant.split('_')[-1]}, chosen on val: "
                  f"{'; '.join(parts)}", learner)


def check_baselines(names: Iterable[str]) -> list[str]:
    """``names`` in registration order; an unknown name is a one-line :class:`ConfigError` listing the choices."""
    names = list(names)
    for name in names:
        if name not in BASELINES.names():
            raise ConfigError(f"unknown baseline {name!r}; choose from: {', '.join(BASELINES.names())}")
    return [n for n in BASELINES.names() if n in names]
