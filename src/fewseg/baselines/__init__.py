"""Baselines evaluated beside the meta-learned initialisation, on the same episodes.

- ``FineTuneLearner``: any initial weights + N optimiser steps on the support set (random init, transfer).
- ``pretrain_transfer``: conventional mini-batch training on all train classes' masks.
- ``PrototypeLearner``: masked average pooling + cosine similarity (PANet-style), no gradient steps.
- :mod:`fewseg.baselines.registered`: the named baselines of the protocol (the ``BASELINES`` registry),
  each a factory of a :class:`Method` from a :class:`BaselineContext`.
"""
from fewseg.baselines.context import BaselineContext, Method
from fewseg.baselines.finetune import FineTuneLearner
from fewseg.baselines.prototype import PrototypeLearner
from fewseg.baselines.registered import check_baselines  # registers the baselines
from fewseg.baselines.transfer import pretrain_transfer

__all__ = ["BaselineContext", "FineTuneLearner", "Method", "PrototypeLearner", "check_baselines", "pretrain_transfer"]
