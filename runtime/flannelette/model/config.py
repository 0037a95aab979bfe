"""The typed model of net-conf.json and leases.json, shared by deploy and runtime.

Parsing collects every problem of a file before raising, so a person fixes a
file in one pass; each problem names the file, the field and the value.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterable, Iterator, Optional

from flannelette import schemas
from flannelette.model.problems import ConfigError, Problem, canonical_keys, kind, schema_problems

DEFAULT_PORT = 8285
# Each host subnet needs room for the network address (flannel0), the gateway
# (cni0) and containers, and flannel never hands out the first subnet.
MAX_SUBNET_LEN = 30
MAX_NETWORK_PREFIX = 28
# Backend.Wire and a lease's wire (docs/wire.md).
WIRE_AUTO, WIRE_FLANNEL, WIRE_FLANNELETTE = "auto", "flannel", "flannelette"
# Backend.Encryption (docs/encryption.md).
ENCRYPTION_OFF, ENCRYPTION_ON, ENCRYPTION_REQUIRED = "off", "on", "required"
KEY_LEN = 32  # bytes of a WireGuard key


@dataclass(frozen=True)
class NetConf:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    port: int = DEFAULT_PORT
    enable_nftables: bool = False
    backend_type: str = "udp"
    wire: str = WIRE_AUTO  # Backend.Wire: "flannel" keeps the whole network on flannel's format
    encryption: str = ENCRYPTION_ON  # Backend.Encryption
    source: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def encrypted(self) -> bool:
        """Whether hosts get keys and every lease carries one (docs/encryption.md)."""
        return self.encryption != ENCRYPTION_OFF and self.wire != WIRE_FLANNEL

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    def subnet_at(self, address: IPv4Address) -> IPv4Network:
        return IPv4Network((address, self.subnet_len))

    def subnets(self) -> Iterable[IPv4Network]:
        """Every subnet a host may hold, SubnetMin to SubnetMax, in order."""
        for start in range(int(self.subnet_min), int(self.subnet_max) + 1, self.subnet_size):
            yield self.subnet_at(IPv4Address(start))

    def subnet_count(self) -> int:
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1

    def subnet_problem(self, subnet: IPv4Network) -> Optional[str]:
        """Why `subnet` can't be a host's subnet in this network, or None."""
        if subnet.prefixlen != self.subnet_len:
            return f"{subnet} is a /{subnet.prefixlen}, but SubnetLen is {self.subnet_len}"
        if not self.subnet_min <= subnet.network_address <= self.subnet_max:
            return (
                f"{subnet} is outside SubnetMin..SubnetMax "
                f"({self.subnet_min}..{self.subnet_max}/{self.subnet_len})"
            )
        return None


@dataclass(frozen=True)
class Lease:
    host: str
    subnet: IPv4Network
    public_ip: IPv4Address
    wire: str = WIRE_FLANNELETTE  # "flannel": a flanneld host, which speaks flannel's format only
    public_key: Optional[str] = None  # its WireGuard public key, base64

    @property
    def gateway(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def key(self) -> Optional[bytes]:
        """The public key as 32 bytes, or None."""
        return decode_key(self.public_key) if self.public_key else None

    def to_json(self) -> dict:
        document = {"host": self.host, "subnet": str(self.subnet), "public_ip": str(self.public_ip)}
        if self.wire != WIRE_FLANNELETTE:  # the default is left out, so older tables keep their bytes
            document["wire"] = self.wire
        if self.public_key:
            document["public_key"] = self.public_key
        return document


# -- reading files ---------------------------------------------------------------


def read_json(path: str) -> Any:
    """The document in `path`; a ConfigError naming the file when it can't be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ConfigError([Problem(path, "file", f"can't be read: {e.strerror}")]) from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            [Problem(path, "file", f"not valid JSON at line {e.lineno} column {e.colno}: {e.msg}")]
        ) from None


def load_net_conf(path: str) -> NetConf:
    return parse_net_conf(read_json(path), where=path)


def load_leases(path: str, net_conf: NetConf, previous: Iterable[Lease] = ()) -> list[Lease]:
    return parse_leases(read_json(path), net_conf, where=path, previous=previous)


