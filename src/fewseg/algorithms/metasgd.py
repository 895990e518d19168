"""Meta-SGD (Li et al., 2017): a learned inner learning rate per parameter element (or per tensor)."""
from __future__ import annotations

import torch
from torch import nn

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.algorithms.base import param_key as rate_key
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("meta-sgd")
class MetaSGD(MetaAlgorithm):
    """Inner step phi = theta - alpha * grad, with alpha meta-learned beside theta (saved in checkpoints).

    per_tensor=False: alpha has the shape of each parameter; True: one scalar per parameter tensor.
    """

    learns_rates = True  # test time: the learned rates are used as learned
    OPTIONS = MetaAlgorithm.OPTIONS | {"per_tensor"}

    def __init__(self, model, per_tensor: bool = False, **options):
        super().__init__(model, **options)
        params = dict(model.named_parameters())
        self.rates = nn.ParameterDict({
            rate_key(n): nn.Parameter(torch.full(() if per_tensor else params[n].shape, self.inner_lr,
                                                 dtype=params[n].dtype, device=params[n].device))
            for n in self.adapt_names})

    def lr_for(self, step: int, name: str) -> torch.Tensor:
        return self.rates[rate_key(name)]
