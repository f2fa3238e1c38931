"""The agent's HTTP API: /metrics, /v1/statedb/nat-stats and /healthz.

The endpoints only read the published state, so each request is cheap and needs no
framework: the standard library's request handler answers, on a bounded server core
(``httpcore``: backlog, head timeout, worker pool, connection cap). It listens on
127.0.0.1 by default and warns when told to listen beyond loopback; the API is
read-only but still says which remote endpoints a node talks to.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from egressgw.errors import ConfigError, excerpt
from egressgw.limits import PortLimit
from egressgw.net import parse_ip

from .document import nat_stats_document
from .endpoints import DEFAULT_PORT, HEALTH_PATH, METRICS_PATH, NAT_STATS_PATH
from .httpcore import BACKLOG, WORKERS, BoundedHTTPServer
from .state import AgentState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """``--listen``: ``IP:PORT`` or ``[IPv6]:PORT`` (port 0 picks a free port).

    The host must be an IP address written out (``127.0.0.1``, ``::1``, ``0.0.0.0``):
    a name or a shorthand such as ``0`` or ``0x0`` would be resolved by getaddrinfo to
    every address of the machine without saying so.
    """

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        expected = (
            f"{excerpt(text)}: expected IP:PORT such as 127.0.0.1:{DEFAULT_PORT} or "
            f"[::1]:{DEFAULT_PORT}"
        )
        host, sep, port = text[:80].rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        if bracketed:
            host = host[1:-1]
        elif ":" in host:
            sep = ""  # an unbracketed IPv6 address: the port is ambiguous
        if (len(text) > 80 or not sep or not host or not port.isascii() or not port.isdigit()
                or len(port) > 5 or int(port) > 0xFFFF):
            raise ConfigError(expected, field="--listen")
        try:
            ip = parse_ip(host)
        except ValueError:
            raise ConfigError(expected, field="--listen") from None
        if ip.version == 6 and not bracketed:
            raise ConfigError(expected, field="--listen")
        return cls(str(ip), int(port))

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def is_loopback(self) -> bool:
        try:
            return parse_ip(self.host).is_loopback
        except ValueError:
            return False

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url().removeprefix("http://")


class _SocketWriter(io.BufferedIOBase):
    """``wfile`` over a connected socket: every write is sent whole (with its timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose head the server core has already read."""

    server: Any
    server_version = "egressgw-agent"

    def __init__(self, sock: socket.socket, address: tuple[str, int], head: bytes,
                 api: AgentAPI) -> None:
        self._head = head
        self.api = api
        super().__init__(sock, address, None)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = _SocketWriter(self.request)

    def finish(self) -> None:
        pass

    def do_GET(self) -> None:
        api = self.api
        path = self.path.split("?", 1)[0]
        if path == METRICS_PATH:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encoder(api.registry), content_type)
        elif path == NAT_STATS_PATH:
            self._send_json(HTTPStatus.OK, nat_stats_document(
                api.state.counts, entries=api.entries, limit=api.limit))
        elif path == HEALTH_PATH:
            status, body = api.health()
            self._send_json(status, body)
        else:
            self._send_json(HTTPStatus.NOT_FOUND,
                            {"error": f"no such endpoint {excerpt(path, 80)}"})

    def _send_json(self, status: HTTPStatus, body: Any) -> None:
        data = (json.dumps(body, indent=2) + "\n").encode()
        self._send(status, data, "application/json")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], excerpt(format % args, 200))


@dataclass(frozen=True, slots=True)
class AgentAPI:
    """What the HTTP endpoints read."""

    state: AgentState
    registry: CollectorRegistry
    entries: int
    limit: PortLimit

    def health(self) -> tuple[HTTPStatus, dict[str, Any]]:
        """Healthy once a reconcile has succeeded: the node enforces some policy version.

        A later rejected edit does not make it unhealthy (the previous rules still work);
        it shows as ``failing`` and in the reconcile metrics.
        """
        status = self.state.reconcile
        body = {
            "status": "ok" if status.last_success is not None else "not ready",
            "last_reconcile_success": status.last_success,
            "reconcile_failing": status.failing,
            "last_error": status.last_error,
            "rules": {kind.value: n for kind, n in status.rules.items()},
        }
        ok = status.last_success is not None
        return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), body


class AgentHTTPServer:
    """The HTTP API, served by a bounded core (see :mod:`egressgw.agent.httpcore`)."""

    def __init__(self, listen: ListenAddress, api: AgentAPI, *,
                 max_open: int | None = None, workers: int = WORKERS) -> None:
        try:
            sock = socket.socket(listen.family, socket.SOCK_STREAM)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}",
                              field="--listen") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listen.host, listen.port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}",
                              field="--listen") from exc
        self._listen = listen
        self._sock = sock

        def handle(conn: socket.socket, address: tuple[str, int], head: bytes) -> None:
            _Handler(conn, address, head, api)

        self._core = BoundedHTTPServer(sock, handle, max_open=max_open, workers=workers)

    @property
    def address(self) -> ListenAddress:
        """Where it listens (with the real port when started with port 0)."""
        host, port = self._sock.getsockname()[:2]
        assert isinstance(host, str) and isinstance(port, int)
        return ListenAddress(host, port)

    @property
    def max_open(self) -> int:
        return self._core.max_open

    def start(self) -> None:
        if not self._listen.is_loopback:
            log.warning(
                "listening on %s, beyond loopback: any host that can reach it may read "
                "which remote endpoints this node talks to (use 127.0.0.1 or ::1 unless "
                "Prometheus scrapes from elsewhere)", self.address.url())
        self._core.start()
        log.info("serving /metrics, %s and /healthz on %s (at most %d connections)",
                 NAT_STATS_PATH, self.address.url(), self._core.max_open)

    def stop(self) -> None:
        self._core.stop()