def render_leases(leases: Iterable[Lease]) -> str:
    """The table as json.dumps(..., indent=2) writes it, built here: its pure-Python indenting takes seconds at 60,000."""
    return "".join(rendered_pieces(leases))


def rendered_pieces(leases: Iterable[Lease]) -> Iterator[str]:
    """render_leases' text, a lease at a time: what hashes the table without holding its text."""
    pieces = iter(leases)
    first = next(pieces, None)
    if first is None:
        yield '{\n  "leases": []\n}\n'
        return
    yield '{\n  "leases": [\n' + _render_record(first.to_json())
    for lease in pieces:
        yield ",\n" + _render_record(lease.to_json())
    yield "\n  ]\n}\n"


def _render_record(document: dict) -> str:
    quote = json.encoder.encode_basestring_ascii  # what json.dumps uses for strings (ensure_ascii)
    return "    {\n" + ",\n".join(f"      {quote(k)}: {quote(v)}" for k, v in document.items()) + "\n    }"


# -- net-conf.json ---------------------------------------------------------------


def parse_net_conf(data: Any, where: str = "net-conf.json") -> NetConf:
    """Validate a net-conf document the way flannel reads it, with flannel's defaults."""
    if not isinstance(data, dict):
        raise ConfigError([Problem(where, "file", f"must be a JSON object, not {kind(data)}")])
    data = canonical_keys(data, schemas.load("net-conf"))
    problems = schema_problems(data, "net-conf", where)
    bad = {p.field.split(".")[0] for p in problems}
    checked = _NetConfChecks(data, where, bad)
    problems += checked.problems
    if problems:
        raise ConfigError(problems)
    return checked.result()


class _NetConfChecks:
    """The semantic rules of flannel's ParseConfig, each adding problems, not raising."""

    def __init__(self, data: dict, where: str, bad_fields: set):
        self.data, self.where, self.bad = data, where, bad_fields
        self.problems: list[Problem] = []
        self.network = self._network()
        self.subnet_len = self._subnet_len()
        self.subnet_min = self._bound("SubnetMin")
        self.subnet_max = self._bound("SubnetMax")
        self._order()
        self._backend()
        self._ipv6()

    def fail(self, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.where, field_name, message))

    def get(self, name: str) -> Any:
        return None if name in self.bad else self.data.get(name)

    def _network(self) -> Optional[IPv4Network]:
        text = self.get("Network")
        if text is None:
            return None
        net = parse_cidr(text, lambda m: self.fail("Network", m))
        if net is not None and net.prefixlen > MAX_NETWORK_PREFIX:
            self.fail(
                "Network",
                f"{text!r} is too small: the smallest network flannel accepts is a "
                f"/{MAX_NETWORK_PREFIX} (four subnets of four addresses)",
            )
            return None
        return net

    def _subnet_len(self) -> Optional[int]:
        value = self.get("SubnetLen") or 0  # 0 means unset, as in flannel
        if self.network is None:
            if value and not 1 <= value <= MAX_SUBNET_LEN:
                self.fail("SubnetLen", f"{value} is out of range: must be at most {MAX_SUBNET_LEN}")
            return None
        prefix = self.network.prefixlen
        if not value:
            return 24 if prefix <= 22 else prefix + 2
        low = prefix + 2
        if not low <= value <= MAX_SUBNET_LEN:
            self.fail(
                "SubnetLen",
                f"{value} is out of range: must be between {low} (Network prefix /{prefix} + 2, "
                f"so the network holds at least four subnets) and {MAX_SUBNET_LEN}",
            )
            return None
        return value

    def _bound(self, name: str) -> Optional[IPv4Address]:
        if self.subnet_len is None:
            return None
        size = 1 << (32 - self.subnet_len)
        text = self.get(name)
        if text is None:
            net = self.network
            start = int(net.network_address) + size if name == "SubnetMin" else int(net.broadcast_address) + 1 - size
            return IPv4Address(start)
        address = parse_address(text, lambda m: self.fail(name, m))
        if address is None:
            return None
        if address not in self.network:
            self.fail(name, f"{text!r} is outside Network {self.network}")
            return None
        if int(address) % size:
            self.fail(
                name,
                f"{text!r} is not on a SubnetLen boundary: /{self.subnet_len} subnets start at "
                f"multiples of {size} addresses (e.g. {IPv4Address(int(address) - int(address) % size)})",
            )
            return None
        return address

    def _order(self) -> None:
        if self.subnet_min is not None and self.subnet_max is not None:
            if self.subnet_min > self.subnet_max:
                self.fail(
                    "SubnetMin",
                    f"{self.subnet_min} is above SubnetMax {self.subnet_max}: the range is reversed",
                )

    def _backend(self) -> None:
        backend = self.get("Backend")
        if backend is None:
            return  # flannel's default backend is udp
        kind = backend.get("Type")
        if isinstance(kind, str) and kind.lower() != "udp":
            self.fail(
                "Backend.Type",
                f"{kind!r} is not supported: flannelette provides flannel's udp backend; "
                'use "Type": "udp"',
            )
        port = backend.get("Port")
        if isinstance(port, int) and not 1 <= port <= 65535:
            self.fail("Backend.Port", f"{port} is not a UDP port: must be between 1 and 65535")
        if backend.get("Wire") == WIRE_FLANNEL and backend.get("Encryption") == ENCRYPTION_REQUIRED:
            self.fail(
                "Backend.Encryption",
                'required, but Backend.Wire is flannel, which keeps every host on flannel\'s plain format; '
                'set one of them otherwise',
            )

    def _ipv6(self) -> None:
        if self.get("EnableIPv6"):
            self.fail(
                "EnableIPv6",
                "true: IPv6 is not supported by the udp backend, which carries IPv4 only; "
                "set EnableIPv6 to false or leave it out",
            )
        if self.get("EnableIPv4") is False:
            self.fail(
                "EnableIPv4",
                "false is not supported: the udp backend needs an IPv4 Network; "
                "set EnableIPv4 to true or leave it out",
            )
        if self.get("Networks"):
            self.fail(
                "Networks",
                f"{self.data['Networks']!r} is not supported: the udp backend serves one "
                "network; use Network",
            )

    def result(self) -> NetConf:
        backend = self.data.get("Backend") or {}
        return NetConf(
            network=self.network,
            subnet_len=self.subnet_len,
            subnet_min=self.subnet_min,
            subnet_max=self.subnet_max,
            port=backend.get("Port", DEFAULT_PORT),
            enable_nftables=bool(self.data.get("EnableNFTables", False)),
            wire=backend.get("Wire", WIRE_AUTO),
            encryption=backend.get("Encryption", ENCRYPTION_ON),
            source=self.data,
        )


