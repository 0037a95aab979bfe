"""`flannelette status INVENTORY`: every host's runtime in one table, and who hears whom.

Each host is asked over SSH for `flannelette status --json` (its unit, its
runtime and its lease files, host/status.py); the replies are set against the
plan of the inventory, as the deploy makes it: a host on another lease table
than the plan's, down or not ready is named, and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from flannelette.controller import inventory, remote
from flannelette.controller.validate import report
from flannelette.host import metrics, paths
from flannelette.host.datapath.exchange import JITTER, REFRESH
from flannelette.host.status import ago, columns
from flannelette.model.config import WIRE_FLANNEL, ConfigError
from flannelette.model.plan import Plan

EXIT_OK, EXIT_PROBLEMS = 0, 1
# A confirmed peer is sent a hello every REFRESH (+ JITTER) seconds and
# answers it: one not heard from within two of those is not heard.
RECENT = 2 * (REFRESH + JITTER)
COMMAND = f"{paths.COMMAND} status --json"
EXIT_NOT_FOUND = 127  # the shell's: the command doesn't exist


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", metavar="INVENTORY", help="a pyinfra inventory file, e.g. inventory/prod.py")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table and matrix")
    parser.add_argument("--timeout", type=float, default=remote.TIMEOUT, metavar="SECONDS",
                        help=f"for each host: connecting, logging in and the answer (default {remote.TIMEOUT:.0f})")
    parser.add_argument("--recent", type=float, default=RECENT, metavar="SECONDS",
                        help=f"a peer heard from within this is heard (default {RECENT:.0f}: two of its hellos)")


# -- one host's row ------------------------------------------------------------------


@dataclass
class Row:
    host: str
    reply: Optional[dict] = None  # the host's `flannelette status --json`; None: no reply
    error: str = ""  # why there is no reply
    problems: List[str] = field(default_factory=list)  # what makes the exit code 1
    notes: List[str] = field(default_factory=list)  # what the operator should see but doesn't fail the fleet

    @property
    def loaded(self) -> Optional[str]:
        """The hash of the lease table the host's runtime runs."""
        return ((self.reply or {}).get("leases") or {}).get("hash")

    def peers(self) -> Dict[str, dict]:
        return {peer["peer"]: peer for peer in (self.reply or {}).get("peers", [])}


def read_reply(result: remote.Result) -> Row:
    """The row of one host from what its `flannelette status --json` printed (any exit code), or why it didn't."""
    if result.error:
        return Row(result.host, error=result.error)
    try:
        reply = json.loads(result.stdout)
        if isinstance(reply, dict) and "unit" in reply:
            return Row(result.host, reply)
    except ValueError:
        pass
    said = (result.stderr.strip().splitlines() or ["nothing on stderr"])[-1]
    if result.exit_code == EXIT_NOT_FOUND:
        return Row(result.host, error=f"flannelette is not installed: {said}")
    return Row(result.host, error=f"`{COMMAND}` exit {result.exit_code}: {said}")


def plan_hash(plan: Plan, rows: List[Row]) -> tuple:
    """(the hash of the lease table the deploy would write, None when it can't be known; why not)."""
    if not plan.net_conf.encrypted:
        return metrics.lease_hash(plan.leases), ""
    keys = {row.host: row.reply.get("public_key") for row in rows if row.reply}
    missing = [lease.host for lease in plan.leases if lease.wire != WIRE_FLANNEL and not keys.get(lease.host)]
    if missing:
        return None, f"the public key of {', '.join(missing)} is unknown (not reached, or not read as root)"
    return metrics.lease_hash(plan.keyed(keys)), ""


def reference_table(plan: Plan, rows: List[Row]) -> dict:
    """The table hosts are held to: the plan's, or where its hash can't be known, the one most hosts run."""
    expected, unknown = plan_hash(plan, rows)
    reference = {"lease_hash": expected, "lease_hash_unknown": unknown, "compared_with": expected, "whose": "the plan's"}
    if expected is None:
        counts = Counter(row.loaded for row in rows if row.loaded).most_common(2)
        majority = counts[0][0] if counts and (len(counts) == 1 or counts[0][1] > counts[1][1]) else None
        reference.update(compared_with=majority, whose="most hosts'")
    return reference


def judge(row: Row, reference: dict, recent: float) -> Row:
    """Fill in the row's problems and notes."""
    reply = row.reply
    if reply is None:
        row.problems.append(f"unreachable: {row.error}")
        return row
    if reply["unit"] != "active":
        row.problems.append(f"unit {reply['unit']}")
    if not reply["answers"]:
        row.problems.append(reply.get("error", "the runtime does not answer"))
    elif not reply["ready"]:
        row.problems.append("not ready")
    loaded, on_disk = row.loaded, reply["leases_file"].get("hash")
    expected, whose = reference["compared_with"], reference["whose"]
    if expected is not None and loaded is not None and loaded != expected:
        row.problems.append(f"runs another lease table ({loaded}, {whose} is {expected})")
    if "error" in reply["leases_file"]:
        row.problems.append(f"leases.json: {reply['leases_file']['error']}")
    elif on_disk == loaded:
        pass  # the table loaded is the file's: said above
    elif expected is not None and on_disk != expected:
        row.problems.append(f"leases.json on disk is another table ({on_disk}, {whose} is {expected})")
    elif loaded is not None:
        row.notes.append("leases.json on disk is not the table loaded: reload it")
    silent = [name for name, peer in row.peers().items() if not heard(peer, recent)]
    if silent:
        row.notes.append(f"hears nothing from {', '.join(silent)}")
    return row


