"""What a task-attention model relates new classes to: ``fewseg evaluate --explain``.

For a ``task-attention`` checkpoint, every task attends over the learned memory of M task prototypes
(:meth:`fewseg.algorithms.task_attention.TaskAttention.attention`). This module reports

* per **test class**, the mean attention weights over the support sets of its evaluation episodes (the same
  fixed, seeded episodes ``fewseg evaluate`` scores, per shot count; each mean sums to 1);
* per **training class**, the mean over ``train_episodes`` support sets of ``train.shots`` images;
* per **memory slot**, the training classes (and test classes) that attend to it most;
* per **domain** (a mixture of domains, see ``fewseg.data.sources.mixture``), the mean over its test classes;

into ``explain.json``, and a heat map ``explain.png`` (test classes of the largest shot count and a sample of
training classes x memory slots) beside ``eval.json``. Other algorithms have no such memory: one-line error.

Example (a tiny untrained model; ``fewseg evaluate --checkpoint RUN --explain`` does this on a run):
    >>> import torch, fewseg
    >>> from fewseg.report.explain import attention_table
    >>> algo = fewseg.create_algorithm("task-attention", fewseg.create_model("seed-cnn", width=4), memory_slots=3)
    >>> ds = fewseg.create_dataset("synthetic", split="test", image_size=16, num_classes=2)
    >>> eps = fewseg.EpisodeSampler(ds, shots=2, queries=1, seed=0).fixed_episodes(4)
    >>> table = attention_table(algo, eps, ds.class_names)        # {class name: ([M] mean weights, episodes)}
    >>> [(len(w), n, round(sum(w), 6)) for w, n in table.values()]
    [(3, 2, 1.0), (3, 2, 1.0)]
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fewseg.data.episode import Episode
from fewseg.data.sampler import EpisodeSampler
from fewseg.engine.builders import build_dataset, model_channels
from fewseg.engine.eval_settings import eval_settings
from fewseg.errors import ConfigError
from fewseg.loading import load_algorithm, run_dir_of


def check_explainable(algo, name: str) -> None:
    """A one-line :class:`ConfigError` unless ``algo`` attends over a memory (task-attention with modulation)."""
    if not callable(getattr(algo, "attention", None)) or not getattr(algo, "modulation", False):
        raise ConfigError(f"--explain needs an algorithm with attention over a task memory (task-attention); "
                          f"this checkpoint's algorithm {name!r} has none")


def attention_table(algo, episodes: Sequence[Episode], class_names: dict[int, str],
                    device: torch.device | str = "cpu") -> dict[str, tuple[list[float], int]]:
    """{class name: (mean attention weights [M] over the support sets of its episodes, number of episodes)}."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for ep in episodes:
        ign = None if ep.support_ignore is None else ep.support_ignore.to(device)
        a = algo.attention(ep.support_x.to(device), ep.support_y.to(device), ign).double().cpu()
        sums[ep.class_id] = sums.get(ep.class_id, 0) + a
        counts[ep.class_id] = counts.get(ep.class_id, 0) + 1
    return {class_names[c]: ((sums[c] / counts[c]).tolist(), counts[c]) for c in sorted(sums)}


def _top(table: dict[str, list[float]], slot: int, k: int) -> list[list]:
    ranked = sorted(table.items(), key=lambda kv: -kv[1][slot])[:k]
    return [[name, round(w[slot], 4)] for name, w in ranked]


