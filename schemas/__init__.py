"""Cerberus schemas, as YAML data, for the files and inventory data flannelette reads."""

from __future__ import annotations

import functools
from importlib import resources

import yaml

# libyaml's parser where PyYAML was built with it: the same documents, a fifth of a runtime start's parsing.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=None)
def load(name: str) -> dict:
    return yaml.load(text(name), Loader=SafeLoader)


def text(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def validator(schema: dict):
    import cerberus

    return cerberus.Validator(schema)
