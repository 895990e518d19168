"""Meta-training: config in, checkpoints and logs out; resumable to the same weights.

One module: the loop, its checkpoints, its log and resume share one state (iteration, optimiser, sampler RNG,
best score), which must be written and read back together for a resumed run to reach the same weights.

Output directory:
    config.yaml          the resolved config
    data.json            the classes of each split (and the dataset's own description)
    log.jsonl            one line per iteration (loss, lr, seconds, data seconds, val mIoU when run)
    checkpoints/last     weights.safetensors + meta.json + optimizer.pt (atomic)
    checkpoints/best     the best validation mIoU so far

Example (a tiny run; the recipe itself trains 300 iterations of a depth-3 U-Net on 48x48 images):
    >>> import os, tempfile
    >>> from fewseg.config import load_config
    >>> from fewseg.engine.trainer import Trainer
    >>> tiny = ["train.iterations=2", "train.val_episodes=2", "data.image_size=16", "model.options.depth=2",
    ...         "model.options.width=4", f"output={tempfile.mkdtemp()}"]
    >>> cfg = load_config("synthetic_maml", tiny)
    >>> result = Trainer(cfg, progress=False).fit()   # {"iteration": 2, "best_val_miou": ..., "output": ...}
    >>> result["iteration"], sorted(os.listdir(result["output"]))
    (2, ['checkpoints', 'config.yaml', 'data.json', 'log.jsonl'])
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from fewseg.config import Config, config_from_dict
from fewseg.data.sampler import EpisodeSampler
from fewseg.engine.builders import build_all, build_dataset
from fewseg.engine.checkpoint import delay_keyboard_interrupt, load_checkpoint, save_checkpoint
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.errors import CheckpointError, TrainingError


def outer_lr_at(cfg: Config, iteration: int) -> float:
    """Outer learning rate at ``iteration``: constant, or cosine annealed to 1% of the base rate."""
    base = cfg.train.outer_lr
    if cfg.train.schedule == "cosine" and cfg.train.iterations > 0:
        progress = min(iteration / cfg.train.iterations, 1.0)
        return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    return base


def make_augment(cfg: Config):
    if not cfg.data.augment:
        return None
    from fewseg.data.transforms import JointAugment
    return JointAugment()


class Trainer:
    """Meta-trains ``cfg.algorithm`` on the train classes, validating on the val classes."""

    def __init__(self, cfg: Config, progress: bool = True):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.out = Path(cfg.output)
        self.progress = progress
        self.train_set = build_dataset(cfg.data, "train", cfg.seed)
        self.val_set = build_dataset(cfg.data, "val", cfg.seed)
        self.sampler = EpisodeSampler(self.train_set, cfg.train.shots, cfg.train.queries,
                                      seed=cfg.seed + cfg.train.data_seed_offset, augment=make_augment(cfg),
                                      class_sampling=cfg.train.class_sampling)
        self.model, self.algo = build_all(cfg, self.device, class_counts=self.sampler.class_counts())
        self.val_episodes = EpisodeSampler(self.val_set, cfg.train.shots, cfg.train.queries,
                                           seed=cfg.seed + 1).fixed_episodes(cfg.train.val_episodes)
        params = list(self.algo.parameters())
        if cfg.train.outer_optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.train.outer_lr)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.train.outer_lr)
        self.iteration = 0
        self.best_val = -1.0
        self.last_val: float | None = None

    # --- checkpoints -----------------------------------------------------------------------------
    def state_meta(self) -> dict:
        return {"config": self.cfg.to_dict(), "iteration": self.iteration, "best_val_miou": self.best_val,
                "last_val_miou": self.last_val, "algorithm_state": self.algo.extra_state(), "kind": "meta",
                "preprocessing": self.preprocessing()}

    def preprocessing(self) -> dict:
        """How images reach the network, so adaptation and inference prepare new photos the same way."""
        return {"image_size": self.cfg.data.image_size, "resize": getattr(self.train_set, "resize", "stretch"),
                "pixels": "RGB scaled to [0, 1], no mean/std normalisation", "mask": "1 = class, 0 = rest",
                "ignore_label": 255}

    def save(self, name: str, sampler_state: torch.Tensor | None = None) -> Path:
        path = self.out / "checkpoints" / name
        tensors = {k: v for k, v in self.algo.state_dict().items()}
        extra = {"optimizer": self.optimizer.state_dict(),
                 "sampler_rng": self.sampler.generator.get_state() if sampler_state is None else sampler_state}
        save_checkpoint(path, tensors, self.state_meta(), extra)
        return path

    def resume(self, directory: str | Path) -> None:
        ckpt = load_checkpoint(directory)
        if ckpt.optimizer_state is None:
            raise CheckpointError(f"checkpoint {directory} has no optimizer state: it cannot be resumed")
        try:
            self.algo.load_state_dict(ckpt.tensors)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {directory} does not fit this model: "
                                  f"{str(exc).splitlines()[0]}") from None
        self.optimizer.load_state_dict(ckpt.optimizer_state["optimizer"])
        self.sampler.generator.set_state(ckpt.optimizer_state["sampler_rng"])
        self.iteration = int(ckpt.meta["iteration"])
        self.best_val = float(ckpt.meta["best_val_miou"])
        self.last_val = ckpt.meta.get("last_val_miou")
        log = self.out / "log.jsonl"
        if log.exists():  # drop lines written after the checkpoint
            lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["iteration"] <= self.iteration]
            log.write_text("".join(ln + "\n" for ln in lines))

    # --- the loop --------------------------------------------------------------------------------
    def validate(self) -> float:
        self.algo.eval()
        summary = evaluate(MetaLearner(self.algo), self.val_episodes, device=self.device)
        self.algo.train()
        return summary["miou"]

    def _write_run_files(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        data = {"train": self.train_set.describe(), "val": self.val_set.describe()}
        (self.out / "data.json").write_text(json.dumps(data, indent=1))

    def fit(self) -> dict:
        cfg = self.cfg
        self._write_run_files()
        # a fresh run starts a fresh log; a resumed one continues it (resume() already cut it at the checkpoint)
        log = open(self.out / "log.jsonl", "a" if self.iteration > 0 else "w")  # noqa: SIM115  (closed on every exit path below)
        bar = tqdm(total=cfg.train.iterations, initial=self.iteration, disable=not self.progress,
                   desc=f"meta-train {cfg.algorithm.name}", dynamic_ncols=True)
        rng_at_start = self.sampler.generator.get_state()
        try:
            while self.iteration < cfg.train.iterations:
                rng_at_start = self.sampler.generator.get_state()
                t0 = time.perf_counter()
                batch = self.sampler.meta_batch(cfg.train.meta_batch).to(self.device)
                t_data = time.perf_counter() - t0
                lr = outer_lr_at(cfg, self.iteration)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.train.autocast == "bf16"):
                    logs = self.algo.meta_backward(batch, iteration=self.iteration)
                self._check_finite(logs["loss"])
                grad_norm = self._clip()
                with delay_keyboard_interrupt():
                    self.optimizer.step()
                    self.iteration += 1
                record = {"iteration": self.iteration, "loss": logs["loss"], "lr": lr, "grad_norm": grad_norm,
                          "seconds": time.perf_counter() - t0, "data_seconds": t_data,
                          "task_weights": logs.get("task_weights")}
                if self.iteration % cfg.train.val_every == 0 or self.iteration == cfg.train.iterations:
                    self.last_val = self.validate()
                    record["val_miou"] = self.last_val
                    if self.last_val > self.best_val:
                        self.best_val = self.last_val
                        self.save("best")
                log.write(json.dumps(record) + "\n")
                log.flush()
                if self.iteration % cfg.train.checkpoint_every == 0 or self.iteration == cfg.train.iterations:
                    self.save("last")
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}",
                                val_miou="-" if self.last_val is None else f"{self.last_val:.3f}")
        except KeyboardInterrupt:
            # the interrupted iteration never reached its optimiser step: save the state before it
            self.save("last", sampler_state=rng_at_start)
            bar.close()
            log.close()
            raise TrainingError(f"interrupted at iteration {self.iteration}; state saved to "
                                f"{self.out / 'checkpoints' / 'last'} (resume with --resume {self.out})") from None
        bar.close()
        log.close()
        return {"iteration": self.iteration, "best_val_miou": self.best_val, "last_val_miou": self.last_val,
                "output": str(self.out)}

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss) or loss > self.cfg.train.max_loss:
            last = self.out / "checkpoints" / "last"
            kept = f"last good checkpoint kept at {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingError(f"meta-loss is {loss:.4g} at iteration {self.iteration + 1} (limit "
                                f"train.max_loss={self.cfg.train.max_loss:g}); stopping, {kept}; "
                                "try a smaller algorithm.inner_lr or train.outer_lr")

    def _clip(self) -> float:
        params = [p for p in self.algo.parameters() if p.grad is not None]
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(norm):
            self._check_finite(float("nan"))
        return norm


def resume_trainer(run_dir: str | Path, overrides: list[str] = (), progress: bool = True) -> Trainer:
    """A Trainer rebuilt from ``run_dir/checkpoints/last`` (its own config, plus ``overrides``)."""
    ckpt_dir = Path(run_dir) / "checkpoints" / "last"
    meta = load_checkpoint(ckpt_dir).meta
    cfg = config_from_dict(meta["config"], overrides, stored=True)
    trainer = Trainer(cfg, progress=progress)
    trainer.resume(ckpt_dir)
    return trainer
