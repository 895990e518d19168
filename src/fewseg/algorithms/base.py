"""MetaAlgorithm: MAML, and the hooks through which the rest of the family changes one thing each.

outer loss(theta) = sum_i w_i * L_query_i(phi_i),  phi_i = K SGD steps (rate alpha) on task i's support loss
from theta. ``meta_backward(batch, iteration=i)`` adds its gradient into ``.grad`` (second order unless
``first_order``); an ordinary torch optimiser step on ``algo.parameters()`` is the outer update (rate beta).
The outer iteration is an explicit argument: schedules (MAML++) and noise (MR-MAML) read it, nothing else does.

A task: ``task_start`` (its starting weights from its support set), ``inner_view`` (what is computed once per
task: the encoder's features when no encoder parameter adapts, option ``cache_encoder``), the inner loop, then
``query_loss``. Test-time adaptation (``adapt_run``) is built from the same hooks plus ``adapt_steps`` (the inner
optimiser): a new algorithm overrides a hook, never the wrapping.

Elsewhere: the inner loop (``inner_loop``), task weights (``weighting``), how tasks are batched
(``execution``), inner-loop recomputation (``recompute``), the option declarations (``options``).

Example:
    >>> import torch, fewseg
    >>> model = fewseg.create_model("seed-cnn", width=4)
    >>> algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.1)
    >>> batch = fewseg.MetaBatch(torch.rand(2, 2, 3, 16, 16), torch.ones(2, 2, 1, 16, 16),
    ...                          torch.rand(2, 2, 3, 16, 16), torch.zeros(2, 2, 1, 16, 16))
    >>> logs = algo.meta_backward(batch, iteration=0)           # meta-gradient now in .grad
    >>> sorted(logs)
    ['loss', 'task_losses', 'task_weights']
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from fewseg.algorithms.adapted import Adapted
from fewseg.algorithms.execution import accumulate_meta_gradient, whole_graph_loss
from fewseg.algorithms.inner_loop import Forward, InnerLoopSpec, Params, detached, inner_loop, make_forward
from fewseg.algorithms.options import CORE_OPTIONS, check_core_values, resolve_options
from fewseg.algorithms.test_time import (
    AdaptationPlan,
    adapt_with_plan,
    plan_for_shots,
    plans_from_dict,
    plans_to_dict,
)
from fewseg.algorithms.weighting import TaskWeighting
from fewseg.data.episode import Episode, MetaBatch, check_images, check_masks, check_unit_range
from fewseg.distributed import SINGLE, ProcessGroup
from fewseg.losses import get_loss
from fewseg.models import input_channels
from fewseg.models.encoded import EncodeOnly, EncoderFeatures, expand_groups
from fewseg.models.norms import batchnorm_policy_of, check_norm_layers


def param_key(name: str) -> str:
    """A parameter name usable as a ParameterDict key ("down.0.weight" -> "down__0__weight")."""
    return name.replace(".", "__")


class InnerView(NamedTuple):
    """How the inner loop sees a task's images (``MetaAlgorithm.inner_view``): ``encode(x)`` once per task (None:
    the images as they are), then ``forward(params, encoded)`` at every step, with the whole parameter dict."""

    forward: Forward
    encode: Callable[[torch.Tensor], object] | None = None

    def inputs(self, x: torch.Tensor):
        return x if self.encode is None else self.encode(x)


class MetaAlgorithm(nn.Module):
    """MAML with exact second-order meta-gradients; the options are ``fewseg.algorithms.options.CORE_OPTIONS``.

    class_counts: training images per class id, needed by ``task_weighting="class-frequency"``.
    """

    name = "maml"
    OPTIONS: frozenset[str] = frozenset(CORE_OPTIONS)  # the options this algorithm honours
    FIXED: ClassVar[dict] = {}                          # core options it always sets itself
    learns_rates = False                                # True: test-time plans keep the learned inner rates

    def __init__(self, model: nn.Module, class_counts: dict[int, int] | None = None, **options):
        super().__init__()
        o = resolve_options(self.name, self.OPTIONS, self.FIXED, options)
        check_core_values(o)
        check_norm_layers(model, o["batchnorm"])
        if o["checkpoint_images"] and batchnorm_policy_of(model) in ("batch-stats", "mixed"):
            raise ValueError("checkpoint_images needs per-image logits: BatchNorm with batch statistics mixes the "
                             "images of a batch (use GroupNorm, or checkpoint_images: 0)")
        self.model = model
        self.inner_steps, self.inner_lr, self.first_order = o["inner_steps"], float(o["inner_lr"]), o["first_order"]
        self.loss_name, self.loss_fn = o["loss"], get_loss(o["loss"])
        self.strategy, self.task_chunk, self.proximal = o["strategy"], o["task_chunk"], float(o["proximal"])
        self.eval_steps = self.inner_steps if o["eval_steps"] is None else o["eval_steps"]
        self.test_time: dict[int, AdaptationPlan] = {}  # shots -> plan chosen on val classes (test_time.choose_plans)
        self.inner_checkpoint, self.checkpoint_images = bool(o["inner_checkpoint"]), int(o["checkpoint_images"])
        self.weighting = TaskWeighting(o["task_weighting"], float(o["weight_temperature"]), bool(o["weight_grad"]),
                                       float(o["frequency_power"]), dict(class_counts or {}))
        names = [n for n, p in model.named_parameters() if p.requires_grad]  # frozen ones never adapt
        self.adapt_names = names
        if o["adapt_pattern"]:
            pattern = expand_groups(o["adapt_pattern"], model)  # "@decoder|@stage4" -> the model's regexes
            self.adapt_names = [n for n in names if re.search(pattern, n)]
            if not self.adapt_names:
                raise ValueError(f"adapt_pattern {o['adapt_pattern']!r} matches no trainable parameter of the "
                                 f"model (names: {', '.join(names[:6])} ...)")
        self.cache_encoder = bool(o["cache_encoder"])  # see inner_view

    # --- hooks: each member of the family overrides one or two ------------------------------------
    def lr_for(self, step: int, name: str) -> float | torch.Tensor:
        """Inner learning rate of parameter ``name`` at inner step ``step`` (Meta-SGD, MAML++: learned)."""
        return self.inner_lr

    def use_second_order(self, iteration: int) -> bool:
        """Whether outer ``iteration`` backpropagates through the inner gradients (MAML++ anneals this)."""
        return not self.first_order

    def step_params(self, step: int) -> Params:
        """Parameters that replace the model's at inner step ``step`` only (MAML++ per-step norms)."""
        return {}

    def at_step(self, params: Params, step: int) -> Params:
        extra = self.step_params(step)
        return {**params, **extra} if extra else params

    def params_and_forward(self):
        """(theta as a dict, forward(params, images)): the deterministic weights used at test time."""
        return dict(self.model.named_parameters()), make_forward(self.model, dict(self.model.named_buffers()))

    def task_params(self, iteration: int, draw: int):
        """The weights a task starts from in meta-training pass ``draw`` of ``iteration`` (MR-MAML samples)."""
        return self.params_and_forward()

    def query_loss(self, forward, trajectory: list[Params], ep: Episode, iteration: int) -> torch.Tensor:
        """The task's outer loss from its inner trajectory: query loss at the last step."""
        last = len(trajectory) - 1
        return self.loss_fn(forward(self.at_step(trajectory[last], last), ep.query_x), ep.query_y, ep.query_ignore)

    def outer_regulariser(self) -> torch.Tensor | None:
        """A term added once per meta-batch to the outer loss (MR-MAML's KL), or None."""
        return None

    def task_start(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                   support_ignore: torch.Tensor | None) -> Params:
        """The weights a task's inner loop starts from, given its support set (task-attention: FiLM-modulated);
        the same hook at meta-training (differentiable) and at test time. Default: ``params``. Inner-loop
        recomputation (``inner_checkpoint``) does not call it: an algorithm overriding it refuses that option."""
        return params

    def encoder_is_fixed(self) -> bool:
        """Whether the model's encoder features stay the same through the inner loop: ``cache_encoder`` is on, the
        model splits into encoder and decoder (``encoder_prefix``, ``fewseg.models.encoded``) and no parameter of
        the encoder adapts (nor is replaced per step). Then ``inner_view`` computes them once per task."""
        prefix = getattr(self.model, "encoder_prefix", None)
        if not (prefix and self.cache_encoder):
            return False
        moving = set(self.adapt_names) | set(self.step_params(0))
        return not any(n.startswith(prefix) for n in moving)

    def inner_view(self, forward: Forward, params: Params) -> InnerView:
        """What the inner loop runs on, for a task starting from ``params``: the encoder features of the images
        (computed with ``params``, so the meta-gradient still reaches a meta-learned encoder) and the decoder and
        head alone when ``encoder_is_fixed()``; else the images and the whole network. Either way the same numbers.
        Override to cache more (ANIL: the body's features and the head alone)."""
        if not self.encoder_is_fixed():
            return InnerView(forward)

        def encode(x):
            return x if isinstance(x, EncoderFeatures) else forward(params, EncodeOnly(x))
        return InnerView(forward, encode)

    def inner_spec(self, forward: Forward, **overrides) -> InnerLoopSpec:
        """The algorithm's inner loop on ``forward``: its adapted parameters, rates, loss, proximal term and per-step
        parameters; ``overrides`` replace any field (``create_graph``, ``keep_graph``, ``lr_for``, ...)."""
        fields = {"adapt_names": tuple(self.adapt_names), "lr_for": self.lr_for, "loss_fn": self.loss_fn,
                  "proximal": self.proximal, "step_params": self.step_params}
        return InnerLoopSpec(forward, **{**fields, **overrides})

    def adapt_steps(self, spec: InnerLoopSpec, params: Params, x, y: torch.Tensor, ignore: torch.Tensor | None,
                    steps: int, on_step: Callable[[int, Params], None] | None = None) -> Params:
        """The weights after ``steps`` steps of the inner optimiser from ``params``, no outer graph (test time,
        Reptile): plain SGD by default (Reptile: or Adam); ``on_step(k, params_k)`` after every step."""
        return inner_loop(spec, params, x, y, ignore, steps, on_step=on_step)[-1]

    def task_loss(self, forward, params: Params, ep: Episode, iteration: int, functional_grad: bool) -> torch.Tensor:
        """One task's outer loss, differentiable w.r.t. the meta-parameters (``functional_grad`` under vmap)."""
        params = self.task_start(params, ep.support_x, ep.support_y, ep.support_ignore)
        view = self.inner_view(forward, params)
        if view.encode is not None:  # the same numbers, the cached part run once per image instead of once per step
            ep = dataclasses.replace(ep, support_x=view.encode(ep.support_x), query_x=view.encode(ep.query_x))
        spec = self.inner_spec(view.forward, create_graph=self.use_second_order(iteration),
                               functional_grad=functional_grad)
        trajectory = inner_loop(spec, params, ep.support_x, ep.support_y, ep.support_ignore, self.inner_steps)
        return self.query_loss(view.forward, trajectory, ep, iteration)

    # --- meta-training ------------------------------------------------------------------------------
    def outer_loss(self, batch: MetaBatch, *, iteration: int) -> torch.Tensor:
        """Scalar meta-loss of outer ``iteration`` with the whole graph kept; ``.backward()`` gives the meta-gradient."""
        return whole_graph_loss(self, batch, iteration)[0]

    def meta_backward(self, batch: MetaBatch, *, iteration: int, group: ProcessGroup = SINGLE) -> dict:
        """Add the meta-gradient of outer ``iteration`` into ``.grad`` (the gradient of ``outer_loss``), one chunk of
        tasks alive at a time. Returns logs {"loss", "task_losses" [T], "task_weights" [T], "regulariser"?}.
        With several ranks, this rank's share of the batch only: sum ``.grad`` across ranks afterwards."""
        return accumulate_meta_gradient(self, batch, iteration, group)

    # --- test time ---------------------------------------------------------------------------------
    def plan_for(self, shots: int) -> AdaptationPlan:
        """The test-time plan for ``shots`` support images: the one chosen on validation classes for that shot
        count (or the nearest stored one), else ``eval_steps`` at the training rate."""
        return plan_for_shots(self.test_time, shots, AdaptationPlan(self.eval_steps))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              lr: float | None = None, support_ignore: torch.Tensor | None = None, *, views: int | None = None,
              leave_one_out: bool | None = None, seed: int = 0) -> Adapted:
        """Adapt to one task (no outer graph): support_x [S,C,H,W] floats in [0,1] (C: the model's in_channels),
        support_y [S,1,H,W] in {0,1}. Follows ``plan_for(S)``; ``steps`` (exactly that many), ``lr`` (one rate for
        every parameter), ``views`` (augmented copies of the support set) and ``leave_one_out`` override it.
        ``seed`` fixes the augmented views."""
        support_y, support_ignore = self._check_support(support_x, support_y, support_ignore)
        plan = self.plan_for(support_x.shape[0]).override(steps=steps, lr=lr, views=views,
                                                          leave_one_out=leave_one_out)
        return adapt_with_plan(self, plan, support_x, support_y, support_ignore, seed=seed)

    def adapt_run(self, support_x: torch.Tensor, support_y: torch.Tensor, support_ignore: torch.Tensor | None,
                  steps: int, lr_scale: float = 1.0, lr: float | None = None,
                  on_step: Callable[[int, Adapted], None] | None = None) -> Adapted:
        """``steps`` plain inner steps on checked support tensors at ``lr_scale`` x the algorithm's own rates (or
        one rate ``lr``); ``on_step(k, adapted_k)`` sees the weights after every step k = 1..steps. Built from the
        hooks ``task_start``, ``inner_view`` and ``adapt_steps``: algorithms override those, not this."""
        rates = self._rates(steps, lr, lr_scale)
        params, forward = self.params_and_forward()
        with torch.no_grad():
            start = {n: detached(p) for n, p in self.task_start(params, support_x, support_y, support_ignore).items()}
            fixed = {k: {n: detached(p) for n, p in self.step_params(min(k, self.inner_steps)).items()}
                     for k in range(steps + 1)}
            view = self.inner_view(forward, start)
            inputs = view.inputs(support_x)
        spec = self.inner_spec(view.forward, lr_for=lambda k, n: rates[(k, n)], keep_graph=False,
                               step_params=fixed.__getitem__)

        def adapted(k: int, p: Params) -> Adapted:  # the whole network's weights after step k
            return Adapted(forward, {n: detached(v) for n, v in {**p, **fixed[k]}.items()})
        seen = None if on_step is None else (lambda k, p: on_step(k, adapted(k, p)))
        return adapted(steps, self.adapt_steps(spec, start, inputs, support_y, support_ignore, steps, on_step=seen))

    def _check_support(self, support_x, support_y, support_ignore):
        """Checked (support_y as support_x's dtype, support_ignore as bool or None)."""
        check_images("support_x", support_x, 4, channels=input_channels(self.model))
        check_unit_range("support_x", support_x)
        check_masks("support_y", support_y, support_x)
        if support_ignore is not None:
            check_masks("support_ignore", support_ignore, support_x, binary=False)
            support_ignore = support_ignore.bool()
        return support_y.to(support_x.dtype), support_ignore

    def _rates(self, steps: int, lr: float | None, lr_scale: float = 1.0) -> dict:
        """The fixed test-time rates {(step, name): rate}: ``lr`` for all, else ``lr_scale`` x ``lr_for`` (steps
        past the trained ones reuse the last trained step's rate)."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"adaptation steps must be an integer >= 0, got {steps!r}")
        lr_for = self.lr_for if lr is None else (lambda step, name: lr)
        scale = 1.0 if lr is not None else float(lr_scale)
        with torch.no_grad():
            return {(k, n): _detach(lr_for(min(k, self.inner_steps - 1) if self.inner_steps else k, n)) * scale
                    for k in range(steps) for n in self.adapt_names}

    # --- checkpoints --------------------------------------------------------------------------------
    @property
    def class_counts(self) -> dict[int, int]:
        return dict(self.weighting.class_counts)

    def extra_state(self) -> dict:
        """JSON-able algorithm facts saved in checkpoints beside the tensors: class counts (for the record) and the
        test-time plans chosen on validation classes (read back by ``load_extra_state``)."""
        state = {"class_counts": {str(c): n for c, n in self.weighting.class_counts.items()}}
        if self.test_time:
            state["test_time"] = plans_to_dict(self.test_time)
        return state

    def load_extra_state(self, state: dict) -> None:
        """Restore what ``extra_state`` saved that changes behaviour (the test-time plans)."""
        self.test_time = plans_from_dict(state.get("test_time", {}))


def _detach(v):
    return v.detach() if isinstance(v, torch.Tensor) else v
