"""The functional inner loop shared by every algorithm (torch.func.functional_call + gradients).

``inner_loop`` takes parameters as a dict and returns the trajectory of adapted parameter dicts,
so the same code serves second-order MAML (``create_graph=True``), first-order variants
(gradients detached), plain adaptation at test time (``keep_graph=False``: nothing is tracked),
and the batched path under ``torch.func.vmap`` (``functional_grad=True``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import functional_call

from fewseg.losses import LossFn

Params = dict[str, torch.Tensor]
# lr_for(step, name) -> a float or a tensor broadcastable to the parameter (per-element / per-tensor rate)
LearningRates = Callable[[int, str], "float | torch.Tensor"]


def make_forward(model: torch.nn.Module, buffers: Mapping[str, torch.Tensor]) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """forward(params, images [N,3,H,W]) -> logits [N,1,H,W], running ``model`` with the given weights."""

    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**params, **buffers}, (x,), strict=False)

    return forward


def inner_step(forward: Callable[[Params, torch.Tensor], torch.Tensor], params: Params, adapt_names: list[str],
               x: torch.Tensor, y: torch.Tensor, ignore: torch.Tensor | None, step: int, lr_for: LearningRates,
               loss_fn: LossFn, create_graph: bool, functional_grad: bool = False, proximal: float = 0.0,
               anchor: Params | None = None, step_params: Callable[[int], Params] | None = None) -> Params:
    """One SGD step on the support loss at inner step ``step``: params -> new params (only ``adapt_names`` move).

    anchor: theta of the proximal term lambda/2 * ||phi - anchor||^2 (required when ``proximal`` > 0).
    Without ``create_graph`` the gradient is detached (first order: d new / d params = I).
    """
    def support_loss(adapted: Params, shared: Params) -> torch.Tensor:
        extra = step_params(step) if step_params is not None else {}
        loss = loss_fn(forward({**shared, **adapted, **extra}, x), y, ignore)
        if proximal:
            loss = loss + 0.5 * proximal * sum(((adapted[n] - anchor[n]) ** 2).sum() for n in adapted)
        return loss

    adapted = {n: params[n] for n in adapt_names}
    with torch.enable_grad():
        if functional_grad:
            grads = torch.func.grad(support_loss)(adapted, params)
        else:
            loss = support_loss(adapted, params)
            values = torch.autograd.grad(loss, list(adapted.values()), create_graph=create_graph)
            grads = dict(zip(adapted, values))
        new = dict(params)
        for n in adapt_names:
            g = grads[n] if create_graph else grads[n].detach()
            new[n] = params[n] - lr_for(step, n) * g
    return new


def inner_loop(forward: Callable[[Params, torch.Tensor], torch.Tensor], params: Params, adapt_names: list[str],
               x: torch.Tensor, y: torch.Tensor, ignore: torch.Tensor | None, steps: int,
               lr_for: LearningRates, loss_fn: LossFn, create_graph: bool, keep_graph: bool = True,
               functional_grad: bool = False, proximal: float = 0.0,
               step_params: Callable[[int], Params] | None = None,
               on_step: Callable[[int, Params], None] | None = None) -> list[Params]:
    """Take ``steps`` SGD steps on the support loss; return [params_0, ..., params_steps].

    x [S,3,H,W], y [S,1,H,W], ignore [S,1,H,W] | None. Only ``adapt_names`` change; the others are shared.
    create_graph: keep second-order terms (MAML); False drops them (first order: d phi / d theta = I).
    keep_graph: False detaches after every step (test-time adaptation builds no outer graph at all) and keeps
    only the current weights: the result is then [params_0, params_steps], memory flat in ``steps``.
    functional_grad: use torch.func.grad (required under vmap) instead of torch.autograd.grad.
    proximal: lambda of the iMAML-style term lambda/2 * ||phi - theta||^2 added to the support loss.
    step_params(k): extra parameters used by the forward at inner step k only (MAML++ per-step norm weights).
    on_step(k, params_k): called with the weights after every step k = 1..steps (test-time scoring of each step).
    """
    anchor = {n: params[n].detach() if not keep_graph else params[n] for n in adapt_names}
    if not keep_graph:
        params = {n: (p.detach().requires_grad_(True) if n in anchor else p.detach()) for n, p in params.items()}
    trajectory = [params]
    for step in range(steps):
        params = inner_step(forward, params, adapt_names, x, y, ignore, step, lr_for, loss_fn, create_graph,
                            functional_grad=functional_grad, proximal=proximal, anchor=anchor,
                            step_params=step_params)
        if not keep_graph:
            params = {n: (p.detach().requires_grad_(True) if n in anchor else p) for n, p in params.items()}
            trajectory = trajectory[:1]  # no graph to keep: drop the previous step's weights
        trajectory.append(params)
        if on_step is not None:
            on_step(step + 1, params)
    return trajectory
