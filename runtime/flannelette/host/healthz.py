"""The --healthz endpoint: /healthz, /readyz and /metrics over plain HTTP, in a thread."""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from typing import Tuple

from flannelette.host import metrics

log = logging.getLogger(__name__)
DEFAULT_PORT = 8286
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"


def parse_address(text: str) -> Tuple[str, int]:
    """ADDR:PORT as a (host, port) pair; ValueError with a readable message otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:{DEFAULT_PORT} or 0.0.0.0:{DEFAULT_PORT})")
    return host.strip("[]") or "0.0.0.0", int(port)


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 501: "Not Implemented", 503: "Service Unavailable"}
MAX_LINE = 8192  # a request or header line longer than this is a bad request
MAX_HEADERS = 100


class Handler(socketserver.StreamRequestHandler):
    """One GET, one answer, then the connection closes: HTTP/1.0, all that probes and scrapers need.

    http.server would do the same and import email, ssl and http.client with
    it: some 4 MB and 30 ms of every start for three fixed pages.
    """

    state = None  # set on a subclass per server
    timeout = 10  # seconds a client has to send its request

    def handle(self) -> None:
        try:
            request = self.rfile.readline(MAX_LINE + 1)
            headers_ok = self._skip_headers()
        except OSError:
            return
        words = request.decode("latin-1").split()
        if len(request) > MAX_LINE or not headers_ok or len(words) != 3 or not words[2].startswith("HTTP/"):
            code, body, content_type = 400, "bad request\n", CONTENT_TYPE_TEXT
        elif words[0] != "GET":
            code, body, content_type = 501, f"unsupported method {words[0]!r}: only GET\n", CONTENT_TYPE_TEXT
        else:
            code, body, content_type = self.answer(words[1].split("?")[0])
        log.debug("healthz: %s %r %d", self.client_address[0], request.decode("latin-1").strip(), code)
        self._reply(code, body, content_type)

    def answer(self, path: str) -> Tuple[int, str, str]:
        if path == "/healthz":
            return 200, "flannelette is running\n", CONTENT_TYPE_TEXT
        if path == "/readyz":
            # Ready as flannel's readiness means it: this host's subnet is set up
            # (devices, rules, subnet.env) and the data path is running.
            ready = self.state.ready and self.state.datapath is not None and self.state.datapath.alive()
            return (200, "ready\n", CONTENT_TYPE_TEXT) if ready else (503, "not ready\n", CONTENT_TYPE_TEXT)
        if path == "/metrics":
            return 200, metrics.render(self.state), CONTENT_TYPE_METRICS
        return 404, "not found: try /healthz, /readyz or /metrics\n", CONTENT_TYPE_TEXT

    def _skip_headers(self) -> bool:
        """Read the request's headers, which no page depends on; False when there are too many or one is too long."""
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                return False
            if line in (b"\r\n", b"\n", b""):
                return True
        return False

    def _reply(self, code: int, body: str, content_type: str) -> None:
        data = body.encode()
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        head = (f"HTTP/1.0 {code} {REASONS[code]}\r\nServer: flannelette\r\nDate: {date}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        try:
            self.wfile.write(head.encode("latin-1") + data)
        except OSError:
            pass  # the client went away


# How often serve_forever looks for a shutdown: a stop waits up to this long (the default, 0.5 s, would add
# half a second to every restart's gap in the overlay).
SHUTDOWN_POLL = 0.05


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restart binds again at once, as http.server's did
    daemon_threads = True


class HealthServer:
    def __init__(self, address: Tuple[str, int], state):
        handler = type("BoundHandler", (Handler,), {"state": state})
        self.server = _Server(address, handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(SHUTDOWN_POLL,), name="healthz",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
