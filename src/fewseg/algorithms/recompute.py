"""Inner-loop recomputation (``inner_checkpoint``): one task's exact meta-gradient with one inner step's graph
alive at a time, optionally ``checkpoint_images`` images at a time.

(Not to be confused with saved checkpoints, ``fewseg.engine.checkpoint``.)

Forward: the K inner steps with no graph, keeping only the adapted weights phi_0..phi_K. Backward: the outer
loss's gradient w.r.t. every phi_k and the meta-parameters; then for k = K-1..0 step k's graph is rebuilt from
phi_k alone (the last step's is kept from the forward) and the cotangent pulled through it:
v_k = v_{k+1} (d phi_{k+1} / d phi_k) + dL/d phi_k, meta-parameter terms (shared weights, learned rates,
per-step norms, the proximal anchor) accumulated on the way. v_0 is the gradient w.r.t. theta's adapted weights.
The same numbers as backpropagating through the unrolled loop.

With ``checkpoint_images`` = m, every pass runs m images at a time: each image's logits are first recorded
without a graph, then piece j's loss is the whole set's loss with only its own images' logits live (minus the
all-fixed loss for j > 0, so terms without logits count once). Summed over the pieces that is the exact gradient
of any loss, and d phi_{k+1} / d phi_k = I - alpha * sum_j H_j when the support loss sums per-image terms
(every built-in loss does); one piece's graph is alive at a time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fewseg.algorithms.inner_loop import Params, inner_step
from fewseg.data.episode import Episode

if TYPE_CHECKING:
    from fewseg.algorithms.base import MetaAlgorithm


def task_gradients(algo: MetaAlgorithm, ep: Episode, meta_params: list[torch.Tensor], iteration: int, draw: int
                   ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """One task's outer loss and its gradient w.r.t. ``meta_params``, by inner-loop recomputation."""
    params, forward = algo.task_params(iteration, draw)
    names = algo.adapt_names
    x, y, ign = ep.support_x, ep.support_y, ep.support_ignore
    second = algo.use_second_order(iteration)
    size = algo.checkpoint_images
    pieced = 0 < size < max(x.shape[0], ep.query_x.shape[0])

    def pieces(n: int) -> list[tuple[int, int]]:
        m = size if pieced else n
        return [(lo, min(lo + m, n)) for lo in range(0, n, m)]

    support_logits: list[torch.Tensor] = []  # [S,1,H,W] at phi_k, no graph (pieced only)

    def step(k: int, phi: Params, create_graph: bool, piece: tuple[int, int] | None = None) -> Params:
        loss_fn, proximal, xs = algo.loss_fn, algo.proximal, x
        if piece is not None:
            lo, hi = piece
            fixed = support_logits[k]

            def loss_fn(logits, _target, _ignore):  # the whole set's loss, only this piece's logits live
                return algo.loss_fn(torch.cat([fixed[:lo], logits, fixed[hi:]]), y, ign)
            xs, proximal = x[lo:hi], (algo.proximal if lo == 0 else 0.0)  # the proximal term once
        spec = algo.inner_spec(forward, loss_fn=loss_fn, create_graph=create_graph, proximal=proximal)
        return inner_step(spec, {**params, **phi}, xs, y, ign, k, anchor=params)

    def pieced_step(k: int, phi: Params) -> Params:  # first order, one piece's graph at a time
        with torch.no_grad():
            support_logits.append(forward({**params, **phi, **algo.step_params(k)}, x))
        delta = {n: torch.zeros_like(phi[n]) for n in names}
        for piece in pieces(x.shape[0]):
            new = step(k, phi, create_graph=False, piece=piece)
            for n in names:
                delta[n] += (new[n] - phi[n]).detach()
        return {n: phi[n].detach() + delta[n] for n in names}

    leaves = [{n: params[n].detach().requires_grad_(True) for n in names}]
    keep_last = second and not pieced  # the last step's graph is built in the forward and kept
    kept = None
    for k in range(algo.inner_steps):  # forward: no graph kept, only phi_k
        last = k == algo.inner_steps - 1
        new = pieced_step(k, leaves[-1]) if pieced else step(k, leaves[-1], create_graph=keep_last and last)
        kept = new if last and keep_last else None
        leaves.append({n: new[n].detach().requires_grad_(True) for n in names})
    trajectory = [{**params, **phi} for phi in leaves]
    flat = [t for phi in leaves for t in phi.values()]
    loss, grads = query_gradients(algo, forward, trajectory, ep, flat + meta_params, pieces, iteration)
    n_adapt = len(names)
    direct = [dict(zip(names, grads[i * n_adapt:(i + 1) * n_adapt])) for i in range(len(leaves))]
    total = list(grads[len(flat):])

    def zero_if_none(g, like):
        return torch.zeros_like(like) if g is None else g

    v = {n: zero_if_none(direct[-1][n], leaves[-1][n]) for n in names}
    for k in range(algo.inner_steps - 1, -1, -1):  # backward: rebuild step k, pull v through it
        pulled: list[torch.Tensor | None] = [None] * (n_adapt + len(meta_params))
        for j, piece in enumerate(pieces(x.shape[0])):
            with torch.enable_grad():
                new = kept if kept is not None else step(k, leaves[k], second, piece if pieced else None)
                kept = None
                # piece j > 0 adds only its gradient term: phi_{k+1} - phi_k = -alpha * g_j
                outs = [new[n] if j == 0 else new[n] - leaves[k][n] for n in names]
                add_into(pulled, torch.autograd.grad(outs, list(leaves[k].values()) + meta_params,
                                                     grad_outputs=[v[n] for n in names], allow_unused=True,
                                                     retain_graph=True))  # params' own graph (MR-MAML) stays
            del new, outs
        v = {n: zero_if_none(pulled[i], leaves[k][n]) + zero_if_none(direct[k][n], leaves[k][n])
             for i, n in enumerate(names)}
        add_into(total, pulled[n_adapt:])
    with torch.enable_grad():  # phi_0 = theta's adapted weights (possibly a function of the meta-parameters)
        into_theta = torch.autograd.grad([params[n] for n in names], meta_params,
                                         grad_outputs=[v[n] for n in names], allow_unused=True)
    add_into(total, into_theta)
    return loss, total


