"""Frozen ImageNet features, no meta-training: the linear probe and the frozen-feature prototype.

Both run on :class:`~fewseg.models.lite_unet.LiteProbe` (EfficientNet-Lite ImageNet features at strides 8 and 16,
L2-normalised, frozen):

- the **linear probe** (:func:`probe_algorithm`): per episode, a 1x1 logistic-regression head trained from zero
  with Adam on the support pixels, the features computed once. It is Reptile's inner loop with
  ``inner_optimizer="adam"`` and ``adapt_pattern="@head"`` on that model, so it adapts, saves, exports and serves
  like any fewseg model; ``fewseg.load("imagenet-lite0")`` is this learner (:mod:`fewseg.ready`).
- the **frozen-feature prototype**: masked average pooling + cosine on the same features
  (:class:`~fewseg.baselines.prototype.PrototypeLearner`), as PANet does, with no training at all.

Example (random weights; the baselines use ``pretrained="imagenet"``):
    >>> import torch
    >>> algo = probe_algorithm("efficientnet_lite0", pretrained=False, steps=3, lr=0.1)
    >>> x, y = torch.rand(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    >>> algo.adapt(x, y).predict(torch.rand(1, 3, 32, 32)).shape
    torch.Size([1, 1, 32, 32])
    >>> sorted(algo.adapt_names)
    ['head.bias', 'head.weight']
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from fewseg.config import EvalConfig
from fewseg.data.episode import Episode
from fewseg.metrics import IoUAccumulator, binary_stats
from fewseg.models.encoded import EncodeOnly
from fewseg.registry import ALGORITHMS, MODELS

# the default grid of the probe's schedule: config keys eval.probe_steps, eval.probe_rates
PROBE_STEPS, PROBE_RATES = tuple(EvalConfig().probe_steps), tuple(EvalConfig().probe_rates)
# the frozen baselines see the same query images for every shot count, schedule and rate: keep their features
BASELINE_CACHE_MB = 512


def probe_algorithm(encoder: str = "efficientnet_lite0", pretrained="imagenet", steps: int = 100,
                    lr: float = 0.03, loss: str = "balanced-bce", in_channels: int = 3):
    """The linear probe as a fewseg algorithm: Reptile (Adam inner loop) adapting only the head of a
    ``lite-probe`` model; ``steps`` and ``lr`` are its test-time schedule."""
    model = MODELS.create("lite-probe", encoder=encoder, pretrained=pretrained, in_channels=in_channels,
                          feature_cache=BASELINE_CACHE_MB)
    return ALGORITHMS.create("reptile", model, inner_optimizer="adam", inner_steps=steps, inner_lr=lr,
                             loss=loss, adapt_pattern="@head").eval()


def select_probe_schedule(algo, episodes: Sequence[Episode], steps_grid=PROBE_STEPS, rates=PROBE_RATES,
                          device="cpu", threshold: float = 0.5) -> tuple[int, float, float]:
    """(steps, rate, val mIoU) of the probe schedule with the best mIoU on ``episodes`` (validation classes): one
    run per episode and rate to the grid's largest step count, scored after every step of the grid (ties: fewer
    steps, then the smaller rate)."""
    grid = sorted({int(k) for k in steps_grid if k > 0})
    accs: dict[tuple[int, float], IoUAccumulator] = {}
    for lr in rates:
        for ep in episodes:
            ep = ep.to(device)
            with torch.no_grad():  # the frozen encoder's query features, once per episode and rate
                query = algo.model(EncodeOnly(ep.query_x))

            def score(k, adapted, ep=ep, lr=lr, query=query):
                if k in grid:
                    with torch.no_grad():
                        probs = torch.sigmoid(adapted.forward(adapted.params, query))
                        stats = binary_stats(probs > threshold, ep.query_y, ep.query_ignore)
                    accs.setdefault((k, lr), IoUAccumulator()).update(ep.class_id, stats)
            algo.adapt_run(ep.support_x, ep.support_y, ep.support_ignore, max(grid), lr=lr, on_step=score)
    scores = {key: acc.summary()["miou"] for key, acc in accs.items()}
    steps, lr = max(scores, key=lambda c: (scores[c], -c[0], -c[1]))
    return steps, lr, scores[(steps, lr)]


def frozen_features(encoder: str = "efficientnet_lite0", in_channels: int = 3, device="cpu"):
    """The frozen ImageNet feature extractor ([N,C,H,W] images in [0,1] -> [N,D,H/8,W/8]) of the prototype."""
    model = MODELS.create("lite-probe", encoder=encoder, pretrained="imagenet", in_channels=in_channels,
                          feature_cache=BASELINE_CACHE_MB)
    return model.to(device).eval().features


def packaged_encoder(model_name: str, options: dict) -> str:
    """The EfficientNet-Lite variant whose ImageNet features the frozen baselines use for a run's model: the run's
    own Lite encoder (``lite-unet``, ``lite-probe``, timm's ``tf_efficientnet_lite*``), else Lite0."""
    from fewseg.models.efficientnet_lite import VARIANTS
    encoder = str(options.get("encoder", "efficientnet_lite0")).removeprefix("tf_")
    return encoder if model_name in ("lite-unet", "lite-probe", "timm-unet") and encoder in VARIANTS \
        else "efficientnet_lite0"