def sample_training_classes(train: dict[str, list[float]], slots: int, n: int) -> list[str]:
    """Up to ``n`` training classes for the heat map: the strongest class of every slot, then evenly spaced."""
    names = list(train)
    chosen: list[str] = []
    for m in range(slots):
        best = max(names, key=lambda c: train[c][m])
        if best not in chosen:
            chosen.append(best)
    step = max(1, len(names) // max(1, n))
    for c in names[::step]:
        if len(chosen) >= n:
            break
        if c not in chosen:
            chosen.append(c)
    return chosen[:n]


def plot_heatmap(rows: dict[str, list[float]], n_test: int, out: Path, title: str) -> Path:
    """Rows (test classes first, then training classes) x memory slots, weights as colours."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    data = np.asarray([rows[n] for n in names])
    fig, ax = plt.subplots(figsize=(max(6.0, 3.5 + 0.45 * data.shape[1]), 1.2 + 0.22 * len(names)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=max(float(data.max()), 1e-6))
    ax.set_xticks(range(data.shape[1]), [str(m) for m in range(data.shape[1])])
    ax.set_yticks(range(len(names)), [f"test: {n}" if i < n_test else f"train: {n}" for i, n in enumerate(names)],
                  fontsize=7)
    if 0 < n_test < len(names):
        ax.axhline(n_test - 0.5, color="white", linewidth=1.5)
    ax.set_xlabel("memory slot")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean attention weight")
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")  # the colour bar label stays inside
    plt.close(fig)
    return out


def explain_checkpoint(checkpoint, shots: Sequence[int] | None = None, episodes: int | None = None,
                       queries: int | None = None, seed: int = 0, output: str | os.PathLike | None = None,
                       device: str = "cpu", train_episodes: int = 2, train_sample: int = 16, top: int = 3,
                       log: Callable[[str], None] = print) -> dict:
    """Attention of the test classes (the evaluation's episodes) and of the training classes over the memory
    slots of a task-attention checkpoint: ``explain.json`` and ``explain.png`` in ``output``'s folder (default:
    beside the run's eval.json). Returns the record; other algorithms: a one-line ConfigError."""
    cfg, algo, ckpt_dir = load_algorithm(checkpoint, device)
    check_explainable(algo, cfg.algorithm.name)
    if int(os.environ.get("RANK", "0") or 0) != 0:  # under torchrun rank 0 alone explains
        return {}
    settings = eval_settings(cfg, shots, episodes, queries)  # the same defaults as `fewseg evaluate`
    shots, episodes, queries = settings.shots, settings.episodes, settings.queries
    channels = model_channels(cfg)
    test_set = build_dataset(cfg.data, "test", cfg.seed, channels)
    train_set = build_dataset(cfg.data, "train", cfg.seed, channels)
    domain_of = getattr(test_set, "domain_of", None)

    per_shot = {}
    with warnings.catch_warnings():  # classes with too few images: the evaluation itself warns about them
        warnings.simplefilter("ignore")
        for s in shots:  # the very episodes `fewseg evaluate` scores (run_protocol's sampler and seed)
            eps = EpisodeSampler(test_set, s, queries, seed=seed).fixed_episodes(episodes)
            per_shot[s] = attention_table(algo, eps, test_set.class_names, device)
        sampler = EpisodeSampler(train_set, cfg.train.shots, 1, seed=seed)
    train_eps = [sampler.sample(c) for c in sampler.classes for _ in range(train_episodes)]
    train = {n: w for n, (w, _) in attention_table(algo, train_eps, train_set.class_names, device).items()}

    main = max(shots)
    test = {n: w for n, (w, _) in per_shot[main].items()}
    slots = [{"slot": m, "train_classes": _top(train, m, top), "test_classes": _top(test, m, top)}
             for m in range(algo.memory_slots)]
    record = {"checkpoint": str(ckpt_dir), "memory_slots": algo.memory_slots, "episodes": episodes,
              "queries": queries, "seed": seed, "train_shots": cfg.train.shots, "train_episodes": train_episodes,
              "test": {str(s): {n: {"weights": w, "episodes": k} for n, (w, k) in t.items()}
                       for s, t in per_shot.items()},
              "train": train, "slots": slots}
    if domain_of is not None:
        record["test_domains"] = {str(s): _domain_means(t, domain_of) for s, t in per_shot.items()}
        record["train_domains"] = _domain_means({n: (w, 1) for n, w in train.items()}, domain_of)

    out_dir = Path(output).parent if output else (run_dir_of(ckpt_dir) or ckpt_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampled = sample_training_classes(train, algo.memory_slots, train_sample)
    png = plot_heatmap({**test, **{n: train[n] for n in sampled if n not in test}}, len(test),
                       out_dir / "explain.png",
                       f"mean attention: test classes ({main}-shot), {len(sampled)} training classes")
    record["heatmap"] = str(png)
    (out_dir / "explain.json").write_text(json.dumps(record, indent=1))
    for name, w in test.items():
        m = max(range(len(w)), key=w.__getitem__)
        shared = ", ".join(n for n, _ in slots[m]["train_classes"])
        log(f"{name}: slot {m} ({100 * w[m]:.0f}%), with training classes {shared}")
    log(f"attention per test class and memory slot written to {out_dir / 'explain.json'} and {png}")
    return record


def _domain_means(table: dict[str, tuple[list[float], int]], domain_of: Callable[[str], str]) -> dict:
    groups: dict[str, list[list[float]]] = {}
    for name, (w, _) in table.items():
        groups.setdefault(domain_of(name), []).append(w)
    return {d: [sum(col) / len(ws) for col in zip(*ws)] for d, ws in sorted(groups.items())}
