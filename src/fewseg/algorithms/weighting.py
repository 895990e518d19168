"""How the T tasks' query losses are combined into one outer loss (the meta-batch's task weights).

- ``uniform``: the mean.
- ``hard``: softmax of the losses / ``temperature``, so hard tasks count more; constants unless
  ``with_grad=True`` (then the weights are differentiated too, and every task's graph must stay alive).
- ``class-frequency``: w_i proportional to n_c ** -``power``, n_c = training images of task i's class, for
  long-tailed class sampling. Needs the image count of every class (``class_counts``).

Example:
    >>> import torch
    >>> from fewseg.algorithms.weighting import TaskWeighting
    >>> TaskWeighting("hard")(torch.tensor([0.1, 0.5]), [3, 7])
    tensor([0.4013, 0.5987])
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fewseg.algorithms.options import CORE_OPTIONS
from fewseg.choices import TASK_WEIGHTINGS


@dataclass(frozen=True)
class TaskWeighting:
    kind: str = CORE_OPTIONS["task_weighting"]
    temperature: float = CORE_OPTIONS["weight_temperature"]       # "hard" only
    with_grad: bool = CORE_OPTIONS["weight_grad"]                 # "hard" only
    power: float = CORE_OPTIONS["frequency_power"]                # "class-frequency" only
    class_counts: dict[int, int] = field(default_factory=dict)    # images per training class id

    def __post_init__(self):
        if self.kind not in TASK_WEIGHTINGS:
            raise ValueError(f"task_weighting must be one of {', '.join(TASK_WEIGHTINGS)}, got {self.kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"weight_temperature must be > 0, got {self.temperature}")
        for option, value, owner in (("weight_temperature", self.temperature, "hard"),
                                     ("weight_grad", self.with_grad, "hard"),
                                     ("frequency_power", self.power, "class-frequency")):
            if value != CORE_OPTIONS[option] and self.kind != owner:
                raise ValueError(f"{option} applies only to task_weighting='{owner}' (task_weighting is "
                                 f"{self.kind!r})")

    @property
    def depends_on_losses(self) -> bool:
        """True when the weights are known only after every task's loss (they cannot scale a chunk's backward)."""
        return self.kind == "hard"

    @property
    def needs_every_graph(self) -> bool:
        """True when the weights themselves are differentiated: every task's graph must be alive at once."""
        return self.kind == "hard" and self.with_grad

    def __call__(self, losses: torch.Tensor, class_ids: list[int]) -> torch.Tensor:
        """Weights [T] (summing to 1) of the tasks' query losses [T]."""
        T = losses.shape[0]
        if self.kind == "hard":
            w = torch.softmax(losses / self.temperature, dim=0)
            return w if self.with_grad else w.detach()
        if self.kind == "class-frequency":
            missing = [c for c in class_ids if c not in self.class_counts]
            if missing or len(class_ids) != T:
                raise ValueError("task_weighting='class-frequency' needs the training image count of every class "
                                 f"(class_counts=... at construction); unknown class(es) {missing or class_ids}")
            counts = torch.tensor([float(self.class_counts[c]) for c in class_ids], dtype=losses.dtype,
                                  device=losses.device)
            w = counts ** (-self.power)
            return w / w.sum()
        return torch.full_like(losses, 1.0 / T).detach()

    def constant(self, T: int, class_ids: list[int], like: torch.Tensor) -> torch.Tensor | None:
        """The weights [T] when they do not depend on the losses (uniform, class-frequency), else None."""
        if self.depends_on_losses:
            return None
        return self(torch.zeros(T, dtype=like.dtype, device=like.device), class_ids)
