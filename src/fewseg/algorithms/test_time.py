"""Test-time adaptation chosen, not fixed: a plan per shot count, chosen on validation classes.

A :class:`AdaptationPlan` says how a meta-learned initialisation adapts to a support set of a given size:
``steps`` inner steps at ``lr_scale`` x the algorithm's own rates (its fixed ``inner_lr``, or the per-parameter /
per-step rates Meta-SGD and MAML++ learn, used as learned), optionally on the support set plus ``views``
augmented copies (flips, crops, colour: a regulariser when one image is all there is), and optionally with the
step count picked per task by ``leave_one_out`` (2+ shots: adapt on all images but one, score the held-out
image after every step, keep the best step count up to ``steps``, then adapt on all images).

:func:`choose_plans` scores every candidate on fixed validation episodes (never test classes) and keeps the best
per shot count; 0 steps (the initialisation as it is) is always a candidate, so on validation classes adaptation
never scores below doing nothing. The chosen plans are stored in checkpoints (``algorithm_state.test_time``) and
used by ``evaluate``, ``adapt`` and :func:`fewseg.load` unless the caller overrides them.

Negative support images (an all-background mask: the image shows none of the class) take part in every step; a
plan is the one for the number of support images, negatives included. Augmented views are copies of the
*positive* images only, and leave-one-out never holds out the only positive: it runs when two or more images show
the class (holding out each image whose removal leaves a positive; a held-out negative adds its false positives
to the pooled IoU), else the plan's step count is taken as it is.

Example:
    >>> import torch, fewseg
    >>> algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1)
    >>> algo.test_time = {1: AdaptationPlan(steps=2, lr_scale=0.5, views=2), 5: AdaptationPlan(steps=3, leave_one_out=True)}
    >>> algo.plan_for(1).describe(), algo.plan_for(4).describe()     # 4 shots: the nearest stored plan (5)
    ('2 steps, 0.5x rate, 2 augmented views', 'leave-one-out <= 3 steps, 1x rate')
    >>> adapted = algo.adapt(torch.rand(1, 3, 16, 16), (torch.rand(1, 1, 16, 16) > 0.5).float())
    >>> adapted.info["steps"], adapted.info["support_images"]          # 1 image + 2 views
    (2, 3)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fewseg.data.transforms import JointAugment
from fewseg.metrics import IoUAccumulator, binary_stats

DEFAULT_STEPS_GRID = (0, 1, 2, 3, 5, 7, 10, 15, 20)
DEFAULT_RATE_SCALES = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class AdaptationPlan:
    """How to adapt to a support set of one size. ``lr`` (one rate for all parameters) only comes from a caller's
    override; plans chosen on validation classes scale the algorithm's own rates by ``lr_scale``."""

    steps: int
    lr_scale: float = 1.0
    views: int = 0
    leave_one_out: bool = False
    lr: float | None = None
    chosen: dict = field(default_factory=dict, compare=False)  # validation scores behind the choice (a record)

    def override(self, steps=None, lr=None, views=None, leave_one_out=None) -> AdaptationPlan:
        """This plan with a caller's choices: explicit ``steps`` means exactly that many (no leave-one-out)."""
        plan = self
        if steps is not None:
            plan = dataclasses.replace(plan, steps=steps, leave_one_out=False)
        if lr is not None:
            plan = dataclasses.replace(plan, lr=float(lr))
        if views is not None:
            plan = dataclasses.replace(plan, views=int(views))
        if leave_one_out is not None:
            plan = dataclasses.replace(plan, leave_one_out=bool(leave_one_out))
        return plan

    def describe(self) -> str:
        """A short human-readable summary, e.g. ``"5 steps, 0.5x rate, 4 augmented views"``."""
        steps = f"leave-one-out <= {self.steps} steps" if self.leave_one_out else f"{self.steps} steps"
        rate = f"lr {self.lr:g}" if self.lr is not None else f"{self.lr_scale:g}x rate"
        parts = [steps] + ([rate] if self.steps else []) + ([f"{self.views} augmented views"] if self.views else [])
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr_scale": self.lr_scale, "views": self.views,
                "leave_one_out": self.leave_one_out, "chosen": dict(self.chosen)}

    @classmethod
    def from_dict(cls, d: dict) -> AdaptationPlan:
        return cls(int(d["steps"]), float(d.get("lr_scale", 1.0)), int(d.get("views", 0)),
                   bool(d.get("leave_one_out", False)), chosen=dict(d.get("chosen", {})))


def nearest_shots(stored, shots: int) -> int:
    """The stored shot count nearest ``shots`` (ties: the smaller): what a support set of another size uses."""
    return min(stored, key=lambda s: (abs(s - shots), s))


def plan_for_shots(plans: dict[int, AdaptationPlan], shots: int, default: AdaptationPlan) -> AdaptationPlan:
    """The plan stored for ``shots``, else the nearest stored shot count, else ``default``."""
    return plans[nearest_shots(plans, shots)] if plans else default


