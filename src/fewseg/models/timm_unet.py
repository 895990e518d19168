"""``timm-unet``: a U-Net decoder on any timm encoder that offers ``features_only`` (resnet, efficientnet,
convnext, mobilenet, ...), returning foreground logits at the input resolution.

Encoder: ``timm.create_model(encoder, features_only=True, in_chans=in_channels)``, its feature maps at strides
2..32 (4..32 for convnext). Decoder: from the deepest map up, upsample, concatenate the next shallower map, one
3x3 convolution + GroupNorm + ReLU (``decoder_width`` x 2**level channels, at most 256); a last block at the
input resolution (``decoder_width`` channels: ``features(x)``) and a 1x1 head. The decoder has no BatchNorm.

Pretrained weights (``pretrained``):

- ``False``: timm's random initialisation (nothing is read or downloaded).
- ``True``: timm's own loading (the Hugging Face hub or timm's cache): needs a machine that is online or has the
  weights cached; otherwise a one-line error says to pass a file.
- ``"path/to/weights.safetensors"`` (or ``.pth``/``.pt``/``.bin``): a local file, for offline machines and
  clusters: the state dict of the timm model ``encoder`` (for example timm's ``model.safetensors`` from
  ``hf download timm/resnet18.a1_in1k``). Read with safetensors or ``torch.load(weights_only=True)`` (loading
  never runs code), then handed to timm's own loader (its key filters, its adaptation of a 3-channel stem to
  ``in_channels``, the classifier dropped); weights that do not fit are a one-line error.

BatchNorm (``batchnorm``; ``fewseg.algorithms.norms``): ``auto`` (default) is ``frozen-stats`` with pretrained
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

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.algorithms.norms import apply_batchnorm_policy, batchnorm_layers, groups_for
from fewseg.errors import MissingDependency, WeightsError
from fewseg.models.encoded import EncodeOnly, EncoderFeatures
from fewseg.registry import MODELS

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
TIMM_MISSING = ("timm-unet needs timm and a torchvision that matches torch: pip install 'fewseg[timm]' "
                "(README: Install)")


def import_timm():
    """The timm module, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError as exc:  # timm absent, or torchvision built for another torch
        raise MissingDependency(f"{TIMM_MISSING} ({exc})") from None
    return timm


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file, loaded safely: safetensors, or ``torch.load(weights_only=True)`` for
    .pth/.pt/.bin (a checkpoint dict holding "state_dict" or "model" is unwrapped). One-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"pretrained weights file {path} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"pretrained weights file {path}: expected {', '.join(WEIGHT_SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (corrupt file, pickled code refused by weights_only, ...)
        raise WeightsError(f"pretrained weights file {path} could not be read safely: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"pretrained weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


class DecoderBlock(nn.Sequential):
    """conv 3x3 -> GroupNorm -> ReLU: [B,cin,H,W] -> [B,cout,H,W]."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups_for(cout), cout),
                         nn.ReLU())


class TimmUNet(nn.Module):
    """A timm ``features_only`` encoder, a light U-Net decoder and a 1x1 head (see the module docstring)."""

    head_prefix = "head."
    encoder_prefix = "encoder."

    def __init__(self, encoder: str = "resnet18", pretrained: bool | str = False, in_channels: int = 3,
                 decoder_width: int = 32, batchnorm: str = "auto", freeze_encoder: bool = False):
        super().__init__()
        timm = import_timm()
        if not isinstance(decoder_width, int) or decoder_width < 1:
            raise ValueError(f"timm-unet: decoder_width must be an integer >= 1, got {decoder_width!r}")
        if not isinstance(pretrained, (bool, str, Path)):
            raise TypeError(f"timm-unet: pretrained must be true, false or a weights file, got {pretrained!r}")
        if encoder not in timm.list_models():
            raise ValueError(f"timm-unet: unknown timm encoder {encoder!r} (timm.list_models() lists them)")
        self.in_channels, self.encoder_name = in_channels, encoder
        self.encoder = self._create_encoder(timm, encoder, pretrained, in_channels)
        info = self.encoder.feature_info
        self.stage_modules = [info.module_name(i) for i in range(len(info))]
        chans = list(info.channels())  # shallow to deep
        widths = [min(decoder_width * 2**i, 256) for i in range(len(chans))]
        self.up = nn.ModuleList()
        deep = chans[-1]
        for level in reversed(range(len(chans) - 1)):  # deepest skip first
            self.up.append(DecoderBlock(deep + chans[level], widths[level]))
            deep = widths[level]
        self.last = DecoderBlock(deep, decoder_width)  # at the input resolution
        self.head = nn.Conv2d(decoder_width, 1, 1)
        policy = batchnorm if batchnorm != "auto" else ("frozen-stats" if pretrained else "group-norm")
        if batchnorm not in ("auto", "frozen-stats", "batch-stats", "group-norm"):
            raise ValueError(f"timm-unet: batchnorm must be auto, frozen-stats, batch-stats or group-norm, "
                             f"got {batchnorm!r}")
        apply_batchnorm_policy(self.encoder, policy)
        self.batchnorm = policy if batchnorm_layers(self.encoder) else "none"  # convnext: LayerNorm only
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)

    def _create_encoder(self, timm, encoder: str, pretrained, in_channels: int) -> nn.Module:
        kwargs = {"features_only": True, "in_chans": in_channels}
        if not pretrained:
            return timm.create_model(encoder, pretrained=False, **kwargs)
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

    def parameter_groups(self) -> dict[str, str]:
        """Regexes of parameter names by part: encoder, decoder, head and stage0..stageN (timm's feature stages:
        stage s holds the encoder parameters after stage s-1's module up to the end of its own, so stage0
        includes the stem)."""
        groups = {"encoder": r"^encoder\.", "decoder": r"^(up|last)\.", "head": r"^head\."}
        modules = [n for n, _ in self.encoder.named_modules()]
        position = {n: i for i, n in enumerate(modules)}
        ends = [max(i for i, n in enumerate(modules) if n == m or n.startswith(m + ".")) for m in self.stage_modules]
        members: dict[int, list[str]] = {}
        for name, _ in self.encoder.named_parameters():
            at = position[name.rpartition(".")[0]]
            stage = next((s for s, end in enumerate(ends) if at <= end), len(ends) - 1)
            members.setdefault(stage, []).append(name)
        for stage, names in sorted(members.items()):
            groups[f"stage{stage}"] = "^encoder\\.(" + "|".join(re.escape(n) for n in names) + ")$"
        return groups

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """[B,C,H,W] -> the encoder's feature maps, shallow to deep."""
        return EncoderFeatures(list(self.encoder(x)), tuple(x.shape[-2:]))

    def decode(self, feats: EncoderFeatures) -> torch.Tensor:
        """Encoder features -> [B,decoder_width,H,W] decoder features at the images' size."""
        maps = list(feats.maps)
        x = maps.pop()
        for block in self.up:
            skip = maps.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=tuple(feats.size), mode="bilinear", align_corners=False)
        return self.last(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,H,W] -> [B,decoder_width,H,W] decoder features before the 1x1 head."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor | EncodeOnly | EncoderFeatures):
        """Images [B,C,H,W] -> logits [B,1,H,W]; ``EncodeOnly(images)`` -> encoder features; encoder features
        -> logits (``fewseg.models.encoded``)."""
        if isinstance(x, EncodeOnly):
            return self.encode(x.images)
        feats = x if isinstance(x, EncoderFeatures) else self.encode(x)
        return self.head(self.decode(feats))


def _first_line(exc: BaseException, lines: int = 1) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines()[:lines] if line.strip())
    return text or type(exc).__name__


@MODELS.register("timm-unet")
def timm_unet(**kwargs) -> TimmUNet:
    return TimmUNet(**kwargs)
