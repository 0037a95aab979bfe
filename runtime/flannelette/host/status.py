"""`flannelette status`: the local runtime, from its --healthz endpoint, as a summary or (--json) one document.

The JSON document is what `flannelette status INVENTORY` reads from every
host: the unit's state, readiness, the lease table loaded and the one on disk,
drops and each peer. Times in it are ages in seconds by the host's own clock,
so the operator's clock never has to agree with the hosts'.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from flannelette.host import healthz, metrics, paths
from flannelette.model import config
from flannelette.model.config import ConfigError

EXIT_OK, EXIT_DOWN, EXIT_NOT_READY = 0, 1, 3
TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--healthz", default=f"127.0.0.1:{healthz.DEFAULT_PORT}", metavar="ADDR:PORT",
        help=f"the runtime's --healthz address (default 127.0.0.1:{healthz.DEFAULT_PORT})",
    )
    parser.add_argument("--json", action="store_true",
                        help="one JSON document: the unit, the runtime, the lease files and every peer")
    parser.add_argument("--net-conf", default=paths.NET_CONF, metavar="FILE", help=f"for --json (default {paths.NET_CONF})")
    parser.add_argument("--leases", default=paths.LEASES, metavar="FILE",
                        help=f"the lease table on disk, for --json (default {paths.LEASES})")
    parser.add_argument("--private-key", default=paths.PRIVATE_KEY, metavar="FILE",
                        help=f"this host's key, whose public half --json shows (default {paths.PRIVATE_KEY})")


def fetch(address: str, path: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(address: str) -> Tuple[bool, str]:
    """(ready, the /metrics page) of the runtime at `address`; OSError or URLError when nothing answers."""
    ready_code, _ = fetch(address, "/readyz")
    _, page = fetch(address, "/metrics")
    return ready_code == 200, page


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def samples_by_name(page: str) -> Dict[str, List[Tuple[dict, float]]]:
    """{metric name without the prefix: [(labels, value)]} of a /metrics page."""
    by_name: Dict[str, List[Tuple[dict, float]]] = defaultdict(list)
    for name, labels, value in metrics.parse(page):
        by_name[name.replace(metrics.PREFIX + "_", "", 1)].append((labels, value))
    return by_name


def summarise(address: str, ready: bool, page: str) -> str:
    by_name = samples_by_name(page)
    info = _leases_info(by_name)
    lines = [
        f"flannelette at {address}: {'ready' if ready else 'NOT READY'}",
        f"  host        {info.get('host', '?')} {info.get('subnet', '?')}",
        f"  leases      {_value(by_name, 'leases'):.0f} (hash {info.get('hash', '?')})",
        f"  carried     {_direction(by_name, 'tx')} sent, {_direction(by_name, 'rx')} received",
        f"  dropped     {', '.join(f'{reason} {v:.0f}' for reason, v in drops(by_name).items()) or 'none'}",
        f"  reloads     {_reloads(by_name)}",
    ]
    return "\n".join(lines + _peer_lines(peers(by_name, time.time())))


def _leases_info(by_name) -> dict:
    return by_name["leases_info"][0][0] if by_name.get("leases_info") else {}


def _value(by_name, name: str, **match) -> float:
    return sum(v for labels, v in by_name.get(name, ()) if all(labels.get(k) == m for k, m in match.items()))


def _direction(by_name, direction: str) -> str:
    packets = _value(by_name, "packets_total", direction=direction)
    return f"{packets:.0f} packets ({human_bytes(_value(by_name, 'bytes_total', direction=direction))})"


def drops(by_name) -> Dict[str, float]:
    """Drops by reason, those not zero."""
    return {labels["reason"]: v for labels, v in by_name.get("drops_total", ()) if v}


def _reloads(by_name) -> str:
    return ", ".join(f"{labels['result']} {v:.0f}" for labels, v in by_name.get("reloads_total", ())) or "none"


def peers(by_name, now: float) -> List[dict]:
    """One dict per peer, by name: its lease, format, exchange, packets, and ages (seconds) of what was last heard."""
    found: Dict[str, dict] = {}

    def peer(labels) -> dict:
        return found.setdefault(labels["peer"], {"peer": labels["peer"], "subnet": labels.get("subnet", "?"),
                                                 "public_ip": labels.get("public_ip", "?"), "tx": 0, "rx": 0})

    for labels, value in by_name.get("peer_packets_total", ()):
        peer(labels)[labels["direction"]] = int(value)
    for labels, _ in by_name.get("peer_info", ()):
        peer(labels).update(format=labels["format"], exchange=labels["exchange"], release=labels.get("release", ""))
    for name, key in (("peer_last_heard_timestamp_seconds", "heard"), ("peer_handshake_timestamp_seconds", "handshake")):
        for labels, value in by_name.get(name, ()):
            if labels["peer"] in found:
                found[labels["peer"]][key] = round(max(0.0, now - value), 1)
    for name in ("peer_auth_failed_total", "peer_replayed_total"):
        for labels, value in by_name.get(name, ()):
            if labels["peer"] in found:
                found[labels["peer"]]["refused"] = found[labels["peer"]].get("refused", 0) + int(value)
    return [found[name] for name in sorted(found)]


def _peer_lines(rows: List[dict]) -> List[str]:
    if not rows:
        return ["  peers       none"]
    keyed = lambda row, text: text if "refused" in row else "-"  # noqa: E731  (a peer without a key has no handshake)
    table = [("PEER", "SUBNET", "PUBLIC IP", "FORMAT", "EXCHANGE", "RELEASE", "HEARD", "HANDSHAKE", "REFUSED",
              "TX PACKETS", "RX PACKETS")]
    for row in rows:
        table.append((row["peer"], row["subnet"], row["public_ip"], row.get("format", "?"), row.get("exchange", "?"),
                      row.get("release") or "-", ago(row.get("heard")), keyed(row, ago(row.get("handshake"))),
                      keyed(row, str(row.get("refused"))), str(row["tx"]), str(row["rx"])))
    return [""] + ["  " + line for line in columns(table)]


def columns(rows) -> List[str]:
    """Rows of cells as lines of left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def ago(seconds: Optional[float]) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


