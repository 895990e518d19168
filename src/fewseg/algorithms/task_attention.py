"""Task-attention MAML: each task tailors the shared initialisation to itself before the inner loop, from what
its support set shows and how it relates to a learned memory of task prototypes (in the spirit of ARML, HSML and
MMAML; issue 15). One task:

1. **Representation** t = [fg, bg] (2C): masked average pooling of the current network's features (``features(x)``
   where the model has it, else the input of its head) over the foreground and over the background pixels of *all*
   support images together, ignore pixels excluded. Pooling over every pixel of every image makes t independent of
   the order of the support images.
2. **Relations**: q = W_q t; a = softmax(cos(q, k_m) / ``attention_temperature``) over ``memory_slots`` learned keys
   k_m, the task's relations to the structure learned from earlier tasks (``attention(...)`` returns them).
   ``batch_attention: true`` adds the *other* tasks of the meta-batch as slots at training time (key W_q t_j,
   value W_v t_j; see below). At test time only the memory exists.
3. **Modulation** of the initialisation: r = sum_m a_m v_m (learned values), z = FiLM(r), and for every modulated
   layer with C_l output channels gamma = 1 + tanh(z_gamma) in (0, 2) (a per-channel gate that can shrink a
   channel to nothing or double it), beta = z_beta: phi_0 has W' = gamma * W per output channel and
   b' = gamma * b + beta. That is FiLM of the layer's output, gamma * (layer(x)) + beta, written into the weights,
   so the inner loop, test-time adaptation and the saved ``Adapted`` weights need no hook in the network. FiLM's
   output layer starts at zero: gamma = 1, beta = 0 exactly, and training starts exactly at MAML.
4. The ordinary shared inner loop (K SGD steps at alpha) from phi_0, the query loss; theta, the memory (keys and
   values), W_q (and W_v) and the FiLM layer are all learned by the meta-gradient, second order by default.
   The modulation's dependence on the support set is differentiated too (through the features, into theta): it is
   part of the task's computation. With ``first_order`` only the inner gradients are detached
   (d phi_K / d phi_0 = I); the path through the modulation stays, so the memory still learns.

**What is modulated** (``modulate_pattern``, a regex on parameter names; the layers are convolutions, linear and
normalisation layers): by default the GroupNorm layers of a U-Net's decoder (``up.``); for other models with
normalisation layers every one of them; for models without (``seed-cnn``) every convolution but the head. Why: the
decoder decides which of the shared encoder features become foreground, the task-specific part, while the encoder's
features (from which the task representation is read) stay shared. FiLM goes on the normalisation layers, after
the statistics: a per-channel scale of a convolution that feeds a GroupNorm is largely normalised away. The head
is left out: its one output channel would only rescale and shift the logit, which the inner loop's bias step
does anyway.

**Batch attention and execution**: the other tasks' representations t_j are computed once per meta-step (no
graph) from the whole meta-batch and enter every task as constants; only the projections W_q, W_v applied to
them are differentiated. Every task's graph is then its own, so the per-task loop, vmap with any ``task_chunk``
and the chunked backward give the same numbers, and under ``torchrun`` every rank (which draws the whole
meta-batch) computes the same context before running its own block of tasks. A task does not attend to itself:
slots whose support images and masks equal its own are masked out (exact equality, which also works under vmap).
The stop-gradient cuts only the path "task i's loss -> task j's support features"; it is what keeps one task's
graph alive at a time.

Refused: ``inner_checkpoint`` (the recomputation starts from ``task_params(iteration, draw)``, which never sees
the support set the modulation comes from) and with it ``checkpoint_images``. ``modulation: false`` is exactly MAML.

Example:
    >>> import torch, fewseg
    >>> model = fewseg.create_model("seed-cnn", width=4)
    >>> algo = fewseg.create_algorithm("task-attention", model, inner_steps=1, memory_slots=4)
    >>> sx, sy = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    >>> weights = algo.attention(sx, sy)                    # the task's relations to the 4 memory slots
    >>> weights.shape, round(float(weights.sum()), 6)
    (torch.Size([4]), 1.0)
    >>> algo.modulated_layers                               # seed-cnn: every convolution but the head
    ['0', '2']
"""
from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import blake2b

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.inner_loop import Params
from fewseg.algorithms.options import non_default
from fewseg.data.episode import MetaBatch
from fewseg.distributed import SINGLE, ProcessGroup
from fewseg.models.norms import NORM_TYPES
from fewseg.registry import ALGORITHMS

