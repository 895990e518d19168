"""ANIL (Raghu et al., 2020): only the head adapts in the inner loop; the body is shared across tasks.

Because the body does not change within a task, its output is computed once per task (support and query) and
the inner steps run through the rest alone. That is the same mathematics as running the whole network every step
(the outer gradient still reaches the body through the cached features), at a fraction of the cost. It is the
one option ``cache_encoder`` of the whole family (``MetaAlgorithm.inner_view``): on a model that declares
``features(x)`` and ``head_prefix`` with ``forward(x) == head(features(x))`` (``seed-cnn``, ``unet``,
``lite-unet``, ``timm-unet``), ANIL caches ``features(x)`` and steps the head alone when only head parameters
adapt; otherwise, where the model splits into encoder and decoder (``encoder_prefix``), the encoder's features are
cached as for every algorithm.
``cache_encoder: false`` runs the whole network at every step.
"""
from __future__ import annotations

from torch.func import functional_call

from fewseg.algorithms.base import InnerView, MetaAlgorithm
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("anil")
class ANIL(MetaAlgorithm):
    """MAML whose inner loop adapts only parameters matching ``adapt_pattern``
    (default: the model's ``head_prefix``, e.g. ``"4."`` for seed-cnn, ``"head."`` for unet)."""

    OPTIONS = MetaAlgorithm.OPTIONS - {"inner_checkpoint", "checkpoint_images"}  # a small graph already

    def __init__(self, model, adapt_pattern: str | None = None, **options):
        if adapt_pattern is None:
            prefix = getattr(model, "head_prefix", None)
            if prefix is None:
                last = [n for n, _ in model.named_parameters()][-1].rsplit(".", 1)[0]
                prefix = last + "."
            adapt_pattern = "^" + prefix.replace(".", r"\.")
        super().__init__(model, adapt_pattern=adapt_pattern, **options)
        prefix = getattr(model, "head_prefix", None)
        head_names = [n for n, _ in model.named_parameters() if prefix and n.startswith(prefix)]
        self.head_prefix = prefix
        # the model's features(x) feed its head, and only the head adapts: features can be cached
        self.head_alone = bool(prefix and hasattr(model, "features") and sorted(head_names) == sorted(self.adapt_names))

    def inner_view(self, forward, params) -> InnerView:
        """With ``cache_encoder`` and only the head adapting: ``features(x)`` once per task and the head alone at
        every step (the most that can be cached; ANIL's own weights are the model's: ``task_params`` is not
        overridden, so ``features`` runs with them); else the family's encoder split (``encoder_is_fixed``)."""
        if not (self.cache_encoder and self.head_alone):
            return super().inner_view(forward, params)
        prefix = self.head_prefix
        head, n0 = self.model.get_submodule(prefix.rstrip(".")), len(prefix)

        def head_forward(p, feats):  # p: the whole parameter dict; feats [N,C,H,W]
            return functional_call(head, {n[n0:]: v for n, v in p.items() if n.startswith(prefix)}, (feats,))
        return InnerView(head_forward, self.model.features)
