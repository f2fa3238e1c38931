"""The agent's HTTP API: /metrics, /v1/statedb/nat-stats and /healthz.

A plain stdlib threading HTTP server: the endpoints only read the published state, so
each request is cheap and needs no framework. It listens on 127.0.0.1 by default; the
API is read-only but still says which remote endpoints a node talks to.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from egressgw.errors import ConfigError
from egressgw.limits import PortLimit

from .document import nat_stats_document
from .endpoints import DEFAULT_PORT, HEALTH_PATH, METRICS_PATH, NAT_STATS_PATH
from .state import AgentState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """``--listen``: ``HOST:PORT``, ``[IPv6]:PORT`` (port 0 picks a free port)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            sep = ""  # an unbracketed IPv6 address: the port is ambiguous
        if not sep or not host or not port.isdigit() or int(port) > 0xFFFF:
            raise ConfigError(
                f"{text!r}: expected HOST:PORT such as 127.0.0.1:{DEFAULT_PORT} or "
                f"[::1]:{DEFAULT_PORT}",
                field="--listen",
            )
        return cls(host, int(port))

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url().removeprefix("http://")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: ListenAddress, api: AgentAPI) -> None:
        self.address_family = listen.family
        self.api = api
        super().__init__((listen.host, listen.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's FQDN, which can stall the start
        # for the resolver's timeout in a network namespace without one. Nothing here
        # uses the name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "egressgw-agent"

    def do_GET(self) -> None:
        api = self.server.api
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
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path}"})

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
        log.debug("%s %s", self.address_string(), format % args)


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
    """The HTTP API served from a background thread."""

    def __init__(self, listen: ListenAddress, api: AgentAPI) -> None:
        try:
            self._server = _Server(listen, api)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}",
                              field="--listen") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="egressgw-http", daemon=True
        )

    @property
    def address(self) -> ListenAddress:
        """Where it listens (with the real port when started with port 0)."""
        host, port = self._server.server_address[:2]
        assert isinstance(host, str) and isinstance(port, int)
        return ListenAddress(host, port)

    def start(self) -> None:
        self._thread.start()
        log.info("serving /metrics, %s and /healthz on %s", NAT_STATS_PATH, self.address.url())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
