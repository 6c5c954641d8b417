"""Small HTTP endpoints shared by the bus and the agent: Prometheus /metrics, /healthz, /ready.

`serve_http` runs a threading HTTP server in a daemon thread with a fixed route table; each
route is a function returning (status, content type, body). The host may be an IPv4 or IPv6
address; "::" listens on both families. Only GET; anything else is 405,
an unknown path 404. Request logging goes to DEBUG so that scrapes never flood the log.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
Route = Callable[[], Response]


def metrics_route(registry: CollectorRegistry) -> Route:
    """A route serving registry in the Prometheus text format."""
    return lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry))


def text(status: int, body: str) -> Response:
    """A plain-text response."""
    return status, "text/plain; charset=utf-8", body.encode()


class HttpEndpoint:
    """A running HTTP server; `port` is the bound port (useful when asked for port 0)."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route], name: str) -> None:
        table = dict(routes)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = table.get(self.path.split("?", 1)[0])
                status, ctype, body = route() if route else text(404, "not found\n")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", name, format % args)

        self._server = _server_for(host)((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _DualStackServer(ThreadingHTTPServer):
    """An IPv6 listener; bound to "::" it takes IPv4 too (as ::ffff:a.b.c.d)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # Linux defaults to dual-stack, but net.ipv6.bindv6only=1 would silently drop IPv4.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _server_for(host: str) -> type[ThreadingHTTPServer]:
    """ThreadingHTTPServer is IPv4 only: an IPv6 literal host needs an AF_INET6 socket."""
    return _DualStackServer if ":" in host else ThreadingHTTPServer


def serve_http(host: str, port: int, routes: Mapping[str, Route], name: str) -> HttpEndpoint:
    """Start an HTTP endpoint with the given routes."""
    return HttpEndpoint(host, port, routes, name)
