"""The Markdown reference of every config key (``fewseg config``, the README's generated table), built from the
config dataclasses' fields and their ``metadata["help"]`` (:mod:`fewseg.config`).

Example:
    >>> from fewseg.config import Config
    >>> reference_table(Config).splitlines()[0]
    '| key | type | default | meaning |'
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from fewseg.errors import ConfigError

REFERENCE_START, REFERENCE_END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join("null" if t is type(None) else _type_name(t) for t in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return "list of " + ", ".join(_type_name(t) for t in typing.get_args(hint))
    return {dict: "mapping"}.get(hint, getattr(hint, "__name__", str(hint)))


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, meaning) of every setting, sections expanded, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += config_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            rows.append((prefix + f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def reference_table(cls: type) -> str:
    """A Markdown table of every config key: dotted name, type, default (as YAML) and meaning."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{key}` | {cell(kind)} | `{cell(_yaml_value(default))}` | {cell(meaning)} |"
             for key, kind, default, meaning in config_keys(cls)]
    return "\n".join(rows)


def write_reference(path: str | Path, table: str) -> bool:
    """Replace the text between the config-reference markers in ``path`` by ``table``.

    Returns whether the file changed; a file without both markers is a :class:`ConfigError`.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    if start < 0 or end < start:
        raise ConfigError(f"{path} has no {REFERENCE_START} ... {REFERENCE_END} block to fill")
    new = f"{text[:start + len(REFERENCE_START)]}\n{table}\n{text[end:]}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def reference_block(path: str | Path) -> str | None:
    """The text between the config-reference markers of ``path`` (stripped), or None without them."""
    text = Path(path).read_text(encoding="utf-8")
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    return text[start + len(REFERENCE_START):end].strip() if 0 <= start < end else None
