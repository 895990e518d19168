"""MetaAlgorithm: the shared machinery of the MAML family.

Subclasses change one thing each (which parameters adapt, the inner rates, the outer loss, the update),
never the inner loop itself (``fewseg.algorithms.inner_loop``).

Example:
    >>> algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn"), inner_steps=5, inner_lr=0.01)
    >>> loss = algo.outer_loss(batch); loss.backward()       # meta-gradient in algo.model's .grad
    >>> adapted = algo.adapt(support_x, support_y)           # one task: [S,3,H,W], [S,1,H,W]
    >>> probs = adapted.predict(query_x)                     # [N,1,H,W] foreground probabilities
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from fewseg.algorithms.inner_loop import Params, inner_loop, inner_step, make_forward
from fewseg.data.episode import Episode, MetaBatch, check_images, check_masks
from fewseg.losses import get_loss

STRATEGIES = ("auto", "loop", "vmap")
WEIGHTINGS = ("uniform", "hard", "class-frequency")


def param_key(name: str) -> str:
    """A parameter name usable as a ParameterDict key ("down.0.weight" -> "down__0__weight")."""
    return name.replace(".", "__")


def default_strategy(device: torch.device) -> str:
    """Per-device default chosen by benchmarks/meta_step.py: a per-task loop on CPU, vmap on CUDA."""
    return "vmap" if device.type == "cuda" else "loop"


def check_norm_layers(model: nn.Module, batchnorm: str) -> None:
    """BatchNorm needs an explicit policy so running statistics never leak from query images.

    batchnorm="error" (default): refuse models with BatchNorm. "batch-stats": every BatchNorm uses the
    statistics of the current batch only (train and test, as in the original MAML), no running stats.
    """
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    if batchnorm == "batch-stats":
        torch.func.replace_all_batch_norm_modules_(model)
        return
    if batchnorm != "error":
        raise ValueError(f"batchnorm must be 'error' or 'batch-stats', got {batchnorm!r}")
    raise ValueError(f"model has BatchNorm layer {bns[0]!r}: use GroupNorm, or pass batchnorm='batch-stats' "
                     "(per-batch statistics, no running statistics)")


@dataclass
class Adapted:
    """A model with task-adapted weights. ``predict(images [N,3,H,W]) -> [N,1,H,W]`` probabilities."""

    forward: Callable[[Params, torch.Tensor], torch.Tensor]
    params: Params
    chunk: int = 16

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        check_images("images", images, 4)
        return torch.cat([self.forward(self.params, images[i:i + self.chunk])
                          for i in range(0, images.shape[0], self.chunk)])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(images))


class MetaAlgorithm(nn.Module):
    """MAML with exact second-order meta-gradients (``first_order=True`` drops them).

    outer loss = mean over the T tasks of the query loss after ``inner_steps`` SGD steps (rate ``inner_lr``)
    on each task's support loss, taken from the model's current parameters.

    strategy: "loop" runs tasks one at a time (backward per task in ``meta_backward``: memory flat in T);
    "vmap" batches ``task_chunk`` tasks with torch.func.vmap; "auto" picks per device.
    adapt_pattern: regex over parameter names; only matching parameters adapt in the inner loop (ANIL).
    proximal: iMAML-style lambda/2 ||phi - theta||^2 in the inner loss.
    task_weighting: how the tasks' query losses are combined in the outer loss (see ``task_weights``):
    "uniform" (mean), "hard" (softmax of the losses / ``weight_temperature``: hard tasks count more) or
    "class-frequency" (weights proportional to n_c ** -``frequency_power``, n_c = training images of the
    task's class; for long-tailed class sampling). Weights are constants unless ``weight_grad=True``.
    inner_checkpoint: in ``meta_backward``, keep only each inner step's adapted weights and rebuild one step's
    graph at a time during the backward (tasks one at a time): the same meta-gradient, with memory that no
    longer grows with ``inner_steps``, for one extra forward/backward per inner step (see
    ``_task_grads_recomputed``). checkpoint_images: with ``inner_checkpoint``, run every pass (inner steps,
    their rebuilds, the query loss) this many images at a time (0: whole sets): peak memory is one piece's
    graph; exact for support losses that sum per-image terms (every built-in loss does).
    """

    name = "maml"
    supports_inner_checkpoint = True

    def __init__(self, model: nn.Module, inner_steps: int = 5, inner_lr: float = 0.01, first_order: bool = False,
                 loss: str = "bce", strategy: str = "auto", task_chunk: int = 0, adapt_pattern: str | None = None,
                 proximal: float = 0.0, eval_steps: int | None = None, batchnorm: str = "error",
                 task_weighting: str = "uniform", weight_temperature: float = 1.0, weight_grad: bool = False,
                 frequency_power: float = 1.0, inner_checkpoint: bool = False, checkpoint_images: int = 0):
        super().__init__()
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        if inner_lr <= 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if task_weighting not in WEIGHTINGS:
            raise ValueError(f"task_weighting must be one of {WEIGHTINGS}, got {task_weighting!r}")
        if weight_temperature <= 0:
            raise ValueError(f"weight_temperature must be > 0, got {weight_temperature}")
        if inner_checkpoint and not self.supports_inner_checkpoint:
            raise ValueError(f"inner_checkpoint is not available for {self.name} (its meta-step keeps no "
                             f"inner-loop graph to checkpoint)")
        if inner_checkpoint and strategy == "vmap":
            raise ValueError("inner_checkpoint processes tasks one at a time: use strategy 'loop' or 'auto'")
        if (not isinstance(checkpoint_images, int) or isinstance(checkpoint_images, bool) or checkpoint_images < 0
                or (checkpoint_images and not inner_checkpoint)):
            raise ValueError(f"checkpoint_images must be an integer >= 0 and needs inner_checkpoint=True, got "
                             f"checkpoint_images={checkpoint_images}, inner_checkpoint={inner_checkpoint}")
        check_norm_layers(model, batchnorm)
        if checkpoint_images and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError("checkpoint_images needs per-image logits: BatchNorm with batch statistics mixes the "
                             "images of a batch (use GroupNorm, or checkpoint_images: 0)")
        self.model = model
        self.inner_steps, self.inner_lr, self.first_order = inner_steps, float(inner_lr), first_order
        self.loss_name, self.loss_fn = loss, get_loss(loss)
        self.strategy, self.task_chunk, self.proximal = strategy, task_chunk, float(proximal)
        self.eval_steps = inner_steps if eval_steps is None else eval_steps
        self.inner_checkpoint, self.checkpoint_images = bool(inner_checkpoint), int(checkpoint_images)
        names = [n for n, _ in model.named_parameters()]
        if adapt_pattern:
            self.adapt_names = [n for n in names if re.search(adapt_pattern, n)]
            if not self.adapt_names:
                raise ValueError(f"adapt_pattern {adapt_pattern!r} matches no parameter of the model "
                                 f"(names: {', '.join(names[:6])} ...)")
        else:
            self.adapt_names = names
        self.task_weighting, self.weight_temperature = task_weighting, float(weight_temperature)
        self.weight_grad, self.frequency_power = bool(weight_grad), float(frequency_power)
        self.class_counts: dict[int, int] = {}  # images per training class (class-frequency weighting)
        self.iteration = 0  # outer iteration, set by the trainer (annealing schedules read it)

    # --- pieces subclasses override -------------------------------------------------------------
    def lr_for(self, step: int, name: str) -> float | torch.Tensor:
        """Inner learning rate of parameter ``name`` at inner step ``step``."""
        return self.inner_lr

    def use_second_order(self) -> bool:
        return not self.first_order

    def step_params(self, step: int) -> Params:
        """Parameters that replace the model's at inner step ``step`` only (MAML++ per-step norms)."""
        return {}

    def at_step(self, params: Params, step: int) -> Params:
        extra = self.step_params(step)
        return {**params, **extra} if extra else params

    def query_loss(self, forward, trajectory: list[Params], ep: Episode) -> torch.Tensor:
        """The task's outer loss from its inner trajectory: query loss at the last step."""
        last = len(trajectory) - 1
        return self.loss_fn(forward(self.at_step(trajectory[last], last), ep.query_x), ep.query_y, ep.query_ignore)

    def outer_regulariser(self) -> torch.Tensor | None:
        """A term added once per meta-batch to the outer loss (MR-MAML's KL), or None."""
        return None

    def task_weights(self, losses: torch.Tensor, class_ids: list[int]) -> torch.Tensor:
        """Weights [T] (summing to 1) of the tasks' query losses [T] in the outer loss.

        Example:
            >>> algo.task_weighting = "hard"; algo.task_weights(torch.tensor([0.1, 0.5]), [3, 7])
            tensor([0.4013, 0.5987])
        """
        T = losses.shape[0]
        if self.task_weighting == "hard":
            w = torch.softmax(losses / self.weight_temperature, dim=0)
            return w if self.weight_grad else w.detach()
        if self.task_weighting == "class-frequency":
            missing = [c for c in class_ids if c not in self.class_counts]
            if missing or len(class_ids) != T:
                raise ValueError(f"task_weighting='class-frequency' needs the image count of every class; "
                                 f"unknown class(es) {missing or class_ids}")
            counts = torch.tensor([float(self.class_counts[c]) for c in class_ids], dtype=losses.dtype,
                                  device=losses.device)
            w = counts ** (-self.frequency_power)
            return w / w.sum()
        return torch.full_like(losses, 1.0 / T).detach()

    # --- shared machinery ------------------------------------------------------------------------
    def params_and_forward(self):
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        return params, make_forward(self.model, buffers)

    def _task_loss(self, forward, params: Params, ep: Episode, functional_grad: bool) -> torch.Tensor:
        trajectory = inner_loop(forward, params, self.adapt_names, ep.support_x, ep.support_y, ep.support_ignore,
                                self.inner_steps, self.lr_for, self.loss_fn, create_graph=self.use_second_order(),
                                functional_grad=functional_grad, proximal=self.proximal,
                                step_params=self.step_params)
        return self.query_loss(forward, trajectory, ep)

    def _resolve_chunk(self, batch: MetaBatch) -> int:
        strategy = self.strategy
        if strategy == "auto":
            strategy = default_strategy(batch.support_x.device)
        if strategy == "loop":
            return 1
        return self.task_chunk if self.task_chunk > 0 else batch.num_tasks

    def task_losses(self, batch: MetaBatch, start: int, end: int) -> torch.Tensor:
        """Outer losses [end-start] of tasks start..end-1, differentiable w.r.t. the meta-parameters."""
        params, forward = self.params_and_forward()
        if end - start == 1:
            return self._task_loss(forward, params, batch.task(start), functional_grad=False).reshape(1)

        def one(sx, sy, si, qx, qy, qi):
            return self._task_loss(forward, params, Episode(sx, sy, qx, qy, si, qi), functional_grad=True)

        sl = slice(start, end)
        s_ign = batch.support_ignore if batch.support_ignore is not None else torch.zeros_like(batch.support_y).bool()
        q_ign = batch.query_ignore if batch.query_ignore is not None else torch.zeros_like(batch.query_y).bool()
        return vmap(one, randomness="same")(batch.support_x[sl], batch.support_y[sl], s_ign[sl],
                                            batch.query_x[sl], batch.query_y[sl], q_ign[sl])

    def outer_loss(self, batch: MetaBatch) -> torch.Tensor:
        """Scalar meta-loss with the whole graph kept; ``.backward()`` gives the meta-gradient."""
        return self._whole_graph_loss(batch)[0]

    def _whole_graph_loss(self, batch: MetaBatch):
        chunk = self._resolve_chunk(batch)
        losses = torch.cat([self.task_losses(batch, s, min(s + chunk, batch.num_tasks))
                            for s in range(0, batch.num_tasks, chunk)])
        weights = self.task_weights(losses, batch.class_ids)
        loss = (weights * losses).sum()
        reg = self.outer_regulariser()
        return (loss if reg is None else loss + reg), losses, weights, reg

    def meta_backward(self, batch: MetaBatch) -> dict:
        """Accumulate the meta-gradient into ``.grad`` chunk by chunk (one chunk's graph alive at a time).

        Same gradient as ``outer_loss(batch).backward()``. Weights that do not depend on the losses (uniform,
        class-frequency) scale each chunk's backward; "hard" weights (constants, the default) are applied to
        per-task gradients kept until every loss is known (T copies of the gradient, not of the graph);
        weights with gradients (``weight_grad=True``) need every graph at once (memory grows with T).
        Returns logs: {"loss", "task_losses" [T], "task_weights" [T], "regulariser"?}.
        """
        if self.task_weighting == "hard" and self.weight_grad:
            loss, losses, weights, reg = self._whole_graph_loss(batch)
            loss.backward()
            logs = self._logs(losses.detach(), weights)
            if reg is not None:
                logs["regulariser"] = float(reg.detach())
                logs["loss"] += logs["regulariser"]
            return logs
        chunk = 1 if self.inner_checkpoint else self._resolve_chunk(batch)
        T = batch.num_tasks
        static = None if self.task_weighting == "hard" else self.task_weights(
            torch.zeros(T, dtype=batch.support_x.dtype, device=batch.support_x.device), batch.class_ids)
        params = [p for p in self.parameters() if p.requires_grad]
        per_task: list[list[torch.Tensor | None]] = []
        values = []
        for s in range(0, T, chunk):
            if self.inner_checkpoint:  # per-task gradients: constant weights now, "hard" ones below
                loss, grads = self._task_grads_recomputed(batch.task(s), params)
                if static is None:
                    per_task.append(grads)
                else:
                    for p, g in zip(params, grads):
                        if g is not None:
                            _add_to_grad(p, static[s] * g)
                values.append(loss.reshape(1))
                continue
            losses = self.task_losses(batch, s, min(s + chunk, T))
            if static is not None:
                (losses * static[s:s + losses.shape[0]]).sum().backward()
            else:
                for j in range(losses.shape[0]):
                    per_task.append(list(torch.autograd.grad(losses[j], params, retain_graph=j + 1 < losses.shape[0],
                                                             allow_unused=True)))
            values.append(losses.detach())
        losses = torch.cat(values)
        weights = static if static is not None else self.task_weights(losses, batch.class_ids)
        if per_task:
            for k, p in enumerate(params):
                parts = [w * g[k] for w, g in zip(weights, per_task) if g[k] is not None]
                if parts:
                    total = torch.stack(parts).sum(0)
                    _add_to_grad(p, total)
        logs = self._logs(losses, weights)
        reg = self.outer_regulariser()
        if reg is not None:
            reg.backward()
            logs["regulariser"] = float(reg.detach())
            logs["loss"] += logs["regulariser"]
        return logs

    def _task_grads_recomputed(self, ep: Episode, meta_params: list[torch.Tensor]
                               ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """One task's outer loss and its gradient w.r.t. ``meta_params``, by inner-loop checkpointing.

        Forward: the K inner steps with no graph, keeping only the adapted weights phi_0..phi_K. Backward: the
        outer loss's gradient w.r.t. every phi_k and the meta-parameters; then for k = K-1..0 step k's graph is
        rebuilt from phi_k alone (the last step's is kept from the forward) and the cotangent pulled through it:
        v_k = v_{k+1} (d phi_{k+1} / d phi_k) + dL/d phi_k, meta-parameter terms (shared weights, learned
        rates, per-step norms, the proximal anchor) accumulated on the way. v_0 is the gradient w.r.t. theta's
        adapted weights. The same numbers as backpropagating through the unrolled loop, one step's graph alive.

        With ``checkpoint_images`` = m, every pass runs m images at a time: each image's logits are first
        recorded without a graph, then piece j's loss is the whole set's loss with only its own images' logits
        live (minus the all-fixed loss for j > 0, so terms without logits count once). Summed over the pieces
        that is the exact gradient of any loss, and d phi_{k+1} / d phi_k = I - alpha * sum_j H_j when the
        support loss sums per-image terms; one piece's graph is alive at a time.
        """
        params, forward = self.params_and_forward()
        names = self.adapt_names
        x, y, ign = ep.support_x, ep.support_y, ep.support_ignore
        second = self.use_second_order()
        size = self.checkpoint_images
        pieced = 0 < size < max(x.shape[0], ep.query_x.shape[0])

        def pieces(n: int) -> list[tuple[int, int]]:
            m = size if pieced else n
            return [(lo, min(lo + m, n)) for lo in range(0, n, m)]

        support_logits: list[torch.Tensor] = []  # [S,1,H,W] at phi_k, no graph (pieced only)

        def step(k: int, phi: Params, create_graph: bool, piece: tuple[int, int] | None = None) -> Params:
            loss_fn, proximal, xs = self.loss_fn, self.proximal, x
            if piece is not None:
                lo, hi = piece
                fixed = support_logits[k]

                def loss_fn(logits, _target, _ignore):  # the whole set's loss, only this piece's logits live
                    return self.loss_fn(torch.cat([fixed[:lo], logits, fixed[hi:]]), y, ign)
                xs, proximal = x[lo:hi], (self.proximal if lo == 0 else 0.0)  # the proximal term once
            return inner_step(forward, {**params, **phi}, names, xs, y, ign, k, self.lr_for, loss_fn,
                              create_graph, proximal=proximal, anchor=params, step_params=self.step_params)

        def pieced_step(k: int, phi: Params) -> Params:  # first order, one piece's graph at a time
            with torch.no_grad():
                support_logits.append(forward({**params, **phi, **self.step_params(k)}, x))
            delta = {n: torch.zeros_like(phi[n]) for n in names}
            for piece in pieces(x.shape[0]):
                new = step(k, phi, create_graph=False, piece=piece)
                for n in names:
                    delta[n] += (new[n] - phi[n]).detach()
            return {n: phi[n].detach() + delta[n] for n in names}

        leaves = [{n: params[n].detach().requires_grad_(True) for n in names}]
        keep_last = second and not pieced  # the last step's graph is built in the forward and kept
        kept = None
        for k in range(self.inner_steps):  # forward: no graph kept, only phi_k
            last = k == self.inner_steps - 1
            new = pieced_step(k, leaves[-1]) if pieced else step(k, leaves[-1], create_graph=keep_last and last)
            kept = new if last and keep_last else None
            leaves.append({n: new[n].detach().requires_grad_(True) for n in names})
        trajectory = [{**params, **phi} for phi in leaves]
        flat = [t for phi in leaves for t in phi.values()]
        loss, grads = self._query_grads(forward, trajectory, ep, flat + meta_params, pieces)
        n_adapt = len(names)
        direct = [dict(zip(names, grads[i * n_adapt:(i + 1) * n_adapt])) for i in range(len(leaves))]
        total = list(grads[len(flat):])

        def zero_if_none(g, like):
            return torch.zeros_like(like) if g is None else g

        v = {n: zero_if_none(direct[-1][n], leaves[-1][n]) for n in names}
        for k in range(self.inner_steps - 1, -1, -1):  # backward: rebuild step k, pull v through it
            pulled: list[torch.Tensor | None] = [None] * (n_adapt + len(meta_params))
            for j, piece in enumerate(pieces(x.shape[0])):
                with torch.enable_grad():
                    new = kept if kept is not None else step(k, leaves[k], second, piece if pieced else None)
                    kept = None
                    # piece j > 0 adds only its gradient term: phi_{k+1} - phi_k = -alpha * g_j
                    outs = [new[n] if j == 0 else new[n] - leaves[k][n] for n in names]
                    _add(pulled, torch.autograd.grad(outs, list(leaves[k].values()) + meta_params,
                                                     grad_outputs=[v[n] for n in names], allow_unused=True,
                                                     retain_graph=True))  # params' own graph (MR-MAML) stays
                del new, outs
            v = {n: zero_if_none(pulled[i], leaves[k][n]) + zero_if_none(direct[k][n], leaves[k][n])
                 for i, n in enumerate(names)}
            _add(total, pulled[n_adapt:])
        with torch.enable_grad():  # phi_0 = theta's adapted weights (possibly a function of the meta-parameters)
            into_theta = torch.autograd.grad([params[n] for n in names], meta_params,
                                             grad_outputs=[v[n] for n in names], allow_unused=True)
        _add(total, into_theta)
        return loss, total

    def _query_grads(self, forward, trajectory: list[Params], ep: Episode, wrt: list[torch.Tensor], pieces
                     ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The outer (query) loss and its gradient w.r.t. ``wrt``, the query images in ``pieces(Q)``."""
        query_pieces = pieces(ep.query_x.shape[0])
        if len(query_pieces) == 1:
            with torch.enable_grad():
                loss = self.query_loss(forward, trajectory, ep)
                grads = torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=True)
            return loss.detach(), list(grads)
        recorded: list[torch.Tensor] = []  # every forward call's logits, in call order, no graph

        def recording(p, images):
            recorded.append(forward(p, images))
            return recorded[-1]

        with torch.no_grad():
            loss = self.query_loss(recording, trajectory, ep)

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
                piece_loss = self.query_loss(piece_forward(piece), trajectory, ep)
                if j > 0:  # terms that do not go through the logits (if any) count once
                    piece_loss = piece_loss - self.query_loss(piece_forward(None), trajectory, ep)
                _add(grads, torch.autograd.grad(piece_loss, wrt, allow_unused=True, retain_graph=True))
            del piece_loss
        return loss, grads

    @staticmethod
    def _logs(losses: torch.Tensor, weights: torch.Tensor) -> dict:
        return {"loss": float((weights.detach() * losses).sum()), "task_losses": losses.tolist(),
                "task_weights": weights.detach().tolist()}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              lr: float | None = None, support_ignore: torch.Tensor | None = None) -> Adapted:
        """Adapt to one task (no outer graph): support_x [S,3,H,W], support_y [S,1,H,W] in {0,1}."""
        support_y, support_ignore, steps, rates = self._adapt_inputs(support_x, support_y, steps, lr, support_ignore)
        params, forward = self.mean_params_and_forward()
        with torch.no_grad():
            fixed = {k: {n: p.detach() for n, p in self.step_params(min(k, self.inner_steps)).items()}
                     for k in range(steps + 1)}
        trajectory = inner_loop(forward, params, self.adapt_names, support_x, support_y, support_ignore, steps,
                                lambda k, n: rates[(k, n)], self.loss_fn, create_graph=False, keep_graph=False,
                                proximal=self.proximal, step_params=fixed.__getitem__)
        final = {n: p.detach() for n, p in {**trajectory[-1], **fixed[steps]}.items()}
        return Adapted(forward, final)

    def _adapt_inputs(self, support_x, support_y, steps, lr, support_ignore):
        """Checked (support_y, support_ignore), the step count and the fixed rates {(step, name): rate}."""
        check_images("support_x", support_x, 4)
        check_masks("support_y", support_y, support_x)
        if support_ignore is not None:
            check_masks("support_ignore", support_ignore, support_x, binary=False)
            support_ignore = support_ignore.bool()
        steps = self.eval_steps if steps is None else steps
        lr_for = self.lr_for if lr is None else (lambda step, name: lr)
        with torch.no_grad():
            rates = {(k, n): _detach(lr_for(min(k, self.inner_steps - 1) if self.inner_steps else k, n))
                     for k in range(steps) for n in self.adapt_names}
        return support_y.to(support_x.dtype), support_ignore, steps, rates

    def mean_params_and_forward(self):
        """The deterministic weights used at test time (MR-MAML: the posterior means)."""
        return self.params_and_forward()

    def extra_state(self) -> dict:
        """JSON-able algorithm state saved in checkpoints beside the tensors (e.g. the iteration)."""
        return {"iteration": self.iteration, "class_counts": {str(c): n for c, n in self.class_counts.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.iteration = int(state.get("iteration", 0))
        self.class_counts = {int(c): int(n) for c, n in state.get("class_counts", {}).items()}


def _add(into: list, extra) -> None:
    """into[i] += extra[i] where extra[i] is not None (into[i] may start as None)."""
    for i, g in enumerate(extra):
        if g is not None:
            into[i] = g if into[i] is None else into[i] + g


def _add_to_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    p.grad = g if p.grad is None else p.grad + g


def _detach(v):
    return v.detach() if isinstance(v, torch.Tensor) else v
