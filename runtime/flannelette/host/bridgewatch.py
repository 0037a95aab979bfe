"""cni0 is shared with the container runtimes: netavark deletes it when its last
container stops, netavark and the CNI bridge plugin make it, Docker needs it to
exist. While the runtime runs, a thread puts cni0 back as the host needs it
(there, with the gateway, the MTU, up) whenever it changes or goes."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from flannelette.host.kernel import netlink

log = logging.getLogger("flannelette")

# How often the thread looks up from its socket to see whether it should stop.
POLL_SECONDS = 0.5


class BridgeWatch:
    def __init__(self, name: str, reconcile: Callable[[object], None]):
        self.name, self.reconcile = name, reconcile
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name=f"{name} watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()

    def _watch(self) -> None:
        # pyroute2's sockets belong to the thread that opened them: both are opened here.
        with netlink.link_events() as events, netlink.IPRoute() as ipr:
            self._reconcile(ipr)  # what changed before the socket listened
            while not self.stopping.is_set():
                if self.name in netlink.changed_links(events, POLL_SECONDS):
                    self._reconcile(ipr)

    def _reconcile(self, ipr) -> None:
        existed = netlink.link_index(ipr, self.name) is not None
        try:
            self.reconcile(ipr)
        except Exception as e:  # e.g. made by someone else between our look and our add
            log.warning("%s: changed under us; putting it back failed (%s), trying at its next change", self.name, e)
            return
        if not existed:
            log.info("%s: removed by someone else (a container runtime?); made it again", self.name)
