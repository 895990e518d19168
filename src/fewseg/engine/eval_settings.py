"""What an evaluation of a run scores: shot counts, episodes and queries, the caller's or the run's ``eval`` config.

One rule for ``fewseg evaluate`` (:func:`fewseg.engine.session.evaluate_checkpoint`) and ``fewseg evaluate
--explain`` (:func:`fewseg.report.explain.explain_checkpoint`), so that both see the same episodes.

Example:
    >>> from fewseg.config import Config
    >>> cfg = Config()
    >>> eval_settings(cfg), eval_settings(cfg, shots=[1], queries=2)
    (EvalSettings(shots=[1, 5], episodes=300, queries=5), EvalSettings(shots=[1], episodes=300, queries=2))
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EvalSettings", "eval_settings"]


@dataclass(frozen=True)
class EvalSettings:
    """Shot counts (one table column group each), test episodes per shot count and query images per episode."""

    shots: list[int]
    episodes: int
    queries: int


def eval_settings(cfg, shots: Sequence[int] | None = None, episodes: int | None = None,
                  queries: int | None = None) -> EvalSettings:
    """``shots``, ``episodes`` and ``queries`` where given, else the run's ``cfg.eval`` values."""
    e = cfg.eval
    return EvalSettings(list(e.shots if shots is None else shots), e.episodes if episodes is None else episodes,
                        e.queries if queries is None else queries)
