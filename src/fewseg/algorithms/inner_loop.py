"""The functional inner loop shared by every algorithm (torch.func.functional_call + gradients).

``inner_loop`` takes parameters as a dict and returns the trajectory of adapted parameter dicts,
so the same code serves second-order MAML (``create_graph=True``), first-order variants
(gradients detached), plain adaptation at test time (``keep_graph=False``: nothing is tracked),
and the batched path under ``torch.func.vmap`` (``functional_grad=True``). What stays the same across the steps
of one loop (the network, which parameters move, their rates, the loss, the graph options) is one
:class:`InnerLoopSpec`; the data and the weights are the arguments.

Example:
    >>> import torch
    >>> from fewseg.algorithms.inner_loop import InnerLoopSpec, inner_loop
    >>> spec = InnerLoopSpec(forward=lambda p, x: p["w"] * x, adapt_names=("w",), lr_for=lambda k, n: 0.5,
    ...                      loss_fn=lambda out, y, ignore: ((out - y) ** 2).mean())
    >>> w = torch.tensor(0.0, requires_grad=True)
    >>> trajectory = inner_loop(spec, {"w": w}, torch.ones(1), torch.ones(1), None, steps=2)
    >>> [round(p["w"].item(), 2) for p in trajectory]
    [0.0, 1.0, 1.0]
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call

from fewseg.losses import LossFn

Params = dict[str, torch.Tensor]
# lr_for(step, name) -> a float or a tensor broadcastable to the parameter (per-element / per-tensor rate)
LearningRates = Callable[[int, str], "float | torch.Tensor"]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]


def make_forward(model: torch.nn.Module, buffers: Mapping[str, torch.Tensor]) -> Forward:
    """forward(params, images [N,3,H,W]) -> logits [N,1,H,W], running ``model`` with the given weights.

    Entries that are the model's own tensors (as they were when the forward was made) are not swapped in: the same
    numbers, without re-binding every tensor of a large frozen encoder at every call (hence :func:`detached`).
    Without tied weights functional_call's untying walk over every module is skipped too."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    # tied weights (one tensor under two names) need functional_call's untying walk over every module; others not
    tied = len(list(model.named_parameters(remove_duplicate=False))) + len(list(model.named_buffers(
        remove_duplicate=False))) != len(own)

    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        swap = {k: v for k, v in {**params, **buffers}.items() if own.get(k) is not v}
        return functional_call(model, swap, (x,), strict=False, tie_weights=tied)

    return forward


def detached(t: torch.Tensor) -> torch.Tensor:
    """``t.detach()``, or ``t`` itself when it takes no part in autograd (a frozen weight): the same numbers, and
    the very tensor, so :func:`make_forward` need not swap it in."""
    return t.detach() if t.requires_grad else t


@dataclass(frozen=True)
class InnerLoopSpec:
    """How an inner loop steps, the same at every step.

    forward(params, x) -> logits; only ``adapt_names`` move, at rate ``lr_for(step, name)``, on ``loss_fn``.
    create_graph: keep second-order terms (MAML); False drops them (first order: d phi / d theta = I).
    keep_graph: False detaches after every step (test-time adaptation builds no outer graph at all) and keeps
    only the current weights: the trajectory is then [params_0, params_steps], memory flat in the steps.
    functional_grad: use torch.func.grad (required under vmap) instead of torch.autograd.grad.
    proximal: lambda of the iMAML-style term lambda/2 * ||phi - theta||^2 added to the support loss.
    step_params(k): extra parameters used by the forward at inner step k only (MAML++ per-step norm weights).
    """

    forward: Forward
    adapt_names: Sequence[str]
    lr_for: LearningRates
    loss_fn: LossFn
    create_graph: bool = False
    keep_graph: bool = True
    functional_grad: bool = False
    proximal: float = 0.0
    step_params: Callable[[int], Params] | None = None


def inner_step(spec: InnerLoopSpec, params: Params, x: torch.Tensor, y: torch.Tensor, ignore: torch.Tensor | None,
               step: int, anchor: Params | None = None) -> Params:
    """One SGD step on the support loss at inner step ``step``: params -> new params (only ``spec.adapt_names``
    move). anchor: theta of the proximal term (required when ``spec.proximal`` > 0). Without ``spec.create_graph``
    the gradient is detached (first order: d new / d params = I)."""
    def support_loss(adapted: Params, shared: Params) -> torch.Tensor:
        extra = spec.step_params(step) if spec.step_params is not None else {}
        loss = spec.loss_fn(spec.forward({**shared, **adapted, **extra}, x), y, ignore)
        if spec.proximal:
            loss = loss + 0.5 * spec.proximal * sum(((adapted[n] - anchor[n]) ** 2).sum() for n in adapted)
        return loss

    adapted = {n: params[n] for n in spec.adapt_names}
    with torch.enable_grad():
        if spec.functional_grad:
            grads = torch.func.grad(support_loss)(adapted, params)
        else:
            loss = support_loss(adapted, params)
            values = torch.autograd.grad(loss, list(adapted.values()), create_graph=spec.create_graph)
            grads = dict(zip(adapted, values))
        new = dict(params)
        for n in spec.adapt_names:
            g = grads[n] if spec.create_graph else grads[n].detach()
            new[n] = params[n] - spec.lr_for(step, n) * g
    return new


def inner_loop(spec: InnerLoopSpec, params: Params, x: torch.Tensor, y: torch.Tensor, ignore: torch.Tensor | None,
               steps: int, on_step: Callable[[int, Params], None] | None = None) -> list[Params]:
    """Take ``steps`` SGD steps on the support loss; return [params_0, ..., params_steps] (with
    ``spec.keep_graph=False``: [params_0, params_steps]).

    x [S,3,H,W] (or what ``spec.forward`` takes), y [S,1,H,W], ignore [S,1,H,W] | None. Only ``spec.adapt_names``
    change; the others are shared. on_step(k, params_k): called with the weights after every step k = 1..steps
    (test-time scoring of each step).
    """
    keep_graph = spec.keep_graph
    anchor = {n: params[n].detach() if not keep_graph else params[n] for n in spec.adapt_names}
    if not keep_graph:
        params = {n: (p.detach().requires_grad_(True) if n in anchor else detached(p)) for n, p in params.items()}
    trajectory = [params]
    for step in range(steps):
        params = inner_step(spec, params, x, y, ignore, step, anchor=anchor)
        if not keep_graph:
            params = {n: (p.detach().requires_grad_(True) if n in anchor else p) for n, p in params.items()}
            trajectory = trajectory[:1]  # no graph to keep: drop the previous step's weights
        trajectory.append(params)
        if on_step is not None:
            on_step(step + 1, params)
    return trajectory
