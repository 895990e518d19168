"""Reptile (Nichol et al., 2018): theta <- theta + epsilon * sum_i w_i (phi_i - theta), w uniform by default.

``meta_backward`` writes the pseudo-gradient theta - sum_i w_i phi_i into ``.grad``; an outer SGD step with
rate epsilon (``train.outer_optimizer: sgd``, ``train.outer_lr: epsilon``) is then exactly the Reptile update.
The inner loop runs on each task's support and query images together (Reptile has no query loss), tasks one at a
time, first order by nature: the options that shape a second-order graph (strategy, task_chunk, proximal,
inner_checkpoint, weight_grad) are refused. At test time the same inner optimiser adapts (``adapt_steps``, the
one hook Reptile's test time overrides).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.inner_loop import InnerLoopSpec, Params, detached
from fewseg.choices import INNER_OPTIMIZERS
from fewseg.data.episode import MetaBatch
from fewseg.distributed import SINGLE, ProcessGroup
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("reptile")
class Reptile(MetaAlgorithm):
    """Reptile with an SGD (default) or Adam inner optimiser (``inner_optimizer``)."""

    OPTIONS = frozenset({"inner_steps", "inner_lr", "loss", "eval_steps", "adapt_pattern", "batchnorm",
                         "task_weighting", "weight_temperature", "frequency_power", "cache_encoder", "inner_optimizer"})
    FIXED: ClassVar[dict] = {"first_order": True, "strategy": "loop"}

    def __init__(self, model, inner_optimizer: str = "sgd", **options):
        super().__init__(model, **options)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"inner_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, got {inner_optimizer!r}")
        self.inner_optimizer = inner_optimizer

    def adapt_steps(self, spec: InnerLoopSpec, params: Params, x, y, ignore, steps: int, on_step=None) -> Params:
        """``steps`` steps of the inner optimiser from ``params`` (no graph): SGD (the shared inner loop) or Adam at
        rate ``spec.lr_for(0, ...)``; the adapted weights."""
        if self.inner_optimizer == "sgd":
            return super().adapt_steps(spec, params, x, y, ignore, steps, on_step)
        names = list(spec.adapt_names)
        phi = {n: p.detach().clone().requires_grad_(True) if n in names else detached(p) for n, p in params.items()}
        if steps == 0:
            return phi
        opt = torch.optim.Adam([phi[n] for n in names], lr=float(spec.lr_for(0, names[0])))
        with torch.enable_grad():
            for k in range(steps):
                opt.zero_grad()
                spec.loss_fn(spec.forward(phi, x), y, ignore).backward()
                opt.step()
                if on_step is not None:
                    on_step(k + 1, phi)
        return phi

    def adapted_weights(self, batch: MetaBatch, tasks: range | None = None) -> tuple[dict[int, dict], torch.Tensor]:
        """{task: phi_i} (no graph) for ``tasks`` (default: all) and the loss [T] after adaptation (0 elsewhere)."""
        params, forward = self.params_and_forward()
        view = self.inner_view(forward, params)  # encoder features once per task when the encoder stays fixed
        spec = self.inner_spec(view.forward, keep_graph=False)
        phis, losses = {}, torch.zeros(batch.num_tasks, dtype=torch.float64)  # exact weights (1/3, not float32's)
        for i in range(batch.num_tasks) if tasks is None else tasks:
            ep = batch.task(i)
            x = torch.cat([ep.support_x, ep.query_x])
            y = torch.cat([ep.support_y, ep.query_y])
            ign = None if ep.support_ignore is None else torch.cat([ep.support_ignore, ep.query_ignore])
            with torch.no_grad():
                x = view.inputs(x)
            phi = self.adapt_steps(spec, params, x, y, ign, self.inner_steps)
            with torch.no_grad():
                losses[i] = float(self.loss_fn(view.forward(phi, x), y, ign))
            phis[i] = {n: phi[n].detach() for n in self.adapt_names}
        return phis, losses

    def outer_loss(self, batch: MetaBatch, *, iteration: int) -> torch.Tensor:
        """Surrogate 1/2 ||theta - sum_i w_i phi_i||^2: its gradient is the Reptile pseudo-gradient."""
        phis, losses = self.adapted_weights(batch)
        w = self.weighting(losses, batch.class_ids).detach()
        params = dict(self.model.named_parameters())
        return sum(0.5 * ((params[n] - sum(float(w[i]) * phi[n] for i, phi in phis.items())) ** 2).sum()
                   for n in self.adapt_names)

    def meta_backward(self, batch: MetaBatch, *, iteration: int, group: ProcessGroup = SINGLE) -> dict:
        """Pseudo-gradient theta - sum_i w_i phi_i into ``.grad`` (w: the task weights of the adapted losses).

        With several ranks each adds sum_i w_i (theta - phi_i) over its own tasks (the weights sum to 1 over the
        batch), so the sum across ranks is the pseudo-gradient of the whole batch."""
        phis, losses = self.adapted_weights(batch, group.shard(batch.num_tasks) if group.world > 1 else None)
        losses = group.sum_(losses)
        w = self.weighting(losses, batch.class_ids).detach()
        for n, p in self.model.named_parameters():
            if n in self.adapt_names:
                if group.world == 1:
                    pseudo = p.detach() - sum(float(w[i]) * phi[n] for i, phi in phis.items())
                else:
                    pseudo = sum(float(w[i]) * (p.detach() - phi[n]) for i, phi in phis.items()) \
                        if phis else torch.zeros_like(p)
                p.grad = pseudo if p.grad is None else p.grad + pseudo
        return {"loss": float((w * losses).sum()), "task_losses": losses.tolist(), "task_weights": w.tolist()}