# -- the JSON document ---------------------------------------------------------------


def document(address: str, net_conf: str, leases: str, private_key: str) -> dict:
    """This host's state for `flannelette status INVENTORY`; a runtime that doesn't answer is part of it."""
    state = {"unit": unit_state(), "leases_file": leases_file(net_conf, leases), "public_key": own_public_key(private_key)}
    try:
        ready, page = scrape(address)
    except (OSError, urllib.error.URLError) as e:
        return {**state, "answers": False, "ready": False, "error": f"nothing answers at {address} ({_reason(e)})"}
    by_name = samples_by_name(page)
    info = _leases_info(by_name)
    return {
        **state, "answers": True, "ready": ready, "host": info.get("host"), "subnet": info.get("subnet"),
        "leases": {"hash": info.get("hash"), "count": int(_value(by_name, "leases"))},
        "drops": {reason: int(v) for reason, v in drops(by_name).items()},
        "peers": peers(by_name, time.time()),
    }


def unit_state(unit: str = paths.UNIT_NAME) -> str:
    """`systemctl is-active`'s word for the unit: active, inactive, failed, activating, …"""
    try:
        done = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return done.stdout.strip() or "unknown"


def leases_file(net_conf: str, leases: str) -> dict:
    """The lease table on disk: its hash (as the runtime would show it once loaded), or why it can't be read."""
    try:
        table = config.load_leases(leases, config.load_net_conf(net_conf))
    except ConfigError as e:
        return {"error": "; ".join(str(p) for p in e.problems)}
    return {"hash": metrics.lease_hash(table), "count": len(table)}


def own_public_key(path: str) -> Optional[str]:
    """This host's public key, from its private key; None where there is none, or it can't be read (not root)."""
    from flannelette.host import keys
    from flannelette.host.datapath import crypto

    try:
        return crypto.encode_key(crypto.public(keys.read_key(path)))
    except (keys.KeyFileError, crypto.Unavailable, OSError):
        return None


def _reason(error) -> str:
    return str(getattr(error, "reason", error))


def main(args) -> int:
    address = args.healthz
    try:
        healthz.parse_address(address)
    except ValueError as e:
        print(f"flannelette status: --healthz {e}", file=sys.stderr)
        return EXIT_DOWN
    if getattr(args, "json", False):
        state = document(address, args.net_conf, args.leases, args.private_key)
        print(json.dumps(state, indent=2, sort_keys=True))
        return EXIT_OK if state["ready"] else EXIT_NOT_READY if state["answers"] else EXIT_DOWN
    try:
        ready, page = scrape(address)
    except (OSError, urllib.error.URLError) as e:
        print(
            f"flannelette status: nothing answers at {address} ({_reason(e)}).\n"
            "Is the runtime running, and was it started with --healthz at this address?",
            file=sys.stderr,
        )
        return EXIT_DOWN
    print(summarise(address, ready, page))
    return EXIT_OK if ready else EXIT_NOT_READY


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="flannelette status")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
