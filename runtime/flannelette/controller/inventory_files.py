"""An inventory file and its group_data read as pyinfra's CLI reads them, without building pyinfra's Inventory.

pyinfra's loader (pyinfra_cli.inventory.make_inventory_from_files) builds
every group's host list with `not in` on lists, twice (a stand-in inventory for
the group_data files, then the real one): its cost grows with the square of
the host count. This reads the same files by the same rules in one pass:

- the inventory file's top-level lists of hosts, or (hosts, data) tuples, not
  named with a leading underscore, are groups; a host is a name or (name, data);
- `all` is every host (the file's own `all` group when it has one), the file's
  name (prod for prod.py) a group of all of them unless the file defines it;
- group_data/*.py in the working directory, then beside the inventory file:
  each file's top-level names, less those it imports (or its `__all__`), are
  the data of the group named by the file; the second folder wins;
- a host's data: its own, over its groups' in the order they were found (the
  last group wins), over the data of `all`.

A file that imports pyinfra may use its inventory while it runs, and a host
named `@connector` stands for hosts only the connector knows: `reads_alike`
sends those to pyinfra's own loader.
"""

from __future__ import annotations

import ast
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from flannelette.model.config import ConfigError, Problem

log = logging.getLogger("pyinfra")  # pyinfra's warnings about the file, as pyinfra would print them


class HostData(dict):
    """A host's merged data, with pyinfra's `host.data.dict()` to read it."""

    def dict(self) -> dict:
        return dict(self)


class FileHost:
    """One host of the inventory: what the commands read of a pyinfra Host."""

    __slots__ = ("name", "groups", "data")

    def __init__(self, name: str, groups: List[str], data: HostData):
        self.name, self.groups, self.data = name, groups, data

    def __repr__(self) -> str:
        return f"FileHost({self.name})"


class FileInventory:
    """The hosts of an inventory file, in pyinfra's order; iterating gives them as pyinfra's Inventory does."""

    def __init__(self, hosts: List[FileHost], groups: Dict[str, Tuple[list, dict]], data: dict):
        self.hosts = {host.name: host for host in hosts}
        self.groups = groups  # name -> (host entries, group data), `all` excluded, as pyinfra keeps them
        self.data = data  # the data of `all`

    def __iter__(self) -> Iterator[FileHost]:
        return iter(self.hosts.values())

    def __len__(self) -> int:
        return len(self.hosts)


def reads_alike(path: str, cwd: str) -> bool:
    """Whether this module reads `path` exactly as pyinfra would: no file of it imports pyinfra."""
    return not any(_imports_pyinfra(file) for file in [path, *_group_data_files(path, cwd)])


def _imports_pyinfra(file: str) -> bool:
    source = _source(file)
    if "pyinfra" not in source:
        return False
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError:
        return False  # its error is reported the same by either loader
    modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    modules += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    return any(module.split(".")[0] in ("pyinfra", "pyinfra_cli") for module in modules)


def load(path: str, cwd: str) -> Optional[FileInventory]:
    """The inventory in `path`, group_data looked for in `cwd` and beside `path`; a ConfigError naming the file.

    None when a host is an `@connector`: only pyinfra's loader expands those.
    """
    groups = {key: value for key, value in run_file(path).items() if _is_group(key, value)}
    all_hosts, all_data = _all_group(groups)
    groups["all"] = (all_hosts, all_data)
    groups.setdefault(Path(path).name.rsplit(".", 1)[0], all_hosts)
    group_data = _group_data(path, cwd)
    for name, hosts in groups.items():
        hosts, data = hosts if isinstance(hosts, tuple) else (hosts, {})
        data.update(group_data.pop(name, {}))
        groups[name] = (hosts, data)
    for name, data in group_data.items():
        groups[name] = ([], data)
    names, data = groups.pop("all")
    if any(name[0] == "@" for name, _ in _entries(names)):
        return None
    return FileInventory(_hosts(names, data, groups), groups, data)


