"""MAML++ (Antoniou et al., "How to train your MAML", ICLR 2019), each trick switchable for ablations.

- ``multi_step_loss``: the outer loss is a weighted sum of the query losses after every inner step. The
  weights start uniform and move towards the last step over ``msl_iterations`` outer iterations (non-final
  steps decay to 0.03/K); after that only the last step counts.
- ``learned_rates``: one inner rate per parameter tensor (layer) and per step, meta-learned (LSLR).
- ``first_order_iterations``: derivative-order annealing, first order for the first N outer iterations.
- ``per_step_norm``: every normalisation layer (GroupNorm/BatchNorm/LayerNorm) gets its own affine
  weight and bias per inner step (BNWB), meta-learned and not adapted. The networks here use GroupNorm,
  which keeps no running statistics, so the paper's per-step running statistics (BNRS) have nothing to hold.
- The cosine annealing of the outer rate is the trainer's ``train.schedule: cosine``.
"""
from __future__ import annotations

import torch
from torch import nn

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.base import param_key as _key
from fewseg.algorithms.inner_loop import Params
from fewseg.algorithms.options import non_default
from fewseg.data.episode import Episode
from fewseg.models.norms import NORM_TYPES
from fewseg.registry import ALGORITHMS


def step_loss_weights(steps: int, iteration: int, anneal_iterations: int) -> list[float]:
    """Importance of the query loss after inner step 1..K at outer ``iteration``.

    Uniform (1/K each) at iteration 0; every non-final weight falls linearly by 1/(K * anneal_iterations)
    per iteration down to 0.03/K, and the final weight takes up the rest. Past ``anneal_iterations``:
    [0, ..., 0, 1]. Always sums to 1.

    Example:
        >>> from fewseg.algorithms.mamlpp import step_loss_weights
        >>> step_loss_weights(4, 0, 10)
        [0.25, 0.25, 0.25, 0.25]
    """
    if steps <= 0:
        return []
    if iteration >= anneal_iterations:
        return [0.0] * (steps - 1) + [1.0]
    floor = 0.03 / steps
    early = max(1.0 / steps - iteration / (steps * anneal_iterations), floor)
    return [early] * (steps - 1) + [1.0 - early * (steps - 1)]


@ALGORITHMS.register("maml++")
class MAMLPlusPlus(MetaAlgorithm):
    """MAML with the MAML++ stabilisers; all on by default, each one off by its option."""

    OPTIONS = MetaAlgorithm.OPTIONS | {"multi_step_loss", "msl_iterations", "learned_rates",
                                       "first_order_iterations", "per_step_norm"}

    def __init__(self, model, multi_step_loss: bool = True, msl_iterations: int = 100,
                 learned_rates: bool = True, first_order_iterations: int = 50, per_step_norm: bool = True,
                 **options):
        super().__init__(model, **options)
        if msl_iterations < 0 or first_order_iterations < 0:
            raise ValueError("msl_iterations and first_order_iterations must be >= 0")
        if self.first_order and non_default(MAMLPlusPlus.__init__, first_order_iterations=first_order_iterations):
            raise ValueError("first_order_iterations (derivative-order annealing) does not apply with "
                             "first_order=True (every iteration is first order); set first_order=false with it")
        self.multi_step_loss, self.msl_iterations = bool(multi_step_loss), int(msl_iterations)
        self.learned_rates, self.first_order_iterations = bool(learned_rates), int(first_order_iterations)
        self.learns_rates = self.learned_rates  # test time: learned per-step rates are used as learned
        self.per_step_norm = bool(per_step_norm)
        K = self.inner_steps
        self.norm_names: list[str] = []
        if per_step_norm:
            for mod_name, mod in model.named_modules():
                if isinstance(mod, NORM_TYPES):
                    self.norm_names += [f"{mod_name}.{p}" for p, _ in mod.named_parameters(recurse=False)]
            # meta-learned per step, never adapted: one copy for each inner step 0..K (K = the query pass)
            self.adapt_names = [n for n in self.adapt_names if n not in self.norm_names]
            params = dict(model.named_parameters())
            self.step_norms = nn.ParameterDict({
                _key(n): nn.Parameter(params[n].detach().clone().unsqueeze(0).repeat(K + 1, *[1] * params[n].dim()))
                for n in self.norm_names})
        if learned_rates:
            ref = next(model.parameters())
            self.step_rates = nn.ParameterDict({
                _key(n): nn.Parameter(torch.full((max(K, 1),), self.inner_lr, dtype=ref.dtype, device=ref.device))
                for n in self.adapt_names})

    def lr_for(self, step: int, name: str):
        if not self.learned_rates:
            return self.inner_lr
        rates = self.step_rates[_key(name)]
        return rates[min(step, rates.shape[0] - 1)]

    def use_second_order(self, iteration: int) -> bool:
        return not self.first_order and iteration >= self.first_order_iterations

    def step_params(self, step: int) -> Params:
        if not self.norm_names:
            return {}
        k = min(step, self.inner_steps)
        return {n: self.step_norms[_key(n)][k] for n in self.norm_names}

    def query_loss(self, forward, trajectory: list[Params], ep: Episode, iteration: int) -> torch.Tensor:
        K = len(trajectory) - 1
        if not (self.multi_step_loss and self.training and K > 0 and iteration < self.msl_iterations):
            return super().query_loss(forward, trajectory, ep, iteration)
        weights = step_loss_weights(K, iteration, self.msl_iterations)
        return sum(w * self.loss_fn(forward(self.at_step(trajectory[k + 1], k + 1), ep.query_x), ep.query_y,
                                    ep.query_ignore)
                   for k, w in enumerate(weights))
