"""The --healthz endpoint: /healthz, /readyz and /metrics over plain HTTP, in a thread."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Tuple

from flannelette.host import metrics

log = logging.getLogger(__name__)
DEFAULT_PORT = 8286
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


def parse_address(text: str) -> Tuple[str, int]:
    """ADDR:PORT as a (host, port) pair; ValueError with a readable message otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:{DEFAULT_PORT} or 0.0.0.0:{DEFAULT_PORT})")
    return host.strip("[]") or "0.0.0.0", int(port)


class Handler(BaseHTTPRequestHandler):
    state = None  # set on a subclass per server

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/healthz":
            self._reply(200, "flannelette is running\n")
        elif path == "/readyz":
            # Ready as flannel's readiness means it: this host's subnet is set up
            # (devices, rules, subnet.env) and the data path is running.
            ready = self.state.ready and self.state.datapath is not None and self.state.datapath.alive()
            self._reply(200 if ready else 503, "ready\n" if ready else "not ready\n")
        elif path == "/metrics":
            self._reply(200, metrics.render(self.state), CONTENT_TYPE_METRICS)
        else:
            self._reply(404, "not found: try /healthz, /readyz or /metrics\n")

    def _reply(self, code: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args) -> None:
        log.debug("healthz: " + fmt, *args)


# How often serve_forever looks for a shutdown: a stop waits up to this long (the default, 0.5 s, would add
# half a second to every restart's gap in the overlay).
SHUTDOWN_POLL = 0.05


class HealthServer:
    def __init__(self, address: Tuple[str, int], state):
        handler = type("BoundHandler", (Handler,), {"state": state})
        self.server = ThreadingHTTPServer(address, handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(SHUTDOWN_POLL,), name="healthz",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