def _all_group(groups: dict) -> tuple:
    """(host entries, data) of `all`: the file's own, or every host of its groups, each once, in order."""
    if "all" in groups:
        hosts = groups.pop("all")
        return hosts if isinstance(hosts, tuple) else (hosts, {})
    seen: dict = {}
    for hosts in groups.values():
        for name, _ in _entries(hosts[0] if isinstance(hosts, tuple) else hosts):
            seen.setdefault(name, None)
    return list(seen), {}


def _hosts(names: list, all_data: dict, groups: dict) -> List[FileHost]:
    """Each host of `all` with its groups and data, merged as pyinfra's HostData.dict() merges them."""
    own: Dict[str, dict] = defaultdict(dict)
    member_of: Dict[str, list] = defaultdict(list)
    for group, (hosts, _) in groups.items():
        for name, data in _entries(hosts):
            own[name].update(data)
            member_of[name].append(group)
    for name, data in _entries(names):
        own[name].update(data)
    hosts = {}
    for name, _ in _entries(names):
        data = HostData(all_data)
        for group in member_of[name]:
            data.update(groups[group][1])
        data.update(own[name])
        hosts[name] = FileHost(name, member_of[name], data)
    return list(hosts.values())


def _entries(hosts) -> Iterator[tuple]:
    for host in hosts:
        yield (host[0], host[1]) if isinstance(host, tuple) else (host, {})


def _is_group(key: str, value) -> bool:
    """pyinfra's test of a module-level name of an inventory file, with its warning."""
    if key.startswith("_") or not isinstance(value, (list, tuple)):
        return False
    hosts = value[0] if isinstance(value, tuple) else value
    if not all(isinstance(item, (str, tuple)) for item in hosts):
        log.warning('Ignoring host group "%s". Host groups may only contain strings (host) or tuples (host, data).', key)
        return False
    return True


def _group_data(path: str, cwd: str) -> Dict[str, dict]:
    merged: Dict[str, dict] = defaultdict(dict)
    for file in _group_data_files(path, cwd):
        attrs = run_file(file)
        keys = attrs["__all__"] if "__all__" in attrs else [key for key in attrs if key not in _imported_names(file)]
        merged[Path(file).stem].update({key: value for key, value in attrs.items() if key in keys and not key.startswith("__")})
    return merged


def _group_data_files(path: str, cwd: str) -> List[str]:
    """The .py files of group_data in `cwd`, then beside `path` (when that is another folder), as pyinfra lists them."""
    folders = [os.path.join(cwd, "group_data")]
    beside = str(Path(path).parent.resolve())
    if beside != cwd:
        folders.append(os.path.join(beside, "group_data"))
    files = []
    for folder in folders:
        if os.path.isdir(folder):
            files += [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py")]
        elif os.path.isfile(folder) and folder.endswith(".py"):
            files.append(folder)
    return files


def _imported_names(file: str) -> set:
    names = set()
    for node in ast.parse(_source(file), filename=file).body:
        if isinstance(node, ast.Import):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
    return names


def _source(file: str) -> str:
    with open(file, encoding="utf-8") as f:
        return f.read()


def run_file(file: str) -> dict:
    """A Python file's top-level names after running it; its error as a ConfigError naming it."""
    attrs = {"__file__": file}
    try:
        code = compile(_source(file), file, "exec")
    except SyntaxError as e:
        raise file_error(e, file) from None
    try:
        exec(code, attrs)
    except Exception as e:
        raise file_error(e, file) from None
    return attrs


def file_error(error: BaseException, file: str, filename: Optional[str] = None) -> ConfigError:
    """`prod.py: file: line 1: ...` for a syntax error, `prod.py: file: NameError: ...` for any other."""
    if isinstance(error, SyntaxError):
        return ConfigError([Problem(error.filename or file, "file", f"line {error.lineno}: {error.msg}")])
    return ConfigError([Problem(filename or file, "file", f"{type(error).__name__}: {error}")])
