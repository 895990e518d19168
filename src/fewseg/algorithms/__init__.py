"""The MAML family. Importing this package registers every algorithm."""
from fewseg.algorithms import anil, maml, mamlpp, metasgd, mrmaml, reptile, task_attention  # noqa: F401  (registers)
from fewseg.algorithms.adapted import Adapted
from fewseg.algorithms.base import MetaAlgorithm

__all__ = ["Adapted", "MetaAlgorithm"]
