"""How a meta-step runs the T tasks of a meta-batch: one at a time, or ``task_chunk`` at a time under vmap,
with only one chunk's graph alive while the meta-gradient accumulates into ``.grad``.

The mathematics (inner loop, query loss, task weights) belongs to the algorithm; this module only decides the
order of the passes. ``draw`` numbers the chunks of one meta-step (stochastic algorithms seed their noise with it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.func import vmap

from fewseg.algorithms.recompute import task_gradients
from fewseg.data.episode import Episode, MetaBatch
from fewseg.distributed import SINGLE, ProcessGroup

if TYPE_CHECKING:
    from fewseg.algorithms.base import MetaAlgorithm


def default_strategy(device: torch.device) -> str:
    """Per-device default chosen by benchmarks/meta_step.py: a per-task loop on CPU, vmap on CUDA."""
    return "vmap" if device.type == "cuda" else "loop"


def chunk_size(strategy: str, task_chunk: int, device: torch.device, num_tasks: int) -> int:
    """Tasks per pass: 1 for the loop, ``task_chunk`` (0 = all) for vmap; "auto" picks per device."""
    if strategy == "auto":
        strategy = default_strategy(device)
    if strategy == "loop":
        return 1
    return task_chunk if task_chunk > 0 else num_tasks


def chunk_losses(algo: MetaAlgorithm, batch: MetaBatch, start: int, end: int, iteration: int,
                 draw: int) -> torch.Tensor:
    """Outer losses [end-start] of tasks start..end-1, differentiable w.r.t. the meta-parameters."""
    params, forward = algo.task_params(iteration, draw)
    if end - start == 1:
        return algo.task_loss(forward, params, batch.task(start), iteration, functional_grad=False).reshape(1)

    def one(sx, sy, si, qx, qy, qi):
        return algo.task_loss(forward, params, Episode(sx, sy, qx, qy, si, qi), iteration, functional_grad=True)

    sl = slice(start, end)
    s_ign = batch.support_ignore if batch.support_ignore is not None else torch.zeros_like(batch.support_y).bool()
    q_ign = batch.query_ignore if batch.query_ignore is not None else torch.zeros_like(batch.query_y).bool()
    return vmap(one, randomness="same")(batch.support_x[sl], batch.support_y[sl], s_ign[sl],
                                        batch.query_x[sl], batch.query_y[sl], q_ign[sl])


def whole_graph_loss(algo: MetaAlgorithm, batch: MetaBatch, iteration: int):
    """(outer loss, task losses [T], task weights [T], regulariser | None) with every graph kept."""
    chunk = chunk_size(algo.strategy, algo.task_chunk, batch.support_x.device, batch.num_tasks)
    losses = torch.cat([chunk_losses(algo, batch, s, min(s + chunk, batch.num_tasks), iteration, draw)
                        for draw, s in enumerate(range(0, batch.num_tasks, chunk))])
    weights = algo.weighting(losses, batch.class_ids)
    loss = (weights * losses).sum()
    reg = algo.outer_regulariser()
    return (loss if reg is None else loss + reg), losses, weights, reg


def accumulate_meta_gradient(algo: MetaAlgorithm, batch: MetaBatch, iteration: int,
                             group: ProcessGroup = SINGLE) -> dict:
    """Add d(outer loss)/d(meta-parameters) into ``.grad``, one chunk's graph alive at a time.

    Constant weights (uniform, class-frequency) scale each chunk's backward; "hard" weights (constants) are
    applied to per-task gradients kept until every loss is known (T copies of the gradient, not of the graph);
    weights with gradients (``weight_grad=True``) need every graph at once (memory grows with T).
    With several ranks (``group``) this rank runs only its block of tasks; weights and logs are those of the
    whole batch, and the caller sums ``.grad`` across ranks.
    Returns logs: {"loss", "task_losses" [T], "task_weights" [T], "regulariser"?}.
    """
    if algo.weighting.needs_every_graph:
        if group.world > 1:
            raise ValueError("weight_grad=True differentiates the weights of every task at once: it needs all "
                             "tasks in one process (run on one rank, or drop weight_grad)")
        loss, losses, weights, reg = whole_graph_loss(algo, batch, iteration)
        loss.backward()
        return _logs(losses.detach(), weights, reg)
    T = batch.num_tasks
    chunk = 1 if algo.inner_checkpoint else chunk_size(algo.strategy, algo.task_chunk, batch.support_x.device, T)
    static = algo.weighting.constant(T, batch.class_ids, batch.support_x)
    params = [p for p in algo.parameters() if p.requires_grad]
    mine = group.shard(T)
    per_task: list[tuple[int, list[torch.Tensor | None]]] = []  # "hard": (task, its gradient) until all known
    values = []
    for s in range(mine.start, mine.stop, chunk):
        end, draw = min(s + chunk, mine.stop), s // chunk
        if algo.inner_checkpoint:
            loss, grads = task_gradients(algo, batch.task(s), params, iteration, draw)
            if static is None:
                per_task.append((s, grads))
            else:
                for p, g in zip(params, grads):
                    if g is not None:
                        add_to_grad(p, static[s] * g)
            values.append(loss.reshape(1))
            continue
        losses = chunk_losses(algo, batch, s, end, iteration, draw)
        if static is not None:
            (losses * static[s:s + losses.shape[0]]).sum().backward()
        else:
            for j in range(losses.shape[0]):
                per_task.append((s + j, list(torch.autograd.grad(losses[j], params, retain_graph=j + 1 < losses.shape[0],
                                                                 allow_unused=True))))
        values.append(losses.detach())
    losses = torch.cat(values) if group.world == 1 else _whole_batch(values, mine, T, group, batch.support_x)
    weights = static if static is not None else algo.weighting(losses, batch.class_ids)
    for k, p in enumerate(params):
        parts = [weights[i] * g[k] for i, g in per_task if g[k] is not None]
        if parts:
            add_to_grad(p, torch.stack(parts).sum(0))
    reg = algo.outer_regulariser()
    if reg is not None and group.is_main:  # once per meta-batch, not once per rank
        reg.backward()
    return _logs(losses, weights, reg)


def _whole_batch(values: list[torch.Tensor], mine: range, T: int, group: ProcessGroup,
                 like: torch.Tensor) -> torch.Tensor:
    """The losses [T] of every task of the batch, from each rank's block (a sum of zeros elsewhere: exact)."""
    full = torch.zeros(T, dtype=like.dtype)
    if values:
        full[mine.start:mine.stop] = torch.cat(values).detach().cpu().to(like.dtype)
    return group.sum_(full).to(like.device)


def _logs(losses: torch.Tensor, weights: torch.Tensor, reg: torch.Tensor | None) -> dict:
    logs = {"loss": float((weights.detach() * losses).sum()), "task_losses": losses.tolist(),
            "task_weights": weights.detach().tolist()}
    if reg is not None:
        logs["regulariser"] = float(reg.detach())
        logs["loss"] += logs["regulariser"]
    return logs


def add_to_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    p.grad = g if p.grad is None else p.grad + g
