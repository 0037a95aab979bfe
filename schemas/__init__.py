"""Cerberus schemas, as YAML data, for the files and inventory data flannelette reads."""

from __future__ import annotations

import functools
from importlib import resources

import yaml


@functools.lru_cache(maxsize=None)
def load(name: str) -> dict:
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def validator(schema: dict):
    import cerberus

    return cerberus.Validator(schema)
