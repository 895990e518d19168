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

from fewseg.algorithms.test_time import nearest_shots
from fewseg.losses import get_loss


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

    def adapt(self, support_x, support_y, support_ignore=None, on_step=None) -> FineTuned:
        """The fine-tuned copy; ``on_step(k, fine_tuned_k)`` sees it after every step k = 1..steps (in eval mode)."""
        model = copy.deepcopy(self.model)
        model.train()
        loss_fn = get_loss(self.loss)
        params = [p for p in model.parameters()]
        opt = (torch.optim.Adam(params, lr=self.lr) if self.optimizer == "adam"
               else torch.optim.SGD(params, lr=self.lr))
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


@dataclass
class PerShotLearner:
    """Dispatches to the learner chosen for the support set's size (the nearest stored shot count; ties: smaller)."""

    learners: dict[int, object]

    def adapt(self, support_x, support_y, support_ignore=None):
        shots = nearest_shots(self.learners, support_x.shape[0])
        return self.learners[shots].adapt(support_x, support_y, support_ignore=support_ignore)

    def adapt_patches(self, support_x, support_y, support_ignore, images: int):
        """Support patches cut from ``images`` support images (tiled evaluation): the learner chosen for that many
        images, on the patches (its own ``adapt_patches`` where it has one)."""
        learner = self.learners[nearest_shots(self.learners, images)]
        own = getattr(learner, "adapt_patches", None)
        if callable(own):
            return own(support_x, support_y, support_ignore, images)
        return learner.adapt(support_x, support_y, support_ignore=support_ignore)
