r"""Reading YAML that users (or attackers) write: floats as people write them, no duplicate keys, bounded size.

``load_yaml`` is PyYAML's SafeLoader with ``1e-3`` read as a float (YAML 1.2), a repeated key refused, and
alias expansion, nesting depth and odd values (an integer of 5000 digits) bounded, each refused with a one-line
:class:`~fewseg.errors.ConfigError`; ``short_repr`` keeps every error message to a line.

Example:
    >>> from fewseg.yaml_reader import load_yaml
    >>> load_yaml("lr: 1e-3\nsteps: [1, 5]", "a recipe")
    {'lr': 0.001, 'steps': [1, 5]}
"""
from __future__ import annotations

import re
import reprlib
from typing import Any

import yaml

from fewseg.errors import ConfigError

MAX_YAML_VALUES = 100_000      # values after expanding YAML aliases (an anchors/aliases bomb is refused)
MAX_YAML_DEPTH = 50            # nesting levels of a YAML document

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 60, 60, 6, 6




def short_repr(value: Any) -> str:
    """A repr of at most a line, whatever the value's size (error messages never print a whole document)."""
    return _SHORT.repr(value)


# --- YAML: floats as users write them, no duplicate keys, no alias bombs -------------------------------
FLOAT_PATTERN = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` and ``1.0e3`` as floats (YAML 1.2; PyYAML's YAML 1.1 rules read them as
    strings) and refuses a mapping that repeats a key."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {short_repr(key)} (first on line {seen[key] + 1})",
                            key_node.start_mark)
                    seen[key] = key_node.start_mark.line
                except TypeError:  # an unhashable key: the base class reports it
                    pass
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_PATTERN, list("-+0123456789."))


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Refuse a document that nests deeper than MAX_YAML_DEPTH, refers to itself, or expands (through
    aliases, which share nodes) to more than MAX_YAML_VALUES values; linear in the number of distinct nodes."""
    sizes: dict[int, int] = {}
    depth_of: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    active: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else
                    list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_VALUES:
                raise ConfigError(f"{where} expands to more than {MAX_YAML_VALUES:,} values through YAML "
                                  "aliases; refusing it")
            continue
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where} nests more than {MAX_YAML_DEPTH} levels deep")
        if key in active:
            raise ConfigError(f"{where} refers to itself through a YAML alias")
        if key in sizes and depth_of[key] >= depth:
            continue
        depth_of[key] = depth
        active.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (line, column), without PyYAML's excerpt of the text."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return " ".join(f"{exc.context or ''} {exc.problem}".split())[:200] + where
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.character:#x} at position {exc.position} is not allowed (a binary file?)"
    return " ".join(str(exc).split())[:200]


def load_yaml(text: str, where: str) -> Any:
    """Parse one YAML document with :class:`_ConfigLoader`; ``where`` names it in a one-line ConfigError."""
    loader = None
    try:
        loader = _ConfigLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {_yaml_reason(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{where} holds a value fewseg cannot read: {' '.join(str(exc).split())[:120]}") from None
    finally:
        if loader is not None:
            loader.dispose()
