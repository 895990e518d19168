"""Fine-tuning a copy of a network on the support set (random-init and transfer baselines).

Example:
    >>> import torch, fewseg
    >>> from fewseg.baselines.finetune import FineTuneLearner
    >>> model = fewseg.create_model("seed-cnn", width=4)
    >>> support_x, support_y = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    >>> learner = FineTuneLearner(model, steps=2, lr=1e-3, optimizer="adam")
    >>> learner.adapt(support_x, support_y).predict(torch.rand(3, 3, 16, 16)).shape   # [Q,1,H,W]
    torch.Size([3, 1, 16, 16])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fewseg.algorithms.test_time import nearest_shots
from fewseg.losses import get_loss


def tuning_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to fine-tune that shares its constant tensors with it instead of copying them:
    parameters that take no gradient and the statistics of BatchNorm layers under the ``frozen-stats`` policy
    (never updated), and the network's ``feature_cache``. A frozen encoder is then one set of tensors for every
    episode's copy, so its cached features (keyed by those tensors) serve every copy, and nothing large is copied.
    What the copy trains is its own.

        >>> import fewseg
        >>> net = fewseg.create_model("seed-cnn", width=4)
        >>> _ = net[-1].requires_grad_(False)                 # the last layer frozen
        >>> twin = tuning_copy(net)
        >>> twin[-1].weight is net[-1].weight, twin[0].weight is net[0].weight
        (True, False)
    """
    memo: dict[int, object] = {id(p): p for p in model.parameters() if not p.requires_grad}
    for m in model.modules():
        if getattr(m, "fewseg_batchnorm", None) == "frozen-stats":
            memo.update({id(b): b for b in m.buffers(recurse=False)})
    cache = getattr(model, "feature_cache", None)
    if cache is not None:
        memo[id(cache)] = cache
    return copy.deepcopy(model, memo)


@dataclass
class FineTuned:
    model: torch.nn.Module

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)  # [N,1,H,W]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images))  # [N,1,H,W]


@dataclass
class FineTuneLearner:
    """Copies ``model`` and takes ``steps`` full-batch steps of ``optimizer`` ("sgd" | "adam") on the support loss."""

    model: torch.nn.Module
    steps: int
    lr: float
    optimizer: str = "sgd"
    loss: str = "bce"
    episode_batch: int = 1  # episodes :meth:`adapt_batch` may fine-tune at once (``eval.batch_episodes``)

    def adapt(self, support_x, support_y, support_ignore=None, on_step=None) -> FineTuned:
        """The fine-tuned copy (:func:`tuning_copy`); ``on_step(k, fine_tuned_k)`` sees it after every step
        k = 1..steps (in eval mode)."""
        model = tuning_copy(self.model)
        model.train()
        loss_fn = get_loss(self.loss)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = self._optimizer(params)
        with torch.enable_grad():
            for k in range(self.steps):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(support_x), support_y, support_ignore).backward()
                opt.step()
                if on_step is not None:
                    model.eval()
                    on_step(k + 1, FineTuned(model))
                    model.train()
        model.eval()
        return FineTuned(model)

    def _optimizer(self, params):
        return (torch.optim.Adam(params, lr=self.lr) if self.optimizer == "adam"
                else torch.optim.SGD(params, lr=self.lr))

    def adapt_batch(self, support_x, support_y, support_ignore=None, on_step=None,
                    at_steps=None) -> list:
        """:meth:`adapt` of several independent episodes at once: support_x [B,S,C,H,W], support_y [B,S,1,H,W],
        support_ignore [B,S,1,H,W] or None (for all of them). Each episode fine-tunes its own copy of the weights
        (stacked [B,...], one ``torch.func.vmap`` over the episodes: the sum of the episodes' losses has each
        episode's own gradient in its slice, and SGD and Adam act element by element), so episode b ends where
        ``adapt(support_x[b], ...)`` does, up to float rounding (batched convolutions add in another order).
        ``on_step(k, b, predictor_b_k)`` after step k (every step, or those in ``at_steps``), to be used at once.
        With ``episode_batch`` 1, and for networks with buffers (BatchNorm running statistics) or dropout, the
        episodes are fine-tuned one at a time by :meth:`adapt`."""
        n = support_x.shape[0]

        def wanted(k):
            return on_step is not None and (at_steps is None or k in at_steps)
        if self.episode_batch <= 1 or not batchable(self.model):
            out = []
            for b in range(n):
                seen = (lambda k, tuned, b=b: on_step(k, b, tuned) if wanted(k) else None)
                out.append(self.adapt(support_x[b], support_y[b],
                                      None if support_ignore is None else support_ignore[b], on_step=seen))
            return out
        from torch.func import functional_call, vmap
        model, loss_fn = self.model, get_loss(self.loss)
        stacked = {name: p.detach().unsqueeze(0).repeat(n, *([1] * p.dim())).requires_grad_()
                   for name, p in model.named_parameters()}
        opt = self._optimizer(list(stacked.values()))

        def task_loss(params, x, y, ignore=None):
            return loss_fn(functional_call(model, params, (x,)), y, ignore)

        batched = vmap(task_loss)
        args = (support_x, support_y) + (() if support_ignore is None else (support_ignore,))
        was_training = model.training
        try:
            with torch.enable_grad():
                for k in range(self.steps):
                    model.train()
                    opt.zero_grad(set_to_none=True)
                    batched(stacked, *args).sum().backward()
                    opt.step()
                    if wanted(k + 1):
                        for b in range(n):
                            on_step(k + 1, b, SliceTuned(model, {m: p[b].detach() for m, p in stacked.items()}))
        finally:
            model.train(was_training)
        return [SliceTuned(model, {m: p[b].detach().clone() for m, p in stacked.items()}) for b in range(n)]


