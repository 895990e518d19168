"""Reptile (Nichol et al., 2018): theta <- theta + epsilon * mean_i(phi_i - theta).

``meta_backward`` writes the pseudo-gradient theta - mean_i(phi_i) into ``.grad``; an outer SGD step with
rate epsilon (``train.outer_optimizer: sgd``, ``train.outer_lr: epsilon``) is then exactly the Reptile update.
The inner loop runs on each task's support and query images together (Reptile has no query loss).
"""
from __future__ import annotations

import torch

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.inner_loop import inner_loop
from fewseg.data.episode import MetaBatch
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("reptile")
class Reptile(MetaAlgorithm):
    """Reptile with an SGD (default) or Adam inner optimiser (``inner_optimizer``)."""

    name = "reptile"
    supports_inner_checkpoint = False  # first order: no inner-loop graph

    def __init__(self, model, inner_optimizer: str = "sgd", **kwargs):
        kwargs["first_order"] = True
        super().__init__(model, **kwargs)
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer must be 'sgd' or 'adam', got {inner_optimizer!r}")
        self.inner_optimizer = inner_optimizer

    def adapted_weights(self, batch: MetaBatch) -> tuple[list[dict], list[float]]:
        """phi_i for every task (no graph) and each task's loss after adaptation."""
        params, forward = self.params_and_forward()
        phis, losses = [], []
        for i in range(batch.num_tasks):
            ep = batch.task(i)
            x = torch.cat([ep.support_x, ep.query_x])
            y = torch.cat([ep.support_y, ep.query_y])
            ign = None if ep.support_ignore is None else torch.cat([ep.support_ignore, ep.query_ignore])
            if self.inner_optimizer == "sgd":
                phi = inner_loop(forward, params, self.adapt_names, x, y, ign, self.inner_steps, self.lr_for,
                                 self.loss_fn, create_graph=False, keep_graph=False)[-1]
            else:
                phi = self._adam_steps(forward, params, x, y, ign)
            with torch.no_grad():
                losses.append(float(self.loss_fn(forward(phi, x), y, ign)))
            phis.append({n: phi[n].detach() for n in self.adapt_names})
        return phis, losses

    def _adam_steps(self, forward, params, x, y, ign) -> dict:
        phi = {n: p.detach().clone().requires_grad_(n in self.adapt_names) for n, p in params.items()}
        opt = torch.optim.Adam([phi[n] for n in self.adapt_names], lr=self.inner_lr)
        with torch.enable_grad():
            for _ in range(self.inner_steps):
                opt.zero_grad()
                self.loss_fn(forward(phi, x), y, ign).backward()
                opt.step()
        return phi

    def outer_loss(self, batch: MetaBatch) -> torch.Tensor:
        """Surrogate 1/2 ||theta - mean(phi)||^2: its gradient is the Reptile pseudo-gradient."""
        phis, _ = self.adapted_weights(batch)
        params = dict(self.model.named_parameters())
        return sum(0.5 * ((params[n] - torch.stack([p[n] for p in phis]).mean(0)) ** 2).sum()
                   for n in self.adapt_names)

    def meta_backward(self, batch: MetaBatch) -> dict:
        """Pseudo-gradient theta - sum_i w_i phi_i (w: ``task_weights`` of the adapted losses, uniform by default)."""
        phis, losses = self.adapted_weights(batch)
        w = self.task_weights(torch.tensor(losses), batch.class_ids).detach()
        for n, p in self.model.named_parameters():
            if n in self.adapt_names:
                mean_phi = sum(float(w[i]) * phi[n] for i, phi in enumerate(phis))
                pseudo = p.detach() - mean_phi
                p.grad = pseudo if p.grad is None else p.grad + pseudo
        return {"loss": float((w * torch.tensor(losses)).sum()), "task_losses": losses, "task_weights": w.tolist()}
