"""A client of the agent's HTTP API (what ``egressgw statedb`` uses)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from egressgw.errors import AgentError, ConfigError, excerpt
from egressgw.stats import NatStatsRow

from .document import rows_from_document
from .endpoints import DEFAULT_SERVER, NAT_STATS_PATH

# The largest answer read from the agent: its nat-stats document holds at most 2 x 4096
# rows of about 250 bytes, /metrics is smaller. A larger answer is not the agent's.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_URL_CHARS = 2048


def check_server(server: str, *, flag: str = "--server") -> str:
    """``--server``: an ``http://HOST:PORT`` URL (IPv6 in brackets), checked before use."""
    if not isinstance(server, str) or len(server) > MAX_URL_CHARS or not server.isprintable():
        raise ConfigError(f"{excerpt(server)}: not a URL", field=flag)
    try:
        parts = urllib.parse.urlsplit(server)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"{excerpt(server)}: not a URL ({exc})", field=flag) from None
    if parts.scheme != "http" or not host:
        raise ConfigError(
            f"{excerpt(server)}: expected http://HOST:PORT such as {DEFAULT_SERVER}", field=flag
        )
    if port == 0:
        raise ConfigError(f"{excerpt(server)}: port 0 cannot be connected to", field=flag)
    return server


def fetch_json(url: str, *, timeout: float = 5.0) -> Any:
    """GET ``url`` and decode its JSON; AgentError names the URL on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
        if len(body) > MAX_RESPONSE_BYTES:
            raise AgentError(f"{url}: the answer is larger than {MAX_RESPONSE_BYTES} bytes")
    except urllib.error.HTTPError as exc:
        raise AgentError(f"{url}: the agent answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AgentError(
            f"cannot reach the egressgw agent at {url}: {reason} "
            "(is `egressgw agent` running? use --server to point elsewhere)"
        ) from exc
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise AgentError(f"{url}: the answer is not JSON ({excerpt(str(exc), 80)})") from None


def nat_stats_url(server: str) -> str:
    return check_server(server).rstrip("/") + NAT_STATS_PATH


def fetch_nat_stats(server: str = DEFAULT_SERVER, *, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's nat-stats document (see :func:`egressgw.agent.document`)."""
    url = nat_stats_url(server)
    doc = fetch_json(url, timeout=timeout)
    rows_from_document(doc, url)  # validate before anyone relies on it
    assert isinstance(doc, dict)
    return doc


def fetch_nat_stats_rows(server: str = DEFAULT_SERVER, *, timeout: float = 5.0
                         ) -> list[NatStatsRow]:
    """The agent's current nat-stats rows."""
    url = nat_stats_url(server)
    return rows_from_document(fetch_json(url, timeout=timeout), url)
