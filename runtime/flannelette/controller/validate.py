"""`flannelette validate INVENTORY`: every problem of an inventory, or that it is valid."""

from __future__ import annotations

import argparse
import sys

from flannelette.controller import inventory
from flannelette.model.config import ConfigError

EXIT_OK, EXIT_INVALID = 0, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", metavar="INVENTORY", help="a pyinfra inventory file, e.g. inventory/prod.py")


def main(args) -> int:
    try:
        inventory.plan_inventory(inventory.load(args.inventory), args.inventory)
    except ConfigError as e:
        return report(e)
    print(f"{args.inventory}: valid")
    return EXIT_OK


def report(error: ConfigError) -> int:
    """Every problem on stderr, one per line; the exit code of an invalid inventory."""
    for problem in error.problems:
        print(problem, file=sys.stderr)
    return EXIT_INVALID
