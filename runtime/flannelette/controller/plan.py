"""`flannelette plan INVENTORY`: every host's subnet, and allocations for new hosts with --write."""

from __future__ import annotations

import argparse
import sys

from flannelette.controller import inventory
from flannelette.controller.validate import EXIT_OK, report
from flannelette.model import config
from flannelette.model.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", metavar="INVENTORY", help="a pyinfra inventory file, e.g. inventory/prod.py")
    parser.add_argument("--json", action="store_true", help="print the leases.json document instead of a table")
    parser.add_argument("--write", action="store_true", help="allocate subnets for new hosts into the allocation file")


def main(args) -> int:
    try:
        plan = inventory.plan_inventory(inventory.load(args.inventory), args.inventory, allocate=args.write)
    except ConfigError as e:
        return report(e)
    if args.write:
        write_allocations(args.inventory, plan)
    if args.json:
        sys.stdout.write(config.render_leases(plan.leases))
    else:
        print(render_table(plan))
    return EXIT_OK


def write_allocations(inventory_path: str, plan) -> None:
    if inventory.write_allocations(inventory.allocation_path(inventory_path), plan):
        print(f"wrote {inventory.allocation_path(inventory_path)} ({len(plan.new)} new)", file=sys.stderr)


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
