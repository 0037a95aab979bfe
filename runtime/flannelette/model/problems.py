"""Problems a person can act on: each names where, which field, and the value.

Cerberus' findings are turned into such problems here, so every file and every
host's data is reported the same way.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable

from flannelette import schemas


@dataclass(frozen=True)
class Problem:
    where: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}"


class ConfigError(Exception):
    """One or more problems with a file or with inventory data."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def canonical_keys(data: dict, schema: dict) -> dict:
    """Keys respelled as the schema spells them when they differ only in case.

    flannel decodes net-conf.json with Go's encoding/json, which matches field
    names case-insensitively, so "network" means Network there and here too.
    """
    by_lower = {name.lower(): name for name in schema}
    out = {}
    for key, value in data.items():
        name = by_lower.get(key.lower(), key) if isinstance(key, str) else key
        sub = schema.get(name, {}).get("schema")
        if isinstance(value, dict) and isinstance(sub, dict):
            value = canonical_keys(value, sub)
        out[name] = value
    return out


def schema_problems(data: dict, schema_name: str, where: str, prefix: str = "") -> list[Problem]:
    """Cerberus' findings for `data`, as problems that name field and value."""
    schema = schemas.load(schema_name)
    validator = schemas.validator(schema)
    if validator.validate(data):
        return []
    return list(_flatten(validator.document_error_tree, data, schema, where, prefix))


def _flatten(tree, data, schema, where, prefix):
    seen = set()
    for error in _leaf_errors(tree):
        path = prefix + "".join(_path_part(p) for p in error.document_path).lstrip(".")
        if (path, error.code) not in seen:  # cerberus reports nested errors twice
            seen.add((path, error.code))
            yield Problem(where, path, _describe(error, schema))


def _leaf_errors(tree):
    for error in tree.errors:
        yield from _leaves(error)
    for child in tree.descendants.values():
        yield from _leaf_errors(child)


def _leaves(error):
    if error.is_group_error:
        for child in error.child_errors:
            yield from _leaves(child)
    else:
        yield error


def _path_part(part) -> str:
    return f"[{part}]" if isinstance(part, int) else f".{part}"


def _describe(error, schema) -> str:
    from cerberus import errors as E

    name = error.document_path[-1] if error.document_path else ""
    if error.code == E.UNKNOWN_FIELD.code:
        known = _known_names(error, schema)
        hint = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]}?" if hint else f"; known keys: {', '.join(known)}"
        return f"unknown key (value {error.value!r}){suggestion}"
    if error.code == E.REQUIRED_FIELD.code:
        return "is required but missing"
    if error.code == E.BAD_TYPE.code:
        wanted = error.constraint if isinstance(error.constraint, list) else [error.constraint]
        return f"{error.value!r} is {kind(error.value)}, but must be {' or '.join(_type_word(t) for t in wanted)}"
    if error.code == E.EMPTY_NOT_ALLOWED.code:
        return "must not be empty"
    if error.code == E.UNALLOWED_VALUE.code:
        return f"{error.value!r} is not one of {', '.join(map(str, error.constraint))}"
    return f"{error.value!r}: {error.rule} {error.constraint!r} not met"


def _known_names(error, schema) -> list[str]:
    node = schema
    for part in error.document_path[:-1]:
        if isinstance(part, int):
            node = node.get("schema", {})
            continue
        node = node.get(part, {}).get("schema", {})
    if "schema" in node and "type" in node:
        node = node["schema"]
    return sorted(k for k in node if isinstance(k, str))


_TYPE_WORDS = {
    "string": "a string",
    "integer": "a whole number",
    "boolean": "true or false",
    "dict": "an object",
    "list": "a list",
}


def _type_word(name: str) -> str:
    return _TYPE_WORDS.get(name, name)


# In order: a bool is also an int.
_KINDS = (
    (bool, "a boolean"),
    (int, "a number"),
    (float, "a fractional number"),
    (str, "a string"),
    (dict, "an object"),
    (list, "a list"),
    (type(None), "null"),
)


def kind(value: Any) -> str:
    """How a person would name the JSON type of `value`."""
    return next((word for cls, word in _KINDS if isinstance(value, cls)), type(value).__name__)
