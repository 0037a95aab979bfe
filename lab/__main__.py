"""python -m lab up|down|status|ssh|box: the lab from the command line."""

import argparse
import sys
import time

from . import box as boxmod
from .errors import LabError
from .lab import Lab
from .plan import DEFAULT_HOSTS, DEFAULT_NAME, DEFAULT_NETWORK


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description="Booted Debian hosts on one bridge, to try the overlay on.")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="lab name, prefixes namespaces and links (default: %(default)s)")
    parser.add_argument("--network", default=DEFAULT_NETWORK,
                        help="underlay network (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build and boot the hosts, write the inventory")
    up.add_argument("--hosts", type=int, default=DEFAULT_HOSTS,
                    help="number of hosts (default: %(default)s)")
    up.add_argument("--inventory", help="where to write the pyinfra inventory")
    up.add_argument("--underlay", choices=("wire", "veth"), default="wire",
                    help="wire (default): the hosts' links cut datagrams in software and join them on receipt, as "
                         "real NICs do; veth: GSO buffers cross whole")
    sub.add_parser("down", help="remove everything up made (keeps the rootfs cache)")
    sub.add_parser("status", help="list hosts and whether sshd answers")
    ssh = sub.add_parser("ssh", help="run a command on a host: ssh node2 -- CMD")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    box = sub.add_parser("box", help="write a Vagrant box (libvirt provider) of the lab's VM image")
    box.add_argument("--output", default=boxmod.DEFAULT_OUTPUT, help="the .box file (default: %(default)s)")
    return parser.parse_args(argv)


def cmd_up(lab, args):
    started = time.monotonic()
    hosts = lab.up(hosts=args.hosts)
    for name, address in hosts:
        print(f"{name}\t{address}")
    print(f"lab {lab.name!r} up in {time.monotonic() - started:.1f}s; "
          f"inventory: {lab.inventory_path}")
    return 0


def cmd_down(lab, args):
    started = time.monotonic()
    lab.down()
    print(f"lab {lab.name!r} down in {time.monotonic() - started:.1f}s")
    return 0


def cmd_status(lab, args):
    rows = lab.status()
    if not rows:
        print(f"lab {lab.name!r}: no hosts")
        return 1
    for name, address, answers in rows:
        print(f"{name}\t{address}\tsshd {'answers' if answers else 'does not answer'}")
    return 0 if all(ok for _, _, ok in rows) else 1


def cmd_ssh(lab, args):
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("ssh: give a command after --, e.g. ssh node2 -- ip -br addr")
    return lab.run_attached(args.host, " ".join(cmd), sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)


def cmd_box(args):
    started = time.monotonic()
    output = boxmod.write(boxmod.ensure(), args.output)
    print(f"{output} written in {time.monotonic() - started:.1f}s; add it with:\n"
          f"  vagrant box add --name flannelette/{boxmod.rootfs.SUITE} {output}")
    return 0


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "ssh": cmd_ssh}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "box":
            return cmd_box(args)
        lab = Lab(name=args.name, network=args.network,
                  inventory_path=getattr(args, "inventory", None), underlay=getattr(args, "underlay", "wire"))
        return COMMANDS[args.command](lab, args)
    except (LabError, OSError) as err:  # OSError: a full disk, a vanished file
        print(f"lab: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