@dataclass
class SliceTuned:
    """One episode's fine-tuned weights (``params``) run through the shared ``model`` in eval mode."""

    model: torch.nn.Module
    params: dict

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call
        was_training = self.model.training
        self.model.eval()
        try:
            return functional_call(self.model, self.params, (images,))  # [N,1,H,W]
        finally:
            self.model.train(was_training)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(images))  # [N,1,H,W]


def batchable(model: nn.Module) -> bool:
    """Whether :meth:`FineTuneLearner.adapt_batch` may vmap over copies of ``model``: no buffers (running
    statistics updated in place) and no dropout (random masks)."""
    if any(True for _ in model.buffers()):
        return False
    return not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


@dataclass
class PerShotLearner:
    """Dispatches to the learner chosen for the support set's size (the nearest stored shot count; ties: smaller)."""

    learners: dict[int, object]

    @property
    def episode_batch(self) -> int:
        return max((getattr(learner, "episode_batch", 1) for learner in self.learners.values()), default=1)

    def adapt(self, support_x, support_y, support_ignore=None):
        shots = nearest_shots(self.learners, support_x.shape[0])
        return self.learners[shots].adapt(support_x, support_y, support_ignore=support_ignore)

    def adapt_batch(self, support_x, support_y, support_ignore=None):
        """Episodes of one support size at once (the learner chosen for it; its ``adapt_batch`` where it has one)."""
        learner = self.learners[nearest_shots(self.learners, support_x.shape[1])]
        if callable(getattr(learner, "adapt_batch", None)):
            return learner.adapt_batch(support_x, support_y, support_ignore)
        return [learner.adapt(support_x[b], support_y[b],
                              support_ignore=None if support_ignore is None else support_ignore[b])
                for b in range(support_x.shape[0])]

    def adapt_patches(self, support_x, support_y, support_ignore, images: int):
        """Support patches cut from ``images`` support images (tiled evaluation): the learner chosen for that many
        images, on the patches (its own ``adapt_patches`` where it has one)."""
        learner = self.learners[nearest_shots(self.learners, images)]
        own = getattr(learner, "adapt_patches", None)
        if callable(own):
            return own(support_x, support_y, support_ignore, images)
        return learner.adapt(support_x, support_y, support_ignore=support_ignore)
