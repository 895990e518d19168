"""ANIL (Raghu et al., 2020): only the head adapts in the inner loop; the body is shared across tasks.

Because the body does not change within a task, its features are computed once per task (support and
query) and the inner steps run through the head alone. That is the same mathematics as running the whole
network every step (the outer gradient still reaches the body through the features), at a fraction of
the cost. The shortcut is taken when the model declares ``features(x)`` and ``head_prefix`` with
``forward(x) == head(features(x))`` (fewseg's models do) and only head parameters adapt; otherwise ANIL
runs the whole network each step like MAML.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from fewseg.algorithms.adapted import Adapted
from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.inner_loop import inner_loop
from fewseg.data.episode import Episode
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("anil")
class ANIL(MetaAlgorithm):
    """MAML whose inner loop adapts only parameters matching ``adapt_pattern``
    (default: the model's ``head_prefix``, e.g. ``"4."`` for seed-cnn, ``"head."`` for unet)."""

    OPTIONS = (MetaAlgorithm.OPTIONS - {"inner_checkpoint", "checkpoint_images"}) | {"cache_features"}  # small graph

    def __init__(self, model, adapt_pattern: str | None = None, cache_features: bool = True, **options):
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
        self.cache_features = bool(cache_features and prefix and hasattr(model, "features")
                                   and sorted(head_names) == sorted(self.adapt_names))

    def _head_forward(self):
        head = self.model.get_submodule(self.head_prefix.rstrip("."))

        def forward(params, feats):  # head parameters without the prefix; feats [N,C,H,W]
            return functional_call(head, params, (feats,))
        return forward

    def _head_loop(self, params, x, y, ignore, steps, lr_for, create_graph, keep_graph, functional_grad,
                   on_step=None):
        n0 = len(self.head_prefix)
        head = {n[n0:]: params[n] for n in self.adapt_names}
        return inner_loop(self._head_forward(), head, list(head), x, y, ignore, steps,
                          lambda k, n: lr_for(k, self.head_prefix + n), self.loss_fn, create_graph=create_graph,
                          keep_graph=keep_graph, functional_grad=functional_grad, proximal=self.proximal,
                          on_step=on_step)

    def task_loss(self, forward, params, ep: Episode, iteration: int, functional_grad: bool) -> torch.Tensor:
        if not self.cache_features:
            return super().task_loss(forward, params, ep, iteration, functional_grad)
        feats_s = self.model.features(ep.support_x)   # [S,C,H,W], once per task
        feats_q = self.model.features(ep.query_x)     # [Q,C,H,W]
        trajectory = self._head_loop(params, feats_s, ep.support_y, ep.support_ignore, self.inner_steps,
                                     self.lr_for, self.use_second_order(iteration), True, functional_grad)
        return self.loss_fn(self._head_forward()(trajectory[-1], feats_q), ep.query_y, ep.query_ignore)

    def adapt_run(self, support_x, support_y, support_ignore, steps, lr_scale=1.0, lr=None, on_step=None) -> Adapted:
        if not self.cache_features:
            return super().adapt_run(support_x, support_y, support_ignore, steps, lr_scale, lr, on_step)
        rates = self._rates(steps, lr, lr_scale)
        params, forward = self.params_and_forward()
        with torch.no_grad():
            feats = self.model.features(support_x)  # [S,C,H,W]
        frozen = {n: p.detach() for n, p in params.items()}

        def with_head(head) -> Adapted:
            return Adapted(forward, {**frozen, **{self.head_prefix + n: p.detach() for n, p in head.items()}})
        seen = None if on_step is None else (lambda k, head: on_step(k, with_head(head)))
        head = self._head_loop(params, feats, support_y, support_ignore, steps,
                               lambda k, n: rates[(k, n)], False, False, False, on_step=seen)[-1]
        return with_head(head)