# -- leases.json -----------------------------------------------------------------


def parse_leases(data: Any, net_conf: NetConf, where: str = "leases.json", previous: Iterable[Lease] = ()) -> list[Lease]:
    """Validate a lease table against the network it divides.

    `previous`: leases parsed before against this same net-conf (the table a
    reload replaces). An entry saying exactly what one of them says passed
    every check of `_lease` then and would again: that Lease object is taken
    as it is, which spares a reload building (and the runtime holding twice)
    every unchanged lease. The schema and the conflicts are checked on the whole
    table as always.
    """
    if not isinstance(data, dict):
        raise ConfigError([Problem(where, "file", f"must be a JSON object, not {kind(data)}")])
    problems = schema_problems(data, "leases", where)
    if problems:
        raise ConfigError(problems)
    known = {lease.host: lease for lease in previous}
    leases: list[Lease] = []
    for i, entry in enumerate(data["leases"]):
        lease = _said_again(entry, known) if known else None
        if lease is None:
            lease = _lease(entry, f"leases[{i}]", where, net_conf, problems)
        if lease is not None:
            leases.append(lease)
    problems += lease_conflicts(leases, where)
    if problems:
        raise ConfigError(problems)
    return leases


def _lease(entry: dict, at: str, where: str, net_conf: NetConf, problems: list) -> Optional[Lease]:
    def fail(name: str):
        return lambda m: problems.append(Problem(where, f"{at}.{name}", m))

    before = len(problems)
    subnet = parse_cidr(entry["subnet"], fail("subnet"))
    public_ip = parse_address(entry["public_ip"], fail("public_ip"))
    if subnet is not None:
        why = net_conf.subnet_problem(subnet)
        if why:
            fail("subnet")(why)
    wire, public_key = entry.get("wire", WIRE_FLANNELETTE), entry.get("public_key")
    if public_key is not None and decode_key(public_key) is None:
        fail("public_key")(f"{public_key!r} is not a WireGuard key (44 characters of base64, as `wg pubkey` prints)")
    if net_conf.encryption == ENCRYPTION_REQUIRED:
        if wire == WIRE_FLANNEL:
            fail("wire")(
                "flannel: a flanneld host can't encrypt, and Backend.Encryption is required; "
                "remove the host or set Backend.Encryption to on"
            )
        elif public_key is None:
            fail("public_key")(
                "missing, and Backend.Encryption is required: every host needs a key "
                "(the deploy reads each host's; see docs/encryption.md)"
            )
    if len(problems) > before:
        return None
    return Lease(entry["host"], subnet, public_ip, wire, public_key)