LINEAR_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # weight [C_out, ...]: scaled per output channel


def film_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{layer name: module} of the layers FiLM can modulate: convolutions and linear layers (weight [C_out, ...])
    and normalisation layers with a per-channel affine weight [C]."""
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, nn.Parameter):
            continue
        if isinstance(m, LINEAR_TYPES) or (isinstance(m, NORM_TYPES) and w.dim() == 1):
            out[name] = m
    return out


def head_module(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the head: the model's ``head_prefix`` layer, else its last convolution / linear layer."""
    prefix = getattr(model, "head_prefix", None)
    if prefix:
        name = prefix.rstrip(".")
        return name, model.get_submodule(name)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)]
    if not layers:
        raise ValueError("task-attention needs a model with a convolution or linear head")
    return layers[-1]


def default_modulated(model: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
    """The normalisation layers of the model's ``decoder`` parameter group (``parameter_groups()``), else every
    normalisation layer, else every convolution / linear layer but the head (see the module docstring for why)."""
    norms = [n for n, m in layers.items() if isinstance(m, NORM_TYPES)]
    groups = model.parameter_groups() if hasattr(model, "parameter_groups") else {}
    decoder = [n for n in norms if "decoder" in groups and re.search(groups["decoder"], f"{n}.weight")]
    if decoder:
        return decoder
    if norms:
        return norms
    head = head_module(model)[0]
    return [n for n in layers if n != head] or list(layers)


def _param_name(layer: str, p: str) -> str:
    return f"{layer}.{p}" if layer else p


def _generator_for(model: nn.Module) -> torch.Generator:
    """A generator seeded from the model's initial weights: the memory's initialisation follows the run's seed
    (which seeds the model) without touching the global random state."""
    first = next(model.parameters()).detach()
    values = [] if first.is_meta else first.flatten()[:64].cpu().double().tolist()
    digest = blake2b(struct.pack(f"{len(values)}d", *values), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


@ALGORITHMS.register("task-attention")
class TaskAttention(MetaAlgorithm):
    """MAML whose initialisation is FiLM-modulated per task by attention over a learned memory of task prototypes
    (``modulation: false`` is MAML)."""

    OPTIONS = (MetaAlgorithm.OPTIONS - {"inner_checkpoint", "checkpoint_images"}) | {
        "memory_slots", "batch_attention", "modulate_pattern", "attention_temperature", "modulation"}

    def __init__(self, model: nn.Module, memory_slots: int = 8, batch_attention: bool = False,
                 modulate_pattern: str | None = None, attention_temperature: float = 0.1, modulation: bool = True,
                 **options):
        if options.get("inner_checkpoint"):
            raise ValueError("option inner_checkpoint=True is not supported by algorithm 'task-attention': the "
                             "recomputation starts from task_params(iteration, draw), which never sees the support "
                             "set the modulation is computed from")
        super().__init__(model, **options)
        if not isinstance(memory_slots, int) or isinstance(memory_slots, bool) or memory_slots < 1:
            raise ValueError(f"memory_slots must be an integer >= 1, got {memory_slots!r}")
        if not isinstance(attention_temperature, (int, float)) or not attention_temperature > 0:
            raise ValueError(f"attention_temperature must be > 0, got {attention_temperature!r}")
        for key, value in (("batch_attention", batch_attention), ("modulation", modulation)):
            if not isinstance(value, bool):
                raise TypeError(f"{key} must be true or false, got {value!r}")
        self.modulation = modulation
        if not modulation:
            for key in non_default(TaskAttention.__init__, memory_slots=memory_slots, batch_attention=batch_attention,
                                   modulate_pattern=modulate_pattern, attention_temperature=attention_temperature):
                raise ValueError(f"{key} applies only with modulation=True (modulation=False is plain MAML)")
        self.memory_slots, self.batch_attention = int(memory_slots), bool(batch_attention) and modulation
        self.temperature = float(attention_temperature)
        self._context: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # batch attention, one step
        self.modulated_layers: list[str] = []
        if not modulation:
            return
        layers = film_layers(model)
        if modulate_pattern is None:
            chosen = default_modulated(model, layers)
        else:
            chosen = [n for n, m in layers.items()
                      if any(re.search(modulate_pattern, _param_name(n, p)) for p, _ in m.named_parameters())]
            if not chosen:
                raise ValueError(f"modulate_pattern {modulate_pattern!r} matches no convolution, linear or "
                                 f"normalisation layer of the model (layers: {', '.join(list(layers)[:8])} ...)")
        self.modulated_layers = chosen
        self.channels = [layers[n].weight.shape[0] for n in chosen]
        self.has_bias = [isinstance(getattr(layers[n], "bias", None), nn.Parameter) for n in chosen]
        self._head_name, head = head_module(model)  # a name, not the module (no second copy in state_dict)
        c = head.in_channels if isinstance(head, nn.modules.conv._ConvNd) else head.in_features
        self.feature_channels = c
        d = 2 * c  # key, query and value width: the representation's
        ref = next(model.parameters())
        g = _generator_for(model)

        def randn(*shape, scale=1.0):
            return nn.Parameter((torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(ref))

        bound = 1 / math.sqrt(d)  # nn.Linear's default range, drawn from the local generator
        self.query_weight = nn.Parameter((torch.rand(d, d, generator=g, dtype=torch.float64) * 2 - 1).mul(bound).to(ref))
        self.query_bias = nn.Parameter(torch.zeros(d).to(ref))
        self.memory_keys = randn(self.memory_slots, d)
        self.memory_values = randn(self.memory_slots, d)
        if self.batch_attention:
            self.value_weight = nn.Parameter((torch.rand(d, d, generator=g, dtype=torch.float64) * 2 - 1)
                                             .mul(bound).to(ref))
            self.value_bias = nn.Parameter(torch.zeros(d).to(ref))
        total = sum(self.channels)
        self.film_weight = nn.Parameter(torch.zeros(2 * total, d).to(ref))  # zero: identity modulation at start
        self.film_bias = nn.Parameter(torch.zeros(2 * total).to(ref))

    # --- the task's representation, relations and modulation ----------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[S,C_in,H,W] -> [S,C,h,w]: the network's features (``features(x)``, else the input of its head)."""
        if hasattr(self.model, "features"):
            return self.model.features(x)
        seen = []
        handle = self.model.get_submodule(self._head_name).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return seen[-1]

    def represent(self, support_x: torch.Tensor, support_y: torch.Tensor,
                  support_ignore: torch.Tensor | None = None) -> torch.Tensor:
        """[2C]: the mean feature over the foreground pixels of all support images, then over the background."""
        feats = self.features(support_x)
        y = support_y.to(feats.dtype)
        valid = torch.ones_like(y) if support_ignore is None else (~support_ignore.bool()).to(feats.dtype)
        if feats.shape[-2:] != y.shape[-2:]:
            y = F.interpolate(y, size=feats.shape[-2:], mode="bilinear", align_corners=False)
            valid = F.interpolate(valid, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        fg, bg = y * valid, (1 - y) * valid

        def pool(w):  # an empty region pools to 0
            return (feats * w).sum((0, 2, 3)) / w.sum().clamp_min(1e-6)
        return torch.cat([pool(fg), pool(bg)])

    def _query(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.linear(t, self.query_weight, self.query_bias), dim=-1)

    def relations(self, t: torch.Tensor, episode: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention weights [M (+T)], attended value r [d]) of a representation t; with a batch context (meta-
        training with ``batch_attention``) the other tasks of the batch are slots too (``episode``: the task's
        support images and masks, to leave itself out)."""
        q = self._query(t)
        scores = F.normalize(self.memory_keys, dim=-1) @ q / self.temperature  # [M]
        values = self.memory_values
        if self._context is not None and episode is not None:
            reps, ctx_x, ctx_y = self._context
            keys = self._query(reps)                                                  # [T,d]
            itself = ((ctx_x == episode[0]).flatten(1).all(1) & (ctx_y == episode[1]).flatten(1).all(1))
            scores = torch.cat([scores, (keys @ q / self.temperature).masked_fill(itself, float("-inf"))])
            values = torch.cat([values, F.linear(reps, self.value_weight, self.value_bias)])
        a = torch.softmax(scores, dim=0)
        return a, a @ values

    def modulation_of(self, support_x: torch.Tensor, support_y: torch.Tensor,
                      support_ignore: torch.Tensor | None = None, *, context: bool = False
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{layer: (gamma [C_l], beta [C_l])} of a task, differentiable (``context``: use the batch context)."""
        t = self.represent(support_x, support_y, support_ignore)
        _, r = self.relations(t, (support_x, support_y) if context else None)
        z = F.linear(r, self.film_weight, self.film_bias)
        total = sum(self.channels)
        gammas = torch.split(1 + torch.tanh(z[:total]), self.channels)
        betas = torch.split(z[total:], self.channels)
        return dict(zip(self.modulated_layers, zip(gammas, betas)))

    def modulate(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                 support_ignore: torch.Tensor | None = None, *, context: bool = False) -> Params:
        """phi_0: ``params`` with every modulated layer's weight scaled per output channel by gamma and its bias
        mapped to gamma * b + beta (a layer without bias takes the scale only)."""
        new = dict(params)
        film = self.modulation_of(support_x, support_y, support_ignore, context=context)
        for (layer, (gamma, beta)), bias in zip(film.items(), self.has_bias):
            w = _param_name(layer, "weight")
            new[w] = gamma.reshape(-1, *[1] * (params[w].dim() - 1)) * params[w]
            if bias:
                b = _param_name(layer, "bias")
                new[b] = gamma * params[b] + beta
        return new

    @torch.no_grad()
    def attention(self, support_x: torch.Tensor, support_y: torch.Tensor,
                  support_ignore: torch.Tensor | None = None) -> torch.Tensor:
        """[M]: the relation weights of a task (support_x [S,C,H,W] in [0,1], support_y [S,1,H,W] {0,1}) to the
        memory slots, as at test time (they sum to 1)."""
        if not self.modulation:
            raise ValueError("task-attention with modulation=False has no memory to attend to")
        support_y, support_ignore = self._check_support(support_x, support_y, support_ignore)
        return self.relations(self.represent(support_x, support_y, support_ignore))[0]

    # --- the hook: phi_0 of a task, at meta-training and at test time -----------------------------------
    def task_start(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                   support_ignore: torch.Tensor | None) -> Params:
        """The task's modulation of ``params`` from its support set: over the memory, and over the batch's other
        tasks while ``meta_backward`` / ``outer_loss`` hold a batch context (``batch_attention``)."""
        if not self.modulation:
            return params
        return self.modulate(params, support_x, support_y, support_ignore, context=True)

    # --- meta-training --------------------------------------------------------------------------------
    @contextmanager
    def _batch_context(self, batch: MetaBatch) -> Iterator[None]:
        """With ``batch_attention`` while training: every task's representation (no graph), for the whole step."""
        if not (self.batch_attention and self.training):
            yield
            return
        with torch.no_grad():
            ign = batch.support_ignore
            reps = torch.stack([self.represent(batch.support_x[i], batch.support_y[i],
                                               None if ign is None else ign[i]) for i in range(batch.num_tasks)])
        self._context = (reps, batch.support_x, batch.support_y)
        try:
            yield
        finally:
            self._context = None

    def outer_loss(self, batch: MetaBatch, *, iteration: int) -> torch.Tensor:
        with self._batch_context(batch):
            return super().outer_loss(batch, iteration=iteration)

    def meta_backward(self, batch: MetaBatch, *, iteration: int, group: ProcessGroup = SINGLE) -> dict:
        with self._batch_context(batch):
            return super().meta_backward(batch, iteration=iteration, group=group)

    # --- checkpoints ----------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        state = super().extra_state()
        if self.modulation:
            state["task_attention"] = {"memory_slots": self.memory_slots, "modulated_layers": self.modulated_layers,
                                       "batch_attention": self.batch_attention}
        return state
