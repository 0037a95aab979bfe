"""The `flannelette` command: validate and plan an inventory, run and inspect the runtime."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from flannelette import __version__
from flannelette.model import config
from flannelette.model.config import ConfigError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
flannelette gives plain Linux hosts one flat overlay network, the way flannel's
udp backend does: every host owns a subnet of the network, and packets for
another host's subnet travel as UDP datagrams to that host.

On the operator's machine:
  flannelette validate inventory/prod.py     check net-conf and every host's data
  flannelette plan inventory/prod.py         show each host's subnet
  flannelette plan inventory/prod.py --write allocate subnets for new hosts
  pyinfra inventory/prod.py deploys/overlay.py

On a host (started by systemd):
  flannelette run --net-conf FILE --leases FILE --public-ip IP
  flannelette status
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flannelette", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"flannelette {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    validate = commands.add_parser(
        "validate",
        help="check an inventory: net-conf and every host's flannel_* data",
        description="Check the net-conf and every host of a pyinfra inventory, then the subnet plan. "
        "Exit 0 when valid; exit 1 with every problem, one per line: WHERE: FIELD: message.",
    )
    validate.add_argument("inventory", metavar="INVENTORY", help="a pyinfra inventory file, e.g. inventory/prod.py")
    validate.set_defaults(func=cmd_validate)

    plan = commands.add_parser(
        "plan",
        help="show (or allocate) every host's subnet",
        description="Show each host's subnet, public IP and gateway. Hosts without a static "
        "flannel_subnet take theirs from the allocation file beside the inventory "
        "(inventory/prod.py -> inventory/prod.leases.json); --write creates or extends it.",
    )
    plan.add_argument("inventory", metavar="INVENTORY", help="a pyinfra inventory file, e.g. inventory/prod.py")
    plan.add_argument("--json", action="store_true", help="print the leases.json document instead of a table")
    plan.add_argument("--write", action="store_true", help="allocate subnets for new hosts into the allocation file")
    plan.set_defaults(func=cmd_plan)

    _add_runtime_commands(commands)
    return parser


def _add_runtime_commands(commands) -> None:
    from flannelette.host import daemon, status

    run = commands.add_parser(
        "run",
        help="run the overlay on this host (what the systemd unit starts)",
        description="Bring up flannel0 and cni0 for this host's lease and carry packets to the other hosts.",
    )
    daemon.add_arguments(run)
    run.set_defaults(func=daemon.main)

    stat = commands.add_parser(
        "status", help="summarise the local runtime", description="Summarise the local runtime from its --healthz endpoint."
    )
    status.add_arguments(stat)
    stat.set_defaults(func=status.main)


def cmd_validate(args) -> int:
    from flannelette.controller import inventory

    try:
        inventory.plan_inventory(inventory.load(args.inventory), args.inventory)
    except ConfigError as e:
        return report(e)
    print(f"{args.inventory}: valid")
    return EXIT_OK


def cmd_plan(args) -> int:
    from flannelette.controller import inventory

    try:
        plan = inventory.plan_inventory(inventory.load(args.inventory), args.inventory, allocate=args.write)
    except ConfigError as e:
        return report(e)
    if args.write:
        _write_allocations(inventory, args.inventory, plan)
    if args.json:
        sys.stdout.write(config.render_leases(plan.leases))
    else:
        print(render_table(plan))
    return EXIT_OK


def _write_allocations(inventory, inventory_path: str, plan) -> None:
    path = inventory.allocation_path(inventory_path)
    text = config.render_leases(plan.leases)
    if os.path.exists(path) and open(path, encoding="utf-8").read() == text:
        return
    inventory.write_allocations(path, plan)
    print(f"wrote {path} ({len(plan.new)} new)", file=sys.stderr)


def render_table(plan) -> str:
    conf = plan.net_conf
    rows = [("HOST", "PUBLIC IP", "SUBNET", "GATEWAY", "MTU SOURCE")]
    for lease in plan.leases:
        host = plan.host(lease.host)
        mtu = f"{host.iface} MTU - 28" if host.iface else "MTU of the interface holding the public IP - 28"
        name = lease.host + (" (new)" if lease.host in plan.new else "")
        rows.append((name, str(lease.public_ip), str(lease.subnet), str(lease.gateway), mtu))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    head = f"Network {conf.network}, /{conf.subnet_len} per host, udp port {conf.port}"
    return "\n".join([head, ""] + lines)


def report(error: ConfigError) -> int:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    return EXIT_INVALID


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
