"""Baselines evaluated beside the meta-learned initialisation, on the same episodes.

- ``FineTuneLearner``: any initial weights + N optimiser steps on the support set (random init, transfer).
- ``pretrain_transfer``: conventional mini-batch training on all train classes' masks.
- ``PrototypeLearner``: masked average pooling + cosine similarity (PANet-style), no gradient steps.
"""
from fewseg.baselines.finetune import FineTuneLearner
from fewseg.baselines.prototype import PrototypeLearner
from fewseg.baselines.transfer import pretrain_transfer

__all__ = ["FineTuneLearner", "PrototypeLearner", "pretrain_transfer"]
