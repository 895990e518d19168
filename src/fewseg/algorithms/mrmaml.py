"""MR-MAML with weight meta-regularisation (Yin et al., "Meta-Learning without Memorization", ICLR 2020).

Binary foreground tasks are not mutually exclusive: a network can learn to segment "the salient thing"
without looking at the support set, and then adaptation does nothing for a new class. MR-MAML(W) puts
a Gaussian posterior q(theta_s) = N(mu, sigma^2) on a block of meta-parameters ``theta_s`` that do *not*
adapt in the inner loop (by default the first encoder block) and adds beta * KL(q || N(0, I)) to the outer
loss: an information bottleneck on what the shared weights can memorise about the training classes, so
that the task information has to come from the support set through the adapted weights.

Every task draws theta_s = mu + sigma * eps (one draw per task with the per-task loop, one per vmap chunk);
at test time theta_s = mu. The noise comes from a generator seeded by (noise_seed, outer iteration, pass), the
iteration being the explicit argument of ``meta_backward``, so a resumed run draws the same noise.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.base import param_key as _key
from fewseg.registry import ALGORITHMS


def first_block_pattern(names: list[str]) -> str:
    """Regex for the first block of a network: the first parameter name cut after its first number
    ("down.0.0.weight" -> "^down\\.0\\.", "0.weight" -> "^0\\.")."""
    parts = names[0].split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return "^" + re.escape(".".join(parts[: i + 1]) + ".")
    return "^" + re.escape(names[0]) + "$"


@ALGORITHMS.register("mr-maml")
class MRMAML(MetaAlgorithm):
    """MAML whose non-adapted block ``stochastic_pattern`` is Gaussian with a KL penalty ``kl_weight``."""

    OPTIONS = MetaAlgorithm.OPTIONS | {"stochastic_pattern", "kl_weight", "init_log_sigma", "noise_seed"}

    def __init__(self, model, stochastic_pattern: str | None = None, kl_weight: float = 1e-4,
                 init_log_sigma: float = -6.0, noise_seed: int = 0, **options):
        super().__init__(model, **options)
        names = [n for n, _ in model.named_parameters()]
        pattern = stochastic_pattern or first_block_pattern(names)
        self.stochastic_names = [n for n in names if re.search(pattern, n)]
        if not self.stochastic_names:
            raise ValueError(f"stochastic_pattern {pattern!r} matches no parameter of the model")
        self.adapt_names = [n for n in self.adapt_names if n not in self.stochastic_names]
        if not self.adapt_names:
            raise ValueError("mr-maml: every parameter is stochastic, none is left to adapt")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight, self.noise_seed = float(kl_weight), int(noise_seed)
        params = dict(model.named_parameters())
        self.log_sigma = nn.ParameterDict({_key(n): nn.Parameter(torch.full_like(params[n].detach(), init_log_sigma))
                                           for n in self.stochastic_names})

    def noise_generator(self, iteration: int, draw: int) -> torch.Generator:
        """The generator of pass ``draw`` (a task, or a vmap chunk) of outer ``iteration``."""
        return torch.Generator().manual_seed(self.noise_seed * 1_000_003 + iteration * 1_009 + draw)

    def task_params(self, iteration: int, draw: int):
        """Posterior samples of the stochastic block while training; the means otherwise."""
        params, forward = self.params_and_forward()
        if not self.training:
            return params, forward
        g = self.noise_generator(iteration, draw)
        for n in self.stochastic_names:
            eps = torch.randn(params[n].shape, generator=g).to(params[n])
            params[n] = params[n] + self.log_sigma[_key(n)].exp() * eps
        return params, forward

    def kl(self) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, 1)) summed over the stochastic weights."""
        params = dict(self.model.named_parameters())
        total = 0.0
        for n in self.stochastic_names:
            log_sigma = self.log_sigma[_key(n)]
            total = total + (0.5 * (torch.exp(2 * log_sigma) + params[n] ** 2 - 1) - log_sigma).sum()
        return total

    def outer_regulariser(self) -> torch.Tensor | None:
        return self.kl_weight * self.kl() if self.kl_weight > 0 else None

    def extra_state(self) -> dict:
        state = super().extra_state()
        with torch.no_grad():
            sigmas = torch.cat([self.log_sigma[_key(n)].exp().flatten() for n in self.stochastic_names])
        state["mean_sigma"] = float(sigmas.mean())
        return state
