"""One registry per kind of component (models, algorithms, datasets, baselines).

Example:
    >>> from fewseg.registry import MODELS
    >>> "seed-cnn" in MODELS.names()
    True
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """A name -> factory map with clear errors for unknown names.

    ordered: :meth:`names` lists the names in registration order (else sorted).
    names_classes: a registered class gets its registered name as its ``name`` attribute (algorithms name
    themselves once, in the decorator).
    """

    def __init__(self, kind: str, ordered: bool = False, names_classes: bool = False):
        self.kind = kind
        self.ordered = ordered
        self.names_classes = names_classes
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            if self.names_classes and isinstance(factory, type):
                factory.name = name
            return factory

        return decorator

    def names(self) -> list[str]:
        return list(self._factories) if self.ordered else sorted(self._factories)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._factories[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)


MODELS = Registry("model")
ALGORITHMS = Registry("algorithm", names_classes=True)
DATASETS = Registry("dataset")
BASELINES = Registry("baseline", ordered=True)  # evaluated (and listed) in registration order
