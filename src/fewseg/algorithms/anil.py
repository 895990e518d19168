"""ANIL (Raghu et al., 2020): only the head adapts in the inner loop; the body is shared across tasks."""
from __future__ import annotations

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("anil")
class ANIL(MetaAlgorithm):
    """MAML whose inner loop adapts only parameters matching ``adapt_pattern``
    (default: the model's ``head_prefix``, e.g. ``"4."`` for seed-cnn, ``"head."`` for unet)."""

    name = "anil"

    def __init__(self, model, adapt_pattern: str | None = None, **kwargs):
        if adapt_pattern is None:
            prefix = getattr(model, "head_prefix", None)
            if prefix is None:
                last = [n for n, _ in model.named_parameters()][-1].rsplit(".", 1)[0]
                prefix = last + "."
            adapt_pattern = "^" + prefix.replace(".", r"\.")
        super().__init__(model, adapt_pattern=adapt_pattern, **kwargs)
