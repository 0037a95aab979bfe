"""Problems a person can act on: each names where, which field, and the value.

Cerberus' findings are turned into such problems here, so every file and every
host's data is reported the same way.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Optional

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
    if plainly_valid(data, schema):
        return []
    validator = schemas.validator(schema)
    if validator.validate(data):
        return []
    return list(_flatten(validator.document_error_tree, data, schema, where, prefix))


# The rules plainly_valid judges; a schema using any other leaves every document to cerberus.
_PLAIN_RULES = {"type", "required", "empty", "allowed", "schema"}
_PLAIN_TYPES = {"string": str, "integer": int, "dict": dict, "list": list, "boolean": bool}


def plainly_valid(document: dict, schema: dict) -> bool:
    """True when `document` is certainly valid under `schema`, judged by a small subset of cerberus' rules.

    A lease table of 60,000 entries takes cerberus seconds; this takes a
    fraction of that. False means "not sure", never "invalid": cerberus then
    decides and words the problems, so the schema stays the one definition (a
    property test holds the two to agreement).
    """
    if not isinstance(document, dict) or not set(document) <= set(schema):
        return False
    return all(_plain_field(document, name, rules) for name, rules in schema.items())


def _plain_field(document: dict, name, rules: dict) -> bool:
    if name not in document:
        return not rules.get("required", False) and set(rules) <= _PLAIN_RULES
    return _plain_value(document[name], rules)


def _plain_value(value, rules: dict) -> bool:
    if not set(rules) <= _PLAIN_RULES:
        return False
    wanted = rules.get("type")
    if wanted is not None:
        names = wanted if isinstance(wanted, list) else [wanted]
        types = tuple(_PLAIN_TYPES[t] for t in names if t in _PLAIN_TYPES)
        if len(types) != len(names) or type(value) not in types:  # exact types: a bool is no integer here
            return False
    if rules.get("empty", True) is False and isinstance(value, (str, list, dict)) and not value:
        return False
    if "allowed" in rules and (isinstance(value, (list, dict)) or value not in rules["allowed"]):
        return False
    sub = rules.get("schema")
    if sub is None:
        return True
    if type(value) is dict:
        return plainly_valid(value, sub)
    if type(value) is list:
        return _plain_items(value, sub)
    return False


def _plain_items(items: list, rules: dict) -> bool:
    fields = _record_fields(rules)
    if fields is None:
        return all(_plain_value(item, rules) for item in items)
    # The common case, a list of flat records (a lease table): one pass, no call per rule.
    names = {name for name, *_ in fields}
    for item in items:
        if type(item) is not dict or not item.keys() <= names:
            return False
        for name, required, types, nonempty, allowed in fields:
            value = item.get(name, _MISSING)
            if value is _MISSING:
                if required:
                    return False
            elif type(value) not in types or (nonempty and not value) or (allowed is not None and value not in allowed):
                return False
    return True


_MISSING = object()
_RECORDS: dict = {}  # id of a list's item rules -> (the rules, their fields), for schemas loaded once


def _record_fields(rules: dict) -> Optional[list]:
    """(name, required, types, non-empty, allowed) per field when `rules` describe a flat record, else None."""
    known = _RECORDS.get(id(rules))
    if known is not None and known[0] is rules:
        return known[1]
    fields = None
    sub = rules.get("schema")
    if set(rules) <= {"type", "schema"} and rules.get("type") == "dict" and isinstance(sub, dict):
        fields = [_flat_field(name, field_rules) for name, field_rules in sub.items()]
        fields = None if None in fields else fields
    _RECORDS[id(rules)] = (rules, fields)
    return fields


def _flat_field(name, rules: dict) -> Optional[tuple]:
    wanted = rules.get("type")
    names = wanted if isinstance(wanted, list) else [wanted]
    if "schema" in rules or not set(rules) <= _PLAIN_RULES or not all(t in _PLAIN_TYPES for t in names):
        return None
    allowed = rules.get("allowed")
    return (name, rules.get("required", False), tuple(_PLAIN_TYPES[t] for t in names),
            rules.get("empty", True) is False, None if allowed is None else frozenset(allowed))


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
