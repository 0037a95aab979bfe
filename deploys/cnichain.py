#!/usr/bin/env python3
"""Attach a network namespace to a CNI network the way a container runtime does.

    python3 cnichain.py add NETNS [CONFLIST]   # prints the CNI result (JSON)
    python3 cnichain.py del NETNS [CONFLIST]

Runs the plugins of the network configuration list in order for ADD (each
given the previous plugin's result) and in reverse for DEL, with the CNI_*
environment the CNI spec defines; the container ID is the namespace's name.
Standard library only: it is copied to hosts and run with their python3.
"""

import json
import os
import subprocess
import sys

CNI_PATH = "/usr/lib/cni:/opt/cni/bin"
DEFAULT_CONFLIST = "/etc/cni/net.d/10-flannelette.conflist"


def plugin_binary(kind):
    for directory in CNI_PATH.split(":"):
        path = os.path.join(directory, kind)
        if os.access(path, os.X_OK):
            return path
    raise SystemExit(f"CNI plugin {kind!r} not found in {CNI_PATH}")


def run_chain(command, netns, conflist):
    plugins = conflist["plugins"] if command == "ADD" else conflist["plugins"][::-1]
    env = dict(
        os.environ,
        CNI_COMMAND=command,
        CNI_CONTAINERID=netns,
        CNI_NETNS=f"/run/netns/{netns}",
        CNI_IFNAME="eth0",
        CNI_PATH=CNI_PATH,
    )
    result = None
    for plugin in plugins:
        conf = dict(plugin, cniVersion=conflist["cniVersion"], name=conflist["name"])
        if result is not None:
            conf["prevResult"] = result
        proc = subprocess.run(
            [plugin_binary(plugin["type"])], input=json.dumps(conf), env=env,
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{plugin['type']} {command} failed: {proc.stdout.strip()} {proc.stderr.strip()}")
        if command == "ADD":
            result = json.loads(proc.stdout)
    return result


def main(argv):
    if len(argv) not in (2, 3) or argv[0] not in ("add", "del"):
        raise SystemExit(__doc__)
    with open(argv[2] if len(argv) == 3 else DEFAULT_CONFLIST) as f:
        conflist = json.load(f)
    result = run_chain(argv[0].upper(), argv[1], conflist)
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
