"""A new network: a small encoder-decoder that offers every part of the model contract of docs/extending.md.

    python examples/extend_model.py          # a few seconds on one CPU core

The contract: ``forward([B,C,H,W]) -> [B,1,H,W]`` logits (required); ``in_channels``; ``parameter_groups()`` (names
for ``adapt_pattern="@head"``); ``head_prefix`` + ``features(x)`` with ``forward(x) == head(features(x))`` (ANIL
adapts the head and computes the features once per task); ``encoder_prefix`` + ``EncodeOnly``/``EncoderFeatures``
in ``forward`` (the MAML family encodes support and query images once per task when no encoder parameter adapts).
The script registers the network as "my-net", checks those identities, counts the encoder's passes in one
meta-step with a forward hook (once per task, against once per inner step with the cache off, for the same
meta-gradient), meta-trains it under MAML with ``adapt_pattern="@head"`` and under ANIL, and shows the one-line
error for an unknown parameter group.
"""
import torch
import torch.nn.functional as F
from torch import nn

import fewseg
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.models.encoded import EncodeOnly, EncoderFeatures
from fewseg.registry import MODELS


class Encoder(nn.Module):
    """Images [B,C,H,W] -> feature maps [B,w,H,W] and [B,2w,H/2,W/2], shallow to deep."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.stage0 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                                    nn.GroupNorm(2, 2 * width), nn.ReLU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shallow = self.stage0(x)
        return [shallow, self.stage1(shallow)]


@MODELS.register("my-net")
class MyNet(nn.Module):
    """Encoder (two stages), one decoder block at full resolution, a 1x1 head: [B,C,H,W] -> [B,1,H,W] logits.
    GroupNorm only: a BatchNorm would need the algorithm option ``batchnorm``."""

    head_prefix = "head."         # ANIL: the head's parameters (one submodule: model.head)
    encoder_prefix = "encoder."   # the encoder's parameters: what must not adapt for the encoder cache

    def __init__(self, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.in_channels = in_channels  # checked against the images given to adapt() and predict()
        self.encoder = Encoder(in_channels, width)
        self.decoder = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU())
        self.head = nn.Conv2d(width, 1, 1)

    def parameter_groups(self) -> dict[str, str]:
        """Regexes of parameter names, usable in adapt_pattern as "@name"."""
        return {"encoder": r"^encoder\.", "stage0": r"^encoder\.stage0\.", "stage1": r"^encoder\.stage1\.",
                "decoder": r"^decoder\.", "head": r"^head\."}

    def features(self, x) -> torch.Tensor:
        """Images [B,C,H,W] (or their EncoderFeatures) -> [B,w,H,W], the input of the head."""
        feats = x if isinstance(x, EncoderFeatures) else EncoderFeatures(self.encoder(x), tuple(x.shape[-2:]))
        shallow, deep = feats.maps
        deep = F.interpolate(deep, size=shallow.shape[-2:], mode="nearest")
        return self.decoder(torch.cat([shallow, deep], dim=1))

    def forward(self, x):
        if isinstance(x, EncodeOnly):  # the encoder alone: run once per task by the MAML family
            return EncoderFeatures(self.encoder(x.images), tuple(x.images.shape[-2:]))
        return self.head(self.features(x))  # images, or EncoderFeatures: the decoder and head alone


def meta_gradient(algo, batch) -> list[torch.Tensor]:
    algo.zero_grad()
    algo.meta_backward(batch, iteration=0)
    return [p.grad.clone() for p in algo.model.parameters()]


torch.manual_seed(0)
model = fewseg.create_model("my-net", width=8)
x = torch.rand(2, 3, 24, 24)
assert model(x).shape == (2, 1, 24, 24)
assert torch.equal(model(model(EncodeOnly(x))), model(x))   # the encoder/decoder split gives the same logits
assert torch.equal(model.head(model.features(x)), model(x))  # what ANIL relies on
print(f"my-net: {sum(p.numel() for p in model.parameters())} parameters, logits {tuple(model(x).shape)}")

train_set = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=24)
sampler = fewseg.EpisodeSampler(train_set, shots=2, queries=2, seed=0)
batch = sampler.meta_batch(2)                                # T=2 tasks

calls = []
model.encoder.register_forward_hook(lambda module, inputs, output: calls.append(1))
maml = fewseg.create_algorithm("maml", model, inner_steps=3, inner_lr=0.1, adapt_pattern="@head")
assert maml.encoder_is_fixed() and maml.adapt_names == ["head.weight", "head.bias"]
cached = meta_gradient(maml, batch)
n_cached = len(calls)
calls.clear()
maml.cache_encoder = False                                   # the same maths, the encoder run at every step
uncached = meta_gradient(maml, batch)
diff = max(float((a - b).abs().max()) for a, b in zip(cached, uncached))
print(f"maml @head: encoder passes per meta-step {n_cached} (cached), {len(calls)} (every step); "
      f"meta-gradients differ by {diff:.1e}")
maml.cache_encoder = True
deep = fewseg.create_algorithm("maml", model, inner_steps=3, inner_lr=0.1, adapt_pattern="@stage1|@decoder|@head")
print(f"maml @stage1|@decoder|@head: {len(deep.adapt_names)} tensors adapt, encoder cached: {deep.encoder_is_fixed()}")

anil = fewseg.create_algorithm("anil", model, inner_steps=3, inner_lr=0.1)
calls.clear()
meta_gradient(anil, batch)
print(f"anil adapts {', '.join(anil.adapt_names)}; features once per task: {anil.encoder_is_fixed()}; "
      f"encoder passes per meta-step {len(calls)}")

test_set = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=24)
episodes = fewseg.EpisodeSampler(test_set, shots=2, queries=2, seed=1).fixed_episodes(4)
for name, algo in (("maml @head", maml), ("anil", anil)):           # one network, trained by both in turn
    optimizer = torch.optim.Adam(algo.parameters(), lr=1e-3)
    for i in range(3):                                       # a few meta-training iterations
        optimizer.zero_grad()
        logs = algo.meta_backward(sampler.meta_batch(2), iteration=i)
        optimizer.step()
    summary = evaluate(MetaLearner(algo), episodes)
    print(f"{name}: meta-loss {logs['loss']:.4f}, mIoU {summary['miou']:.4f} on {summary['n_episodes']} episodes")

try:
    fewseg.create_algorithm("maml", model, adapt_pattern="@body")
except ValueError as exc:
    print(f"refused: {exc}")
else:
    raise SystemExit("an unknown parameter group was accepted")
