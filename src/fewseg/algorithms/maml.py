"""MAML (Finn et al., 2017) and its first-order approximation FOMAML."""
from __future__ import annotations

from typing import ClassVar

from fewseg.algorithms.base import MetaAlgorithm
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("maml")
class MAML(MetaAlgorithm):
    """Second-order MAML by default; ``first_order=True`` drops the second-order terms."""



@ALGORITHMS.register("fomaml")
class FOMAML(MetaAlgorithm):
    """First-order MAML: the meta-gradient is the query-loss gradient at the adapted weights."""

    OPTIONS = MetaAlgorithm.OPTIONS - {"first_order"}
    FIXED: ClassVar[dict] = {"first_order": True}
