"""Config text on its way to the schema: a recipe file read (bounded, UTF-8, a mapping), dotted overrides
(``train.iterations=50``) parsed and applied, configs stored by an older fewseg migrated, and a mapping turned into
typed dataclasses (each value checked against its field's annotation).

:mod:`fewseg.config` (the schema, its value checks and the generated reference) builds on this; this module knows
nothing of the keys beyond :data:`LEGACY_KEYS` and :data:`RENAMED_KEYS`.

Example:
    >>> from fewseg.config_files import apply_overrides, parse_override
    >>> parse_override("train.iterations=50")
    ('train.iterations', 50)
    >>> apply_overrides({"train": {"shots": 2}}, ["train.iterations=50"])
    {'train': {'shots': 2, 'iterations': 50}}
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from fewseg.errors import ConfigError
from fewseg.yaml_reader import FLOAT_PATTERN, load_yaml, short_repr

# Keys removed since, which configs stored in older checkpoints (meta.json) still hold: dropped on reading them.
LEGACY_KEYS = frozenset({"eval.steps", "eval.baselines"})
# Keys renamed since (old dotted key -> new one), renamed on reading a stored config.
RENAMED_KEYS = {"algorithm.options.cache_features": "algorithm.options.cache_encoder"}

MAX_CONFIG_BYTES = 10_000_000  # a recipe file above this is refused unread
_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def read_config_file(path: Path) -> dict:
    """The mapping a YAML recipe file holds; a one-line :class:`ConfigError` for a file that is too large,
    unreadable, not UTF-8, not YAML or not a mapping. An empty file (or one of comments only) warns, naming the
    file, and gives ``{}``: every key at its default."""
    where = f"config file {str(path)!r}"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where} is larger than {MAX_CONFIG_BYTES:,} bytes; not a recipe")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text (a binary file?)") from None
    data = load_yaml(text, where)
    if data is None:
        warnings.warn(f"{where} is empty: every key takes its default", stacklevel=3)
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of sections (name:, data:, model:, algorithm:, "
                          f"train:, eval:), not {_KINDS.get(type(data), type(data).__name__)} {short_repr(data)}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.iterations=50"`` -> ("train.iterations", 50); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw, f"override {key.strip()!r}") if raw != "" else None
    except ConfigError as exc:
        if "not valid YAML" not in str(exc):
            raise  # an alias bomb or deep nesting is refused, never kept as text
        value = raw
    return key.strip(), value


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree[a][b][c] = value for ``dotted`` "a.b.c", creating sections on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: list[str] | tuple) -> dict:
    """``tree`` (changed in place, and returned) with every ``key.sub=value`` of ``overrides`` set."""
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    return tree


def _parent(tree: dict, parents: list[str]) -> dict | None:
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def migrate_stored(data: dict) -> dict:
    """A copy of a config stored by an older fewseg (a checkpoint's meta.json) without the :data:`LEGACY_KEYS`
    and with the :data:`RENAMED_KEYS` under their new names.

    Only stored configs go through this: a user's YAML holding a removed key fails like any unknown key.
    """
    tree = copy.deepcopy(dict(data or {}))
    for dotted in LEGACY_KEYS:
        *parents, leaf = dotted.split(".")
        node = _parent(tree, parents)
        if node is not None:
            node.pop(leaf, None)
    for old, new in RENAMED_KEYS.items():
        *parents, leaf = old.split(".")
        node = _parent(tree, parents)
        if node is not None and leaf in node:
            node.setdefault(new.rsplit(".", 1)[1], node.pop(leaf))
    return tree


def check_type(key: str, value: Any, annotation: Any) -> Any:
    """Coerce/validate ``value`` for a field annotated ``annotation`` (as a string under __future__)."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"config key {key!r} may not be empty")
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str) and FLOAT_PATTERN.match(value.strip()):  # "1e-3" from a dict
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, dict, list) and isinstance(value, origin):
            return value
        if origin is list and isinstance(value, (int, str)):
            return [value]
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"config key {key!r} must be {names}, got {short_repr(value)}")


def build_dataclass(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from the mapping ``data`` (nested dataclass fields from nested mappings),
    every value checked against its field's annotation; a one-line ConfigError names an unknown key (``prefix``:
    the dotted path of ``data``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'!r} must be a mapping, "
                          f"got {short_repr(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}; "
                              f"known keys of {prefix.rstrip('.') or 'the root'}: {', '.join(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, {} if value is None else value, f"{prefix}{key}.")
        else:
            kwargs[key] = check_type(prefix + key, value, hint)
    return cls(**kwargs)
