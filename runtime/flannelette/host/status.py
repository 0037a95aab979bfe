"""`flannelette status`: a readable summary of the local runtime, from its --healthz endpoint."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Dict, List, Tuple

from flannelette.host import healthz, metrics

EXIT_OK, EXIT_DOWN, EXIT_NOT_READY = 0, 1, 3
TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--healthz", default=f"127.0.0.1:{healthz.DEFAULT_PORT}", metavar="ADDR:PORT",
        help=f"the runtime's --healthz address (default 127.0.0.1:{healthz.DEFAULT_PORT})",
    )


def fetch(address: str, path: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def summarise(address: str, ready: bool, page: str) -> str:
    samples = metrics.parse(page)
    by_name: Dict[str, List[Tuple[dict, float]]] = defaultdict(list)
    for name, labels, value in samples:
        by_name[name.replace(metrics.PREFIX + "_", "", 1)].append((labels, value))
    info = by_name["leases_info"][0][0] if by_name["leases_info"] else {}
    lines = [
        f"flannelette at {address}: {'ready' if ready else 'NOT READY'}",
        f"  host        {info.get('host', '?')} {info.get('subnet', '?')}",
        f"  leases      {_value(by_name, 'leases'):.0f} (hash {info.get('hash', '?')})",
        f"  carried     {_direction(by_name, 'tx')} sent, {_direction(by_name, 'rx')} received",
        f"  dropped     {_drops(by_name)}",
        f"  reloads     {_reloads(by_name)}",
    ]
    return "\n".join(lines + _peer_lines(by_name, time.time()))


def _value(by_name, name: str, **match) -> float:
    return sum(v for labels, v in by_name.get(name, ()) if all(labels.get(k) == m for k, m in match.items()))


def _direction(by_name, direction: str) -> str:
    packets = _value(by_name, "packets_total", direction=direction)
    return f"{packets:.0f} packets ({human_bytes(_value(by_name, 'bytes_total', direction=direction))})"


def _drops(by_name) -> str:
    drops = [(labels["reason"], v) for labels, v in by_name.get("drops_total", ()) if v]
    return ", ".join(f"{reason} {v:.0f}" for reason, v in drops) or "none"


def _reloads(by_name) -> str:
    return ", ".join(f"{labels['result']} {v:.0f}" for labels, v in by_name.get("reloads_total", ())) or "none"


def _peer_lines(by_name, now: float) -> List[str]:
    peers: Dict[tuple, Dict[str, str]] = defaultdict(dict)
    for labels, value in by_name.get("peer_packets_total", ()):
        peers[(labels["peer"], labels["subnet"], labels["public_ip"])][labels["direction"]] = f"{value:.0f}"
    for labels, _ in by_name.get("peer_info", ()):
        row = peers[(labels["peer"], labels["subnet"], labels["public_ip"])]
        row["format"], row["exchange"], row["release"] = labels["format"], labels["exchange"], labels.get("release", "")
    heard = {labels["peer"]: value for labels, value in by_name.get("peer_last_heard_timestamp_seconds", ())}
    handshake = {labels["peer"]: value for labels, value in by_name.get("peer_handshake_timestamp_seconds", ())}
    failed = defaultdict(float)
    for name in ("peer_auth_failed_total", "peer_replayed_total"):
        for labels, value in by_name.get(name, ()):
            failed[labels["peer"]] += value
    keyed = {labels["peer"] for labels, _ in by_name.get("peer_auth_failed_total", ())}
    if not peers:
        return ["  peers       none"]
    rows = [("PEER", "SUBNET", "PUBLIC IP", "FORMAT", "EXCHANGE", "RELEASE", "HEARD", "HANDSHAKE", "REFUSED",
             "TX PACKETS", "RX PACKETS")]
    for (peer, subnet, public_ip), row in sorted(peers.items()):
        rows.append((peer, subnet, public_ip, row.get("format", "?"), row.get("exchange", "?"), row.get("release") or "-",
                     _ago(now, heard.get(peer)), _ago(now, handshake.get(peer)) if peer in keyed else "-",
                     f"{failed[peer]:.0f}" if peer in keyed else "-", row.get("tx", "0"), row.get("rx", "0")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [""] + ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _ago(now: float, when) -> str:
    if when is None:
        return "never"
    seconds = max(0.0, now - when)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def main(args) -> int:
    address = args.healthz
    try:
        healthz.parse_address(address)
        ready_code, _ = fetch(address, "/readyz")
        _, page = fetch(address, "/metrics")
    except ValueError as e:
        print(f"flannelette status: --healthz {e}", file=sys.stderr)
        return EXIT_DOWN
    except (OSError, urllib.error.URLError) as e:
        reason = getattr(e, "reason", e)
        print(
            f"flannelette status: nothing answers at {address} ({reason}).\n"
            "Is the runtime running, and was it started with --healthz at this address?",
            file=sys.stderr,
        )
        return EXIT_DOWN
    print(summarise(address, ready_code == 200, page))
    return EXIT_OK if ready_code == 200 else EXIT_NOT_READY


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="flannelette status")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
