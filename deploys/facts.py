"""Facts the deploy reads from a host: a shell command and a pure parser each."""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Optional

from shlex import quote

from pyinfra.api import FactBase


class Python3(FactBase):
    """{"path": "/usr/bin/python3", "version": (3, 11, 2)}, or None without python3."""

    def command(self) -> str:
        return (
            "command -v python3 || exit 0; "
            "python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])' || true"
        )

    def process(self, output) -> Optional[dict]:
        return parse_python3(output)


def parse_python3(lines) -> Optional[dict]:
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        return None
    version = None
    if len(lines) > 1:
        try:
            version = tuple(int(part) for part in lines[1].split("."))
        except ValueError:
            pass
    return {"path": lines[0], "version": version}


class CniVersions(FactBase):
    """The CNI spec versions the host's bridge plugin takes (its VERSION command), or None without one."""

    def command(self) -> str:
        return (
            "for d in /usr/lib/cni /opt/cni/bin; do [ -x $d/bridge ] || continue; "
            "echo '{\"cniVersion\": \"0.1.0\"}' | CNI_COMMAND=VERSION $d/bridge; exit 0; done"
        )

    def process(self, output) -> Optional[list]:
        return parse_cni_versions(output)


def parse_cni_versions(lines) -> Optional[list]:
    """supportedVersions from a CNI plugin's VERSION answer (JSON, maybe over several lines)."""
    try:
        answer = json.loads("\n".join(lines))
    except ValueError:
        return None
    found = answer.get("supportedVersions") if isinstance(answer, dict) else None
    return [str(v) for v in found] if isinstance(found, list) else None


class Links(FactBase):
    """{"mtu": {interface: MTU}, "addresses": {IPv4 address: interface}}."""

    def command(self) -> str:
        return (
            'for f in /sys/class/net/*/mtu; do d=${f%/mtu}; echo "mtu ${d##*/} $(cat "$f")"; done; '
            "ip -o -4 addr show 2>/dev/null || true"
        )

    def process(self, output) -> dict:
        return parse_links(output)


def parse_links(lines) -> dict:
    """Parse `mtu NAME N` lines and `ip -o -4 addr show` lines."""
    links: dict = {"mtu": {}, "addresses": {}}
    for line in lines:
        words = line.split()
        if len(words) == 3 and words[0] == "mtu" and words[2].isdigit():
            links["mtu"][words[1]] = int(words[2])
        elif len(words) > 3 and words[2] == "inet":
            links["addresses"][words[3].split("/")[0]] = words[1].split("@")[0]
    return links


def public_link(links: dict, iface: Optional[str], public_ip: str) -> tuple:
    """(interface, MTU) the overlay runs over: `iface`, else the one holding `public_ip`.

    The runtime picks the interface the same way, and its MTU - 28 is the
    overlay MTU. Raises ValueError with a message a person can act on.
    """
    name = iface or links["addresses"].get(str(public_ip))
    if name is None:
        raise ValueError(
            f"no interface holds flannel_public_ip {public_ip}: set flannel_iface to the interface peers reach"
        )
    if name not in links["mtu"]:
        known = ", ".join(sorted(links["mtu"])) or "none"
        raise ValueError(f"flannel_iface {name!r}: no such interface (interfaces: {known})")
    return name, links["mtu"][name]


class FileStates(FactBase):
    """{path: {"mode": 644, "sha256": "..."}} of those of `paths` that are files: every file of a deploy in one command."""

    def command(self, paths) -> str:
        quoted = " ".join(quote(p) for p in paths)
        return f'for f in {quoted}; do [ -f "$f" ] && echo "$(stat -L -c %a "$f") $(sha256sum < "$f") $f"; done; true'

    def default(self) -> dict:
        return {}  # no output: none of the paths is a file

    def process(self, output) -> dict:
        return parse_file_states(output)


def parse_file_states(lines) -> dict:
    """Lines of `MODE SHA256 - PATH` (sha256sum of stdin names its file "-")."""
    states = {}
    for line in lines:
        words = line.split(None, 3)
        if len(words) == 4 and words[0].isdigit() and words[2] == "-":
            states[words[3]] = {"mode": int(words[0]), "sha256": words[1]}
    return states


class DirectoryEntries(FactBase):
    """{path: [entry, ...]} for those of `paths` that are directories."""

    def command(self, paths) -> str:
        quoted = " ".join(f"'{p}'" for p in paths)
        return f'for d in {quoted}; do [ -d "$d" ] && echo "{DIR_MARK}$d" && ls -A "$d"; done; true'

    def default(self) -> dict:
        return {}  # no output: none of the paths is a directory

    def process(self, output) -> dict:
        return parse_directory_entries(output)


DIR_MARK = ">>> "


def parse_directory_entries(lines) -> dict:
    entries: dict = {}
    current = None
    for line in lines:
        if line.startswith(DIR_MARK):
            current = line[len(DIR_MARK):]
            entries[current] = []
        elif current is not None and line:
            entries[current].append(line)
    return entries


def removable_directories(entries: dict, paths) -> list:
    """Those of `paths` (deepest first) that are empty once the earlier ones are gone."""
    gone: set = set()
    for path in paths:
        if path in entries and all(f"{path}/{name}" in gone for name in entries[path]):
            gone.add(path)
    return [p for p in paths if p in gone]


class PublicKey(FactBase):
    """The host's WireGuard public key (base64), its private key made there first when it has none.

    Runs flannelette's own crypto module, which needs only the standard library
    and the host's libcrypto, as a script: the private key is made and kept on
    the host (0600) and never read here.
    """

    def command(self, path: str) -> str:
        source = resources.files("flannelette.host.datapath").joinpath("crypto.py").read_text()
        script = source + "\nimport sys\ntry:\n    check()\n    print(keygen(sys.argv[1]))\n" \
            "except Unavailable as e:\n    print('unavailable: %s' % e)\n"
        return f"python3 -I -c {quote(script)} {quote(path)}"

    def process(self, output) -> Optional[str]:
        return parse_public_key(output)


def parse_public_key(lines) -> Optional[str]:
    """The key, or "unavailable: why" when the host can't encrypt; None when nothing came back."""
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else None


class FileText(FactBase):
    """A file's exact text (every byte, the last newline or its absence too), or None when there is no file."""

    def command(self, path: str) -> str:
        return f"test -f {quote(path)} || exit 0; echo present; base64 -w0 {quote(path)}; echo"

    def process(self, output) -> Optional[str]:
        return parse_file_text(output)


def parse_file_text(lines) -> Optional[str]:
    lines = [line.strip() for line in lines]
    if not lines or lines[0] != "present":
        return None
    return base64.b64decode("".join(lines[1:])).decode()