def describe_plans(algo, shots_list) -> str:
    """``"1-shot <plan>; 5-shot <plan>"``: the plans ``algo`` follows for these shot counts."""
    return "; ".join(f"{s}-shot {algo.plan_for(s).describe()}" for s in shots_list)


def plans_to_dict(plans: dict[int, AdaptationPlan]) -> dict:
    return {str(s): p.to_dict() for s, p in sorted(plans.items())}


def plans_from_dict(d: dict) -> dict[int, AdaptationPlan]:
    return {int(s): AdaptationPlan.from_dict(p) for s, p in d.items()}


# --- augmented views -----------------------------------------------------------------------------------
VIEW_AUGMENT = JointAugment(flip=True, scale=None, crop_area=(0.6, 1.0), crop_aspect=(3 / 4, 4 / 3), colour=0.2)


def augment_views(x: torch.Tensor, y: torch.Tensor, ignore: torch.Tensor | None, views: int, seed: int = 0):
    """The support set followed by ``views`` augmented copies of it: (x, y, ignore) with S * (1 + views) images
    (with negatives, images whose mask is empty, the copies are of the P positive images: S + P * views images).

    Each copy is :data:`VIEW_AUGMENT` (the training augmentation, :class:`~fewseg.data.transforms.JointAugment`)
    applied per image: a horizontal flip (p = 0.5), a crop of 60-100% of the area (aspect 3/4-4/3) resized back
    (bilinear for images, nearest for masks) and brightness / contrast / saturation factors in [0.8, 1.2].
    The draws come from a generator seeded by ``seed`` alone: the same inputs and seed give the same views.
    x [S,C,H,W] in [0,1], y [S,1,H,W], ignore [S,1,H,W] bool | None.
    """
    if views <= 0:
        return x, y, ignore
    gen = torch.Generator().manual_seed(int(seed))
    ign = torch.zeros_like(y, dtype=torch.bool) if ignore is None else ignore
    xs, ys, igs = [x], [y], [ign]
    shown = positives(y)
    copied = [i for i, p in enumerate(shown) if p] if any(shown) else list(range(x.shape[0]))
    for _ in range(views):
        for i in copied:
            xi, yi, gi = VIEW_AUGMENT(x[i], y[i], ign[i], gen)
            xs.append(xi[None]), ys.append(yi[None]), igs.append(gi[None])
    out_ignore = torch.cat(igs) if ignore is not None or any(g.any() for g in igs) else None
    return torch.cat(xs), torch.cat(ys), out_ignore


def positives(y: torch.Tensor) -> list[bool]:
    """Whether each support mask y [S,1,H,W] holds foreground (False: a negative image)."""
    return (y.reshape(y.shape[0], -1) > 0).any(dim=1).tolist()


def leave_one_out_applies(y: torch.Tensor) -> bool:
    """Whether leave-one-out can pick a step count for support masks ``y``: two or more images show the class (a
    support set without any positive: two or more images)."""
    shown = positives(y)
    return sum(shown) >= 2 or (not any(shown) and len(shown) >= 2)


def held_out(y: torch.Tensor) -> list[int]:
    """The images leave-one-out holds out: each one whose removal leaves a positive image (all of them when no
    image is positive)."""
    shown = positives(y)
    if not any(shown):
        return list(range(len(shown)))
    return [j for j in range(len(shown)) if sum(shown) - shown[j] >= 1]


# --- adaptation with a plan ----------------------------------------------------------------------------
def _pooled_iou(inter: float, union: float) -> float:
    return inter / union if union > 0 else 1.0


def leave_one_out_scores(algo, plan: AdaptationPlan, x, y, ignore, seed: int = 0, threshold: float = 0.5) -> list:
    """Pooled IoU of the held-out images after k = 0..plan.steps steps, each image of :func:`held_out` held out
    once (S >= 2; never the only positive image)."""
    inter, union = [0.0] * (plan.steps + 1), [0.0] * (plan.steps + 1)
    n = x.shape[0]

    def score(k, adapted, j):
        stats = binary_stats(adapted.predict(x[j:j + 1]) > threshold, y[j:j + 1],
                             None if ignore is None else ignore[j:j + 1])
        inter[k] += float(stats.fg_inter.sum())
        union[k] += float(stats.fg_union.sum())

    for j in held_out(y):
        keep = [i for i in range(n) if i != j]
        xs, ys, igs = augment_views(x[keep], y[keep], None if ignore is None else ignore[keep], plan.views, seed)
        adapted = algo.adapt_run(xs, ys, igs, 0, plan.lr_scale, plan.lr)
        score(0, adapted, j)
        algo.adapt_run(xs, ys, igs, plan.steps, plan.lr_scale, plan.lr, on_step=lambda k, a, j=j: score(k, a, j))
    return [_pooled_iou(i, u) for i, u in zip(inter, union)]


def best_steps(scores: Sequence[float], cap: int) -> int:
    """The step count <= cap with the best held-out score (ties: fewer steps)."""
    return max(range(min(cap, len(scores) - 1) + 1), key=lambda k: (scores[k], -k))


