"""A minimal YAML writer for the front matter of dataset cards (PyYAML is not a core dependency).

Mappings, sequences of scalars or mappings, strings (written as JSON strings, which YAML reads
unchanged), numbers, booleans and ``null``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from dambench.exceptions import DambenchInputError

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def front_matter(meta: Mapping) -> str:
    """``---``-delimited YAML block of ``meta`` (mappings, lists, strings, numbers, booleans)."""
    return "---\n" + "\n".join(_yaml_lines(meta, 0)) + "\n---\n"


def _yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise DambenchInputError(f"Cannot write {type(value).__name__} {value!r} in a card's YAML.")


def _yaml_key(key) -> str:
    key = str(key)
    return key if _PLAIN_KEY.match(key) else json.dumps(key)


def _yaml_lines(obj, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            head = f"{pad}{_yaml_key(key)}:"
            if isinstance(value, Mapping | list | tuple) and value:
                lines.append(head)
                child = indent + 2 if isinstance(value, Mapping) else indent
                lines += _yaml_lines(value, child)
            elif isinstance(value, Mapping | list | tuple):
                lines.append(f"{head} {'{}' if isinstance(value, Mapping) else '[]'}")
            else:
                lines.append(f"{head} {_yaml_scalar(value)}")
        return lines
    for item in obj:  # a non-empty sequence
        if isinstance(item, Mapping) and item:
            inner = _yaml_lines(item, indent + 2)
            lines.append(f"{pad}- {inner[0][indent + 2 :]}")
            lines += inner[1:]
        elif isinstance(item, Mapping | list | tuple):
            raise DambenchInputError("Nested or empty sequences are not supported in card YAML.")
        else:
            lines.append(f"{pad}- {_yaml_scalar(item)}")
    return lines
