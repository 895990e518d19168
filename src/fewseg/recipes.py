"""The YAML recipes shipped inside the package (``fewseg/configs/*.yaml``), found by name or path.

``fewseg train --config synthetic_maml`` works after a plain install; a clone also has ``configs/``
(a link to the same folder) for ``--config configs/synthetic_maml.yaml``.

Example:
    >>> from fewseg.recipes import recipe_names, resolve_recipe
    >>> "synthetic_maml" in recipe_names()
    True
    >>> resolve_recipe("synthetic_maml.yaml").name
    'synthetic_maml.yaml'
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fewseg.errors import ConfigError


def recipe_dir() -> Path:
    """The folder of shipped recipes."""
    return Path(str(files("fewseg").joinpath("configs")))


def recipe_names() -> list[str]:
    """The shipped recipes' names (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def resolve_recipe(recipe: str | Path) -> Path:
    """A YAML file: ``recipe`` itself when it is a file, else the shipped recipe of that name (``.yaml`` optional)."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in recipe_names():
        return recipe_dir() / f"{name}.yaml"
    raise ConfigError(f"config {str(recipe)!r} is neither a file nor a shipped recipe; "
                      f"shipped recipes: {', '.join(recipe_names())}")