def adapt_with_plan(algo, plan: AdaptationPlan, x, y, ignore, seed: int = 0):
    """Adapt ``algo`` to checked support tensors following ``plan``; ``.info`` records what was done."""
    steps = plan.steps
    if plan.leave_one_out and x.shape[0] >= 2 and steps > 0 and leave_one_out_applies(y):
        steps = best_steps(leave_one_out_scores(algo, plan, x, y, ignore, seed), plan.steps)
    xs, ys, igs = augment_views(x, y, ignore, plan.views, seed)
    adapted = algo.adapt_run(xs, ys, igs, steps, plan.lr_scale, plan.lr)
    adapted.info = {"steps": steps, "plan": plan.describe(), "support_images": int(xs.shape[0])}
    return adapted


# --- choosing plans on validation classes --------------------------------------------------------------
def choose_plans(algo, episodes_by_shots: dict[int, list], steps_grid: Sequence[int] = DEFAULT_STEPS_GRID,
                 rate_scales: Sequence[float] = DEFAULT_RATE_SCALES, views: int = 4, leave_one_out: bool = True,
                 threshold: float = 0.5, seed: int = 0, device="cpu",
                 log: Callable[[str], None] = print) -> dict[int, AdaptationPlan]:
    """{shots: the best plan on that shot count's validation episodes} (mIoU over the episodes' classes).

    Candidates per shot count: every step count of ``steps_grid`` x every rate scale (only 1 for algorithms that
    learn their rates: they are used as learned), plain; at 1 shot also with ``views`` augmented views; at 2+
    shots also with leave-one-out step selection capped at each step count. Ties go to fewer steps, then the
    plain plan, then the rate scale nearest 1. Each candidate's mIoU is kept in ``plan.chosen``.
    """
    scales = (1.0,) if getattr(algo, "learns_rates", False) else tuple(float(s) for s in rate_scales)
    grid = sorted({int(k) for k in steps_grid} | {0})
    plans = {}
    for shots, episodes in sorted(episodes_by_shots.items()):
        modes = [(0, False)] + ([(views, False)] if shots == 1 and views > 0 else []) \
            + ([(0, True)] if shots >= 2 and leave_one_out else [])
        scores = _score_candidates(algo, episodes, grid, scales, modes, threshold, seed, device)
        zero = scores[(0, 1.0, 0, False)]
        best = max(scores, key=lambda c, scores=scores: (scores[c], -c[0], -(c[2] > 0) - c[3], -abs(math.log(c[1]))))
        k, scale, v, loo = best
        record = {"val_miou": scores[best], "zero_shot_val_miou": zero, "episodes": len(episodes),
                  "candidates": len(scores)}
        plans[shots] = AdaptationPlan(k, scale if k else 1.0, v, loo, chosen=record)
        log(f"test time, {shots}-shot: {plans[shots].describe()} (val mIoU {100 * scores[best]:.1f}, "
            f"0 steps {100 * zero:.1f}; {len(scores)} candidates on {len(episodes)} val episodes)")
    return plans


def _score_candidates(algo, episodes, grid, scales, modes, threshold, seed, device) -> dict:
    """{(steps, scale, views, leave_one_out): val mIoU}: each episode adapts once per (scale, mode) to the grid's
    largest step count and is scored after every step (leave-one-out: at the step count it picks per cap)."""
    top = max(grid)
    accs: dict[tuple, IoUAccumulator] = {}
    for first, (scale, (views, loo)) in enumerate((s, m) for s in scales for m in modes):
        for ep in episodes:
            ep = ep.to(device)
            x = ep.support_x
            y, ign = algo._check_support(x, ep.support_y, ep.support_ignore)
            if loo and leave_one_out_applies(y):
                plan = AdaptationPlan(top, scale, views, loo)
                held_out = leave_one_out_scores(algo, plan, x, y, ign, seed, threshold)
                picks = {cap: best_steps(held_out, cap) for cap in grid if cap > 0}
            else:
                picks = {k: k for k in grid if k > 0}
            if first == 0:
                picks[0] = 0  # 0 steps: one candidate, whatever the rate and mode
            wanted, per_step = set(picks.values()) | {0}, {}

            def score(k, adapted, ep=ep, per_step=per_step, wanted=wanted):
                if k in wanted:  # only the step counts some candidate uses
                    with torch.no_grad():
                        per_step[k] = binary_stats(adapted.predict(ep.query_x) > threshold, ep.query_y,
                                                   ep.query_ignore)
            xs, ys, igs = augment_views(x, y, ign, views, seed)
            score(0, algo.adapt_run(xs, ys, igs, 0, scale))
            algo.adapt_run(xs, ys, igs, max(wanted), scale, on_step=score)
            for cap, k in picks.items():
                key = (cap, scale, views, loo) if cap else (0, 1.0, 0, False)
                accs.setdefault(key, IoUAccumulator()).update(ep.class_id, per_step[k])
    return {key: acc.summary()["miou"] for key, acc in accs.items()}
