"""The runtime's counters in Prometheus text format, and the lease-table fingerprint."""

from __future__ import annotations

import hashlib
import time
from typing import Iterable, List, Tuple

from flannelette.host.datapath import formats
from flannelette.model import config

PREFIX = "flannelette"


def lease_hash(leases: Iterable) -> str:
    """A short fingerprint of a lease table; equal tables hash equal whatever their order."""
    digest = hashlib.sha256()
    for piece in config.rendered_pieces(sorted(leases, key=lambda lease: (lease.host, lease.subnet))):
        digest.update(piece.encode())
    return digest.hexdigest()[:16]


def escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**pairs) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}"


class Exposition:
    """Builds one scrape: each metric's HELP and TYPE once, then its samples."""

    def __init__(self):
        self.lines: List[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Iterable[Tuple[str, float]]) -> None:
        self.lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]
        self.lines += [f"{PREFIX}_{name}{label} {value}" for label, value in samples]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(state) -> str:
    """The /metrics page for `state` (a daemon.Runtime)."""
    out = Exposition()
    path = state.datapath
    tx_p, tx_b, rx_p, rx_b = path.totals() if path else (0, 0, 0, 0)
    out.metric("ready", "gauge", "1 when devices, rules and subnet.env are in place and packets flow.",
               [("", int(state.ready))])
    out.metric("packets_total", "counter", "Inner packets carried, by direction.",
               [(labels(direction="tx"), tx_p), (labels(direction="rx"), rx_p)])
    out.metric("bytes_total", "counter", "Inner packet bytes carried, by direction.",
               [(labels(direction="tx"), tx_b), (labels(direction="rx"), rx_b)])
    out.metric("wire_fast", "gauge", "1 while some peer takes the fast format (segments) and flannel0 hands over "
               "TCP super-packets, 0 while every peer is on flannel's (docs/wire.md).",
               [("", int(path.offload) if path else 0)])
    drops = path.drops.items() if path else ()
    out.metric("drops_total", "counter", "Packets and datagrams dropped, by reason.",
               [(labels(reason=reason), count) for reason, count in drops])
    out.metric("icmp_unreachable_sent_total", "counter", "ICMP net-unreachable replies written to the TUN device.",
               [("", path.icmp_sent if path else 0)])
    sent = path.exchanges.sent if path else {}
    out.metric("exchange_sent_total", "counter", "Messages of the capability exchange sent, hellos and answers.",
               [(labels(message=formats.NAMES_OF_MESSAGES[kind]), count) for kind, count in sorted(sent.items())])
    _peers(out, path)
    out.metric("leases", "gauge", "Leases in the loaded table, this host's included.", [("", state.lease_count)])
    out.metric("leases_info", "gauge", "The loaded lease table's fingerprint; hosts with different hashes run different tables.",
               [(labels(hash=state.lease_hash, host=state.own.host, subnet=state.own.subnet), 1)])
    out.metric("reloads_total", "counter", "SIGHUP reloads of leases.json, by result.",
               [(labels(result=k), v) for k, v in sorted(state.reloads.items())])
    return out.text()


def _peers(out: Exposition, path) -> None:
    # Only peers something was carried to or heard from: a table of 10,000 leases would otherwise make every
    # scrape tens of thousands of series, most of them zeros.
    peers = [peer for peer in path.table.peers() if peer.heard is not None or any(peer.counts.as_tuple())] \
        if path else []
    now_mono, now_wall = time.monotonic(), time.time()
    named = [(peer, dict(peer=peer.host, subnet=str(peer.subnet), public_ip=str(peer.public_ip))) for peer in peers]
    for name, tx, rx, what in (("packets_total", "tx_packets", "rx_packets", "packets"),
                               ("bytes_total", "tx_bytes", "rx_bytes", "bytes")):
        samples = []
        for peer, base in named:
            samples.append((labels(direction="tx", **base), getattr(peer.counts, tx)))
            samples.append((labels(direction="rx", **base), getattr(peer.counts, rx)))
        out.metric(f"peer_{name}", "counter", f"Inner {what} carried per peer, by direction.", samples)
    out.metric("peer_info", "gauge",
               "Per peer: the format it is sent (flannel, fast, sealed, wireguard), what the capability exchange knows of it "
               "(flannel, probing, silent, confirmed, previous) and the release it reported.",
               [(labels(**base, format=formats.NAMES[peer.format], exchange=peer.exchange.state if peer.exchange else "",
                        release=peer.exchange.release if peer.exchange else ""), 1) for peer, base in named])
    _tunnels(out, [(peer, peer.tunnel) for peer, _ in named if peer.tunnel is not None], now_mono)
    out.metric("peer_sealed_unit_datagrams", "gauge",
               "Per peer on the sealed format: the longest unit, in datagrams, this host asks it for (asked) from the "
               "loss it sees, and the one it asks of this host (sent); 0: any length.",
               [sample for peer, _ in named if peer.format == formats.SEALED for sample in (
                   (labels(peer=peer.host, direction="asked"), peer.loss.ask if peer.loss is not None else 0),
                   (labels(peer=peer.host, direction="sent"), peer.unit_limit))])
    out.metric("peer_last_heard_timestamp_seconds", "gauge",
               "Per peer: when the last datagram accepted from it arrived (Unix time; absent: never).",
               [(labels(peer=peer.host), round(now_wall - (now_mono - peer.heard), 3))
                for peer, _ in named if peer.heard is not None])


def _tunnels(out: Exposition, tunnels, now: float) -> None:
    """WireGuard's state per peer with a key (docs/encryption.md)."""
    out.metric("peer_handshake_timestamp_seconds", "gauge",
               "Per peer: when the last handshake with it completed (Unix time; absent: never).",
               [(labels(peer=peer.host), round(t.handshake_wall, 3)) for peer, t in tunnels if t.handshake_wall])
    out.metric("peer_session_age_seconds", "gauge", "Per peer: the age of the keypair packets to it are sealed with.",
               [(labels(peer=peer.host), round(now - t.session_at, 3)) for peer, t in tunnels
                if t.session_at is not None and t.current is not None])
    out.metric("peer_handshakes_total", "counter", "Per peer: handshakes this host initiated, and answered.",
               [sample for peer, t in tunnels for sample in (
                   (labels(peer=peer.host, role="initiated"), t.initiated_total),
                   (labels(peer=peer.host, role="answered"), t.answered_total))])
    out.metric("peer_auth_failed_total", "counter", "Per peer: messages under its sessions that did not open.",
               [(labels(peer=peer.host), t.auth_failed) for peer, t in tunnels])
    out.metric("peer_replayed_total", "counter", "Per peer: messages refused as replays (a counter seen before).",
               [(labels(peer=peer.host), t.replayed) for peer, t in tunnels])


def parse(text: str) -> List[Tuple[str, dict, float]]:
    """Samples of a Prometheus text page as (name, labels, value); enough for our own pages."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        samples.append((name, _parse_labels(rest.rstrip("}")), float(value)))
    return samples


def _parse_labels(text: str) -> dict:
    found, key, rest = {}, None, text
    while rest:
        key, _, rest = rest.partition('="')
        value, i = [], 0
        while rest[i] != '"':
            value.append(rest[i + 1] if rest[i] == "\\" else rest[i])
            i += 2 if rest[i] == "\\" else 1
        found[key.lstrip(",")] = "".join(value).replace("\\n", "\n")
        rest = rest[i + 1:]
    return found