def query_gradients(algo: MetaAlgorithm, forward, trajectory: list[Params], ep: Episode, wrt: list[torch.Tensor],
                    pieces, iteration: int) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The outer (query) loss and its gradient w.r.t. ``wrt``, the query images in ``pieces(Q)``."""
    query_pieces = pieces(ep.query_x.shape[0])
    if len(query_pieces) == 1:
        with torch.enable_grad():
            loss = algo.query_loss(forward, trajectory, ep, iteration)
            grads = torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=True)
        return loss.detach(), list(grads)
    recorded: list[torch.Tensor] = []  # every forward call's logits, in call order, no graph

    def recording(p, images):
        recorded.append(forward(p, images))
        return recorded[-1]

    with torch.no_grad():
        loss = algo.query_loss(recording, trajectory, ep, iteration)

    def piece_forward(piece):
        calls = iter(recorded)

        def fwd(p, images):
            fixed = next(calls)
            if piece is None:
                return fixed
            lo, hi = min(piece[0], images.shape[0]), min(piece[1], images.shape[0])
            if lo == hi:
                return fixed
            return torch.cat([fixed[:lo], forward(p, images[lo:hi]), fixed[hi:]])
        return fwd

    grads: list[torch.Tensor | None] = [None] * len(wrt)
    for j, piece in enumerate(query_pieces):
        with torch.enable_grad():
            piece_loss = algo.query_loss(piece_forward(piece), trajectory, ep, iteration)
            if j > 0:  # terms that do not go through the logits (if any) count once
                piece_loss = piece_loss - algo.query_loss(piece_forward(None), trajectory, ep, iteration)
            add_into(grads, torch.autograd.grad(piece_loss, wrt, allow_unused=True, retain_graph=True))
        del piece_loss
    return loss, grads


def add_into(into: list, extra) -> None:
    """into[i] += extra[i] where extra[i] is not None (into[i] may start as None)."""
    for i, g in enumerate(extra):
        if g is not None:
            into[i] = g if into[i] is None else into[i] + g
