"""A client of the agent's HTTP API (what ``egressgw statedb`` uses)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from egressgw.errors import AgentError
from egressgw.stats import NatStatsRow

from .document import rows_from_document
from .endpoints import DEFAULT_SERVER, NAT_STATS_PATH


def fetch_json(url: str, *, timeout: float = 5.0) -> Any:
    """GET ``url`` and decode its JSON; AgentError names the URL on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise AgentError(f"{url}: the agent answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AgentError(
            f"cannot reach the egressgw agent at {url}: {reason} "
            "(is `egressgw agent` running? use --server to point elsewhere)"
        ) from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise AgentError(f"{url}: the answer is not JSON ({exc})") from exc


def nat_stats_url(server: str) -> str:
    return server.rstrip("/") + NAT_STATS_PATH


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
