"""The `flannelette` command: dispatch only.

Each command lives with its side and is imported only when it runs: building
`flannelette run` never imports pyinfra, and `flannelette validate` never
imports the daemon or pyroute2. The zipapp on a host carries the host's
commands only.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import NamedTuple, Optional, Sequence

from flannelette import __version__

EXIT_USAGE = 2


class Command(NamedTuple):
    module: str  # holds add_arguments(parser) and main(args) -> exit code
    help: str
    description: str


OPERATOR_COMMANDS = {
    "validate": Command(
        "flannelette.controller.validate",
        "check an inventory: net-conf and every host's flannel_* data",
        "Check the net-conf and every host of a pyinfra inventory, then the subnet plan. "
        "Exit 0 when valid; exit 1 with every problem, one per line: WHERE: FIELD: message.",
    ),
    "plan": Command(
        "flannelette.controller.plan",
        "show (or allocate) every host's subnet",
        "Show each host's subnet, public IP and gateway. Hosts without a static "
        "flannel_subnet take theirs from the allocation file beside the inventory "
        "(inventory/prod.py -> inventory/prod.leases.json); --write creates or extends it.",
    ),
}
HOST_COMMANDS = {
    "run": Command(
        "flannelette.host.daemon",
        "run the overlay on this host (what the systemd unit starts)",
        "Bring up flannel0 and cni0 for this host's lease and carry packets to the other hosts.",
    ),
    "keygen": Command(
        "flannelette.host.keys",
        "make this host's WireGuard key, if it has none, and print its public key",
        "Make this host's private key (0600) when there is none, and print its public key in "
        "WireGuard's base64, for the lease table. The private key never leaves the host.",
    ),
    "teardown": Command(
        "flannelette.host.teardown",
        "remove flannel0, its route, the rules and an idle cni0 (after a stop)",
        "Remove what a stopped runtime leaves for its next start: flannel0 with its route, the "
        "iptables or nftables rules, and cni0 when nothing is attached. Refused while a runtime runs.",
    ),
    "status": Command(
        "flannelette.host.status",
        "summarise the local runtime (with INVENTORY: every host's)",
        "Summarise the local runtime from its --healthz endpoint. On the operator's machine, "
        "`flannelette status INVENTORY` asks every host of the inventory over SSH instead "
        "(`flannelette status INVENTORY --help`).",
    ),
}
# `flannelette status INVENTORY`: the same word, on the operator's machine, for the whole fleet.
FLEET_STATUS = Command(
    "flannelette.controller.fleet",
    "every host's runtime: one table, and who hears whom",
    "Ask every host of a pyinfra inventory over SSH, as the deploy reaches them, for its runtime's state, "
    "and print one table (unit, ready, lease table against the plan's, peers heard, formats, drops) and "
    "a matrix of who hears whom. Exit 1 when any host is unreachable, down, not ready or on another "
    "lease table than the plan's.",
)

DESCRIPTION = """\
flannelette gives plain Linux hosts one flat overlay network, the way flannel's
udp backend does: every host owns a subnet of the network, and packets for
another host's subnet travel as UDP datagrams to that host.

On the operator's machine:
  flannelette validate inventory/prod.py     check net-conf and every host's data
  flannelette plan inventory/prod.py         show each host's subnet
  flannelette plan inventory/prod.py --write allocate subnets for new hosts
  flannelette status inventory/prod.py       every host's runtime, and who hears whom
  pyinfra inventory/prod.py deploys/overlay.py

On a host (started by systemd):
  flannelette run --net-conf FILE --leases FILE --public-ip IP
  flannelette status
  flannelette teardown                       after a stop: remove flannel0, its route and rules
  flannelette keygen                         make this host's key, print its public key
"""


def commands() -> dict:
    """The commands this installation has: a host's zipapp carries no operator side."""
    if importlib.util.find_spec("flannelette.controller") is None:
        return dict(HOST_COMMANDS)
    return {**OPERATOR_COMMANDS, **HOST_COMMANDS}


def build_parser(available: dict) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<9} {command.help}" for name, command in available.items())
    parser = argparse.ArgumentParser(
        prog="flannelette", description=DESCRIPTION, epilog=f"commands:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flannelette {__version__}")
    parser.add_argument("command", metavar="COMMAND", nargs="?", choices=sorted(available) + _missing(available))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _missing(available: dict) -> list:
    return [name for name in OPERATOR_COMMANDS if name not in available]


def command_parser(name: str, command: Command):
    """The parser of one command, and the function that runs it."""
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"flannelette {name}", description=command.description)
    module.add_arguments(parser)
    return parser, module.main


def chosen(name: str, arguments: list, available: dict) -> Command:
    """The command `name` runs: `status` naming an INVENTORY is the fleet's, where the operator side is installed."""
    if name != "status" or "validate" not in available:
        return available[name]
    parser, _ = command_parser(name, available[name])
    _, rest = parser.parse_known_args([a for a in arguments if a not in ("-h", "--help")])
    return FLEET_STATUS if any(not a.startswith("-") for a in rest) else available[name]


def main(argv: Optional[Sequence[str]] = None) -> int:
    available = commands()
    try:
        top_parser = build_parser(available)
        top = top_parser.parse_args(argv)
        if top.command is None:
            top_parser.error(f"name a COMMAND: {', '.join(available)}")
        if top.command not in available:
            print(f"flannelette {top.command}: an operator's command; run it where flannelette[deploy] "
                  "is installed, not on a host", file=sys.stderr)
            return EXIT_USAGE
        parser, run = command_parser(top.command, chosen(top.command, top.arguments, available))
        args = parser.parse_args(top.arguments)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