def heard(peer: dict, recent: float) -> bool:
    return peer.get("heard") is not None and peer["heard"] <= recent


# -- the fleet -------------------------------------------------------------------------


def fleet_view(plan: Plan, results: List[remote.Result], recent: float = RECENT) -> dict:
    """Everything the table, the matrix and --json show, from the plan and each host's result."""
    rows = [read_reply(result) for result in results]
    reference = reference_table(plan, rows)
    rows = [judge(row, reference, recent) for row in rows]
    return {"plan": {"hosts": len(plan.leases), **reference},
            "rows": rows, "recent": recent, "hosts": [lease.host for lease in plan.leases]}


def exit_code(view: dict) -> int:
    return EXIT_PROBLEMS if any(row.problems for row in view["rows"]) else EXIT_OK


def render_table(view: dict) -> str:
    plan = view["plan"]
    head = f"plan: {plan['hosts']} hosts, lease table {plan['lease_hash']}"
    if plan["lease_hash"] is None:
        head = f"plan: {plan['hosts']} hosts, lease table unknown: {plan['lease_hash_unknown']}"
        head += f"; hosts compared with the table most run, {plan['compared_with']}" if plan["compared_with"] else ""
    table = [("HOST", "UNIT", "READY", "LEASE TABLE", "HEARD", "FORMATS", "DROPS", "PROBLEMS")]
    for row in view["rows"]:
        table.append(_cells(row, plan, view["recent"]))
    return "\n".join([head, ""] + columns(table))


def _cells(row: Row, plan: dict, recent: float) -> tuple:
    reply = row.reply
    says = "; ".join(row.problems + row.notes) or "-"
    if reply is None:
        return (row.host, "?", "?", "?", "?", "?", "?", says)
    expected, loaded = plan["compared_with"], row.loaded
    same = " plan" if plan["lease_hash"] else " most"
    table = "-" if loaded is None else loaded + ("" if expected is None else same if loaded == expected else " OTHER")
    peers = row.peers().values()
    formats: Dict[str, int] = {}
    for peer in peers:
        formats[peer.get("format", "?")] = formats.get(peer.get("format", "?"), 0) + 1
    drops = ", ".join(f"{reason} {count}" for reason, count in sorted(reply.get("drops", {}).items()))
    return (row.host, reply["unit"], "yes" if reply["ready"] else "NO", table,
            f"{sum(heard(peer, recent) for peer in peers)}/{len(peers)}" if reply["answers"] else "-",
            ", ".join(f"{name} {count}" for name, count in sorted(formats.items())) or "-", drops or "-", says)


def hearing(view: dict) -> Dict[str, Dict[str, str]]:
    """{host: {peer: what it last heard}}: the format when recent, how long ago when not, never, or ? (no reply)."""
    matrix = {}
    for row in view["rows"]:
        peers = row.peers()
        cells = {}
        for name in view["hosts"]:
            peer = peers.get(name)
            if name == row.host:
                cells[name] = "-"
            elif row.reply is None or not row.reply["answers"]:
                cells[name] = "?"
            elif peer is None:
                cells[name] = "no lease"
            elif heard(peer, view["recent"]):
                cells[name] = peer.get("format", "ok")
            else:
                cells[name] = ago(peer.get("heard")).replace(" ago", "")
        matrix[row.host] = cells
    return matrix


def render_matrix(view: dict) -> str:
    matrix = hearing(view)
    hosts = view["hosts"]
    table = [("hears \\ from",) + tuple(hosts)] + [(host,) + tuple(matrix[host][h] for h in hosts) for host in matrix]
    return "\n".join([f"who hears whom (a row's host, from each column's: the format heard within "
                      f"{view['recent']:.0f}s, else when last)", ""] + columns(table))


def render_json(view: dict) -> str:
    rows = [{"host": row.host, "ok": not row.problems, "problems": row.problems, "notes": row.notes,
             "error": row.error or None, "status": row.reply} for row in view["rows"]]
    document = {"ok": exit_code(view) == EXIT_OK, "plan": view["plan"], "recent_seconds": view["recent"],
                "hosts": rows, "hears": hearing(view)}
    return json.dumps(document, indent=2, sort_keys=True)


# -- the command ------------------------------------------------------------------------


def asked_hosts(loaded, plan: Plan) -> list:
    """(name, data) of the hosts that run flannelette: a flanneld host has no `flannelette status`."""
    flanneld = {lease.host for lease in plan.leases if lease.wire == WIRE_FLANNEL}
    return [(host.name, host.data.dict()) for host in loaded if host.name not in flanneld]


def main(args) -> int:
    try:
        loaded = inventory.load(args.inventory)
        plan = inventory.plan_inventory(loaded, args.inventory)
    except ConfigError as e:
        return report(e)
    # pyinfra's SSH client takes gevent's locks: its threads must be gevent's, as in
    # the pyinfra CLI, whose import monkey-patches the interpreter.
    import pyinfra_cli  # noqa: F401

    results = remote.run_everywhere(asked_hosts(loaded, plan), COMMAND, timeout=args.timeout)
    view = fleet_view(plan, results, args.recent)
    if args.json:
        print(render_json(view))
    else:
        print(render_table(view) + "\n\n" + render_matrix(view))
    return exit_code(view)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="flannelette status")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