def _said_again(entry: dict, known: dict) -> Optional[Lease]:
    """The lease of `known` ({host: Lease}) that `entry` says exactly again, its addresses in canonical text; else None.

    Compared field by field, not by a key made for each lease: a reload of
    10,000 leases would hold 10,000 such keys at once.
    """
    host = entry["host"]
    lease = known.get(host) if type(host) is str else None
    if lease is None:
        return None
    subnet, public_ip = _canonical(entry["subnet"]), _canonical(entry["public_ip"])
    if subnet is None or public_ip is None or public_ip[1] is not None:
        return None
    if subnet[1] != lease.subnet.prefixlen or subnet[0] != int(lease.subnet.network_address) \
            or public_ip[0] != int(lease.public_ip):
        return None
    if entry.get("wire", WIRE_FLANNELETTE) != lease.wire or entry.get("public_key") != lease.public_key:
        return None
    return lease


def lease_conflicts(leases: list[Lease], where: str) -> list[Problem]:
    """Two leases sharing a host name, a subnet or a public IP."""
    problems = []
    for attr in ("host", "subnet", "public_ip", "public_key"):
        seen: dict = {}
        for lease in leases:
            value = getattr(lease, attr)
            if value is None:
                continue
            if value in seen:
                problems.append(
                    Problem(where, attr, f"{value} is held by both {seen[value]} and {lease.host}")
                )
            seen.setdefault(value, lease.host)
    return problems


# -- shared helpers --------------------------------------------------------------


def decode_key(text: str) -> Optional[bytes]:
    """A WireGuard key from its base64 (44 characters), or None."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError, AttributeError):
        return None
    return key if len(key) == KEY_LEN else None


# An address as ipaddress prints it: four decimal octets, no leading zeros. Text of this form is read
# without ipaddress' parser, which takes most of the time of loading a large lease table; anything else
# goes through ipaddress, which accepts or words the problem.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL = re.compile(rf"({_OCTET})\.({_OCTET})\.({_OCTET})\.({_OCTET})(?:/(3[0-2]|[12]?[0-9]))?")


def _canonical(text) -> Optional[tuple]:
    """(the address as an int, the prefix length or None) of text in canonical form, or None."""
    match = _CANONICAL.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    a, b, c, d, prefix = match.groups()
    return (int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)), (None if prefix is None else int(prefix))


def parse_cidr(text: str, fail) -> Optional[IPv4Network]:
    """An IPv4 network in CIDR form with no host bits set, or None after `fail(message)`."""
    quick = _canonical(text)
    if quick is not None and quick[1] is not None:
        try:
            return IPv4Network(quick)
        except ValueError:
            pass  # host bits set: the message below
    try:
        if "/" not in text:
            raise ValueError("no prefix length")
        return IPv4Network(text)
    except ValueError as e:
        if "has host bits set" in str(e):
            net = IPv4Network(text, strict=False)
            fail(f"{text!r} has host bits set: did you mean {net}?")
        else:
            fail(f"{text!r} is not an IPv4 network in CIDR form (like 10.244.0.0/16)")
        return None


def parse_address(text: str, fail) -> Optional[IPv4Address]:
    quick = _canonical(text)
    if quick is not None and quick[1] is None:
        return IPv4Address(quick[0])
    try:
        return IPv4Address(text)
    except ValueError:
        fail(f"{text!r} is not an IPv4 address")
        return None
