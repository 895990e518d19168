"""What an evaluation of a run scores: shot counts, episodes, queries and tiling, the caller's or the run's ``eval``
config.

One rule for ``fewseg evaluate`` (:func:`fewseg.engine.session.evaluate_checkpoint`) and ``fewseg evaluate
--explain`` (:func:`fewseg.report.explain.explain_checkpoint`), so that both see the same episodes.

Example:
    >>> from fewseg.config import Config
    >>> cfg = Config()
    >>> eval_settings(cfg), eval_settings(cfg, shots=[1], queries=2)
    (EvalSettings(shots=[1, 5], episodes=300, queries=5), EvalSettings(shots=[1], episodes=300, queries=2))
    >>> eval_settings(cfg, tile=256).tiling, eval_settings(cfg, tile=256, overlap=64).tiling.overlap_pixels
    (Tiling(tile=256, overlap=0.25), 64)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fewseg.tiling import Tiling, make_tiling

__all__ = ["EvalSettings", "eval_settings"]


@dataclass(frozen=True)
class EvalSettings:
    """Shot counts (one table column group each), test episodes per shot count and query images per episode;
    ``tiling``: large images at their own resolution (:mod:`fewseg.engine.tiled_eval`), None: whole images."""

    shots: list[int]
    episodes: int
    queries: int
    tiling: Tiling | None = field(default=None, repr=False)


def eval_settings(cfg, shots: Sequence[int] | None = None, episodes: int | None = None,
                  queries: int | None = None, tile: int | None = None, overlap: float | None = None) -> EvalSettings:
    """``shots``, ``episodes``, ``queries``, ``tile`` (0: none) and ``overlap`` where given, else the run's
    ``cfg.eval`` values (``eval.tile``, ``eval.overlap``); a bad tile or overlap is a one-line ConfigError."""
    e = cfg.eval
    tile = getattr(e, "tile", None) if tile is None else tile
    overlap = getattr(e, "overlap", 0.25) if overlap is None else overlap
    return EvalSettings(list(e.shots if shots is None else shots), e.episodes if episodes is None else episodes,
                        e.queries if queries is None else queries, make_tiling(tile, overlap))
