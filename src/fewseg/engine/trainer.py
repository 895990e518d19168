"""Meta-training: config in, checkpoints and logs out; resumable to the same weights.

One module: the loop, its checkpoints, its log and resume share one state (iteration, optimiser, sampler RNG,
best score), which must be written and read back together for a resumed run to reach the same weights.

Output directory:
    config.yaml          the resolved config
    data.json            the classes of each split (and the dataset's own description)
    log.jsonl            one line per iteration (loss, lr, meta-gradient norm before clipping, seconds, data
                         seconds, val mIoU when run; every INNER_LOG_EVERY iterations from the first, the mean
                         support loss before and after the inner steps)
    checkpoints/last     weights.safetensors + meta.json + optimizer.pt (atomic)
    checkpoints/best     the best validation mIoU so far

Under ``torchrun`` (several processes, ``fewseg.distributed``) every rank trains the same weights on its share of
each meta-batch; rank 0 alone writes the run directory and shows progress; ``world_size`` is recorded in meta.json
and in every log line.

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
import os
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from fewseg.config import Config, config_from_dict
from fewseg.data.io import write_text_atomic
from fewseg.data.sampler import EpisodeSampler
from fewseg.distributed import init_process_group
from fewseg.engine.builders import build_all, build_dataset, check_model_input, model_channels, resolve_device
from fewseg.engine.checkpoint import (
    check_meta,
    delay_keyboard_interrupt,
    load_checkpoint,
    save_checkpoint,
    sigterm_as_interrupt,
)
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.engine.run_helpers import check_writable, log_iteration, outer_lr_at
from fewseg.errors import CheckpointError, ConfigError, Interrupted, Terminated, TrainingError

# log the inner loop's support loss before and after its steps every this many iterations (it costs about a third
# of a second-order meta-step: inner steps without graph on every task of the batch)
INNER_LOG_EVERY = 10


def make_augment(cfg: Config):
    if not cfg.data.augment:
        return None
    from fewseg.data.transforms import JointAugment
    return JointAugment()


class Trainer:
    """Meta-trains ``cfg.algorithm`` on the train classes, validating on the val classes."""

    def __init__(self, cfg: Config, progress: bool = True):
        self.cfg = cfg
        self.device = resolve_device(cfg.device, "config key 'device'")
        self.out = Path(cfg.output)
        self.group = init_process_group(self.device, cfg.train.dist_timeout)  # one process outside torchrun
        self.progress = progress and self.group.is_main
        check_model_input(cfg)  # an image size the network cannot take fails here, not mid-run
        if self.group.is_main:
            check_writable(self.out)
        self.train_set = build_dataset(cfg.data, "train", cfg.seed, model_channels(cfg))
        self.val_set = build_dataset(cfg.data, "val", cfg.seed, model_channels(cfg))
        self.sampler = EpisodeSampler(self.train_set, cfg.train.shots, cfg.train.queries,
                                      seed=cfg.seed + cfg.train.data_seed_offset, augment=make_augment(cfg),
                                      class_sampling=cfg.train.class_sampling, negatives=cfg.data.negatives)
        self.model, self.algo = build_all(cfg, self.device, class_counts=self.sampler.class_counts())
        self.val_episodes = EpisodeSampler(self.val_set, cfg.train.shots, cfg.train.queries, seed=cfg.seed + 1,
                                           negatives=cfg.data.negatives).fixed_episodes(cfg.train.val_episodes)
        params = list(self.algo.parameters())
        if cfg.train.outer_optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.train.outer_lr)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.train.outer_lr)
        self.iteration = 0
        self.best_val = -1.0
        self.last_val: float | None = None
        # an iteration whose optimiser step is done but whose validation / best save / log line is not:
        # {"record": log line, "validate": still to validate, "best": checkpoints/best still to write}
        self._pending: dict | None = None

    # --- checkpoints -----------------------------------------------------------------------------
    def state_meta(self) -> dict:
        return {"config": self.cfg.to_dict(), "iteration": self.iteration, "best_val_miou": self.best_val,
                "last_val_miou": self.last_val, "algorithm_state": self.algo.extra_state(), "kind": "meta",
                "preprocessing": self.preprocessing(), "world_size": self.group.world}

    def preprocessing(self) -> dict:
        """How images reach the network, so adaptation and inference prepare new photos the same way."""
        return {"image_size": self.cfg.data.image_size, "resize": getattr(self.train_set, "resize", "stretch"),
                "pixels": "RGB scaled to [0, 1], no mean/std normalisation", "mask": "1 = class, 0 = rest",
                "ignore_label": 255}

    def save(self, name: str, sampler_state: torch.Tensor | None = None, pending: dict | None = None) -> Path:
        """Write ``checkpoints/<name>``: weights, optimiser, the sampler state that goes with them (default: the
        sampler's current state) and, for an interrupted iteration, what of it is still to do (``pending``).

        A failed write (disk full, permissions) is a one-line :class:`TrainingError`; the previous
        checkpoint of that name is left intact (:func:`save_checkpoint` is atomic).
        """
        path = self.out / "checkpoints" / name
        if not self.group.is_main:  # every rank holds the same state; rank 0 writes it
            return path
        tensors = {k: v for k, v in self.algo.state_dict().items()}
        extra = {"optimizer": self.optimizer.state_dict(),
                 "sampler_rng": self.sampler.generator.get_state() if sampler_state is None else sampler_state}
        meta = self.state_meta()
        if pending is not None:
            meta["pending"] = pending
        try:
            save_checkpoint(path, tensors, meta, extra)
        except OSError as exc:
            kept = "the previous one is intact" if path.exists() else "no earlier checkpoint of that name exists"
            raise TrainingError(f"could not write checkpoint {path} ({exc.strerror or exc}); {kept}") from None
        return path

    def resume(self, directory: str | Path) -> None:
        ckpt = load_checkpoint(directory)
        check_meta(ckpt.meta, ckpt.path / "meta.json")
        state = ckpt.optimizer_state
        if state is None:
            raise CheckpointError(f"checkpoint {directory} has no optimizer state: it cannot be resumed")
        if not (isinstance(state, dict) and isinstance(state.get("optimizer"), dict)
                and isinstance(state.get("sampler_rng"), torch.Tensor)):
            raise CheckpointError(f"checkpoint {directory}: optimizer.pt must hold 'optimizer' (a state dict) and "
                                  "'sampler_rng' (a generator state)")
        try:
            self.algo.load_state_dict(ckpt.tensors)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {directory} does not fit this model: "
                                  f"{str(exc).splitlines()[0]}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint {directory}: the optimiser state does not fit this run "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        try:
            self.sampler.generator.set_state(state["sampler_rng"])
        except (RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {directory}: 'sampler_rng' is not a CPU generator state "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        self.iteration = ckpt.meta["iteration"]
        self.best_val = float(ckpt.meta.get("best_val_miou", -1.0))
        self.last_val = ckpt.meta.get("last_val_miou")
        self._pending = ckpt.meta.get("pending")
        log = self.out / "log.jsonl"
        if log.exists() and self.group.is_main:  # drop lines written after the checkpoint (and the interrupted iteration's, redone)
            keep_to = self.iteration - 1 if self._pending is not None else self.iteration
            lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
                     if (log_iteration(ln) or keep_to + 1) <= keep_to]
            write_text_atomic(log, "".join(ln + "\n" for ln in lines))

    # --- the loop --------------------------------------------------------------------------------
    def validate(self) -> float:
        self.algo.eval()
        summary = evaluate(MetaLearner(self.algo), self.val_episodes, device=self.device, group=self.group)
        self.algo.train()
        return summary["miou"]

    def _write_run_files(self) -> None:
        data = {"train": self.train_set.describe(), "val": self.val_set.describe()}
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            write_text_atomic(self.out / "data.json", json.dumps(data, indent=1))
        except OSError as exc:
            raise TrainingError(f"cannot write the run files into {self.out} ({exc.strerror or exc})") from None

    def fit(self) -> dict:
        """Train to ``train.iterations``; returns {"iteration", "best_val_miou", "last_val_miou", "output"}.

        Ctrl-C or SIGTERM: the interrupted step is skipped (or, once its optimiser step is done, kept and
        recorded as pending), ``checkpoints/last`` is written and :class:`~fewseg.errors.Interrupted` is
        raised; ``--resume`` then continues to the weights an uninterrupted run reaches.
        """
        cfg = self.cfg
        if self.group.is_main:
            self._write_run_files()
        # a fresh run starts a fresh log; a resumed one continues it (resume() already cut it at the checkpoint)
        log_path = self.out / "log.jsonl" if self.group.is_main else os.devnull
        log = open(log_path, "a" if self.iteration > 0 else "w", encoding="utf-8")  # noqa: SIM115
        bar = tqdm(total=cfg.train.iterations, initial=self.iteration, disable=not self.progress,
                   desc=f"meta-train {cfg.algorithm.name}", dynamic_ncols=True)
        # the sampler state that goes with the current weights: before a step, the state before its batch was
        # drawn; once the step is applied, the sampler's current state (None)
        resume_rng: torch.Tensor | None = None
        try:
            with sigterm_as_interrupt():
                if self._pending is not None:  # finish the iteration an interrupt cut short
                    self._finish_iteration(log)
                    self._after_iteration(bar, None, count=False)
                while self.iteration < cfg.train.iterations:
                    resume_rng = self.sampler.generator.get_state()
                    t0 = time.perf_counter()
                    batch = self.sampler.meta_batch(cfg.train.meta_batch).to(self.device)
                    t_data = time.perf_counter() - t0
                    lr = outer_lr_at(cfg, self.iteration)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    self.optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                        enabled=cfg.train.autocast == "bf16"):
                        logs = self.algo.meta_backward(batch, iteration=self.iteration, group=self.group)
                    self.group.sum_grads(self.algo.parameters())  # the whole batch's meta-gradient on every rank
                    self._check_finite(logs["loss"])
                    grad_norm = self._clip()
                    inner = (self._support_losses(batch) if self.group.is_main
                             and self.iteration % INNER_LOG_EVERY == 0 else None)
                    with delay_keyboard_interrupt():
                        self.optimizer.step()
                        self.iteration += 1
                        record = {"iteration": self.iteration, "loss": logs["loss"], "lr": lr,
                                  "grad_norm": grad_norm, "seconds": time.perf_counter() - t0,
                                  "data_seconds": t_data, "task_weights": logs.get("task_weights"),
                                  "world_size": self.group.world}
                        if inner is not None:
                            record["support_loss_before"], record["support_loss_after"] = inner
                        validate = (self.iteration % cfg.train.val_every == 0
                                    or self.iteration == cfg.train.iterations)
                        self._pending = {"record": record, "validate": validate, "best": False}
                        resume_rng = None
                    self._finish_iteration(log)
                    self._after_iteration(bar, logs["loss"])
        except KeyboardInterrupt as exc:
            signal_name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            try:
                with delay_keyboard_interrupt():  # a second Ctrl-C / SIGTERM does not cut this write short
                    path = self.save("last", sampler_state=resume_rng, pending=self._pending)
            except KeyboardInterrupt:
                path = self.out / "checkpoints" / "last"
            finally:
                bar.close()
                log.close()
            raise Interrupted(f"interrupted at iteration {self.iteration} ({signal_name}); state saved to {path} "
                              f"(resume with --resume {self.out})", signal_name) from None
        except BaseException:
            bar.close()
            log.close()
            raise
        bar.close()
        log.close()
        return {"iteration": self.iteration, "best_val_miou": self.best_val, "last_val_miou": self.last_val,
                "output": str(self.out)}

    def _finish_iteration(self, log) -> None:
        """Validation, ``checkpoints/best`` and the log line of the iteration whose step was just applied
        (``self._pending``); each part is recorded as done as soon as it is, so an interrupt anywhere leaves
        ``_pending`` describing exactly what is left."""
        pending = self._pending
        if pending["validate"]:
            val = self.validate()
            with delay_keyboard_interrupt():
                self.last_val = val
                pending["record"]["val_miou"] = val
                if val > self.best_val:
                    self.best_val = val
                    pending["best"] = True
                pending["validate"] = False
        if pending["best"]:
            self.save("best")
            pending["best"] = False
        with delay_keyboard_interrupt():
            log.write(json.dumps(pending["record"]) + "\n")
            log.flush()
            self._pending = None

    def _after_iteration(self, bar, loss: float | None, count: bool = True) -> None:
        cfg = self.cfg
        if self.iteration % cfg.train.checkpoint_every == 0 or self.iteration == cfg.train.iterations:
            self.save("last")
        bar.update(1 if count else 0)
        bar.set_postfix(loss="-" if loss is None else f"{loss:.3f}",
                        val_miou="-" if self.last_val is None else f"{self.last_val:.3f}")

    def _support_losses(self, batch) -> tuple[float, float]:
        """Mean support loss of the batch's tasks at the weights of this step and after ``inner_steps`` plain inner
        steps (no outer graph, eval mode): the inner loop's progress, or its divergence when ``after > before``.
        Reads no random state and leaves the gradients alone: training reaches the same weights with it or without."""
        algo, losses = self.algo, ([], [])
        algo.eval()
        try:
            for i in range(batch.num_tasks):
                ep = batch.task(i)
                for steps, out in ((0, losses[0]), (algo.inner_steps, losses[1])):
                    adapted = algo.adapt_run(ep.support_x, ep.support_y, ep.support_ignore, steps)
                    with torch.no_grad():
                        logits = adapted.forward(adapted.params, ep.support_x)
                        out.append(float(algo.loss_fn(logits, ep.support_y, ep.support_ignore)))
        finally:
            algo.train()
        return sum(losses[0]) / len(losses[0]), sum(losses[1]) / len(losses[1])

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
    """A Trainer rebuilt from ``run_dir/checkpoints/last`` (its own config, plus ``overrides``).

    The run continues in ``run_dir`` itself, wherever it was first written: a moved or copied run never
    writes into the directory stored in its config.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints" / "last"
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt.meta.get("kind") != "meta":
        raise CheckpointError(f"{ckpt.path} is not a meta-training checkpoint (kind={ckpt.meta.get('kind')!r})")
    check_meta(ckpt.meta, ckpt.path / "meta.json")
    cfg = config_from_dict(ckpt.meta["config"], overrides, stored=True)
    asked = [o for o in overrides if o.split("=", 1)[0].strip() == "output"]
    if asked and Path(cfg.output).resolve() != run_dir.resolve():
        raise ConfigError(f"--resume continues the run in {run_dir}; an 'output' override ({asked[-1]}) cannot move "
                          "it: copy the run folder and resume the copy")
    cfg.output = str(run_dir)
    trainer = Trainer(cfg, progress=progress)
    trainer.resume(ckpt_dir)
    return trainer
