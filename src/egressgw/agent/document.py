"""The agent's ``/v1/statedb/nat-stats`` document, and reading it back in a client.

The body is ``egressgw nat-stats -o json``'s document (every row field: family, proto,
egressIP, remoteIP, remotePort, remoteAddr, count, rank; saturation per family; the
divisor and the limit it is) plus when the pass ran, so scripts read one format
whichever command they use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from egressgw.errors import AgentError, excerpt
from egressgw.limits import PortLimit
from egressgw.net import Family, Proto, parse_ip
from egressgw.stats import NatStats, NatStatsRow, stats_document

from .state import CountSnapshot


def nat_stats_document(
    counts: CountSnapshot | None, *, entries: int, limit: PortLimit
) -> dict[str, Any]:
    """The body of ``GET /v1/statedb/nat-stats``.

    Before the first pass (or with the interval 0) there are no rows and no timestamp.
    """
    empty = NatStats((), {}, limit.ports, limit)
    doc = stats_document(counts.stats if counts is not None else empty)
    doc["updatedAt"] = counts.taken_at if counts is not None else None
    doc["entries"] = entries
    return doc


def saturation_lines(doc: Mapping[str, Any]) -> str:
    """``saturation ipv4: 100.00% (64/64)`` per family and the limit, as nat-stats prints."""
    lines = []
    # Linux: the entries that block a port (TIME_WAIT/CLOSE can be taken over).
    top = doc.get("topBlocking") or doc.get("topCount") or {}
    for family, ratio in (doc.get("saturation") or {}).items():
        lines.append(f"saturation {family}: {float(ratio):.2%} "
                     f"({top.get(family, 0)}/{doc.get('divisor')})\n")
    limit = doc.get("limit")
    if isinstance(limit, Mapping):
        lines.append(f"limit: {limit.get('ports')} ports ({limit.get('datapath')}: "
                     f"{limit.get('source')})\n")
    return "".join(lines)


def row_from_document(doc: Mapping[str, Any], where: str) -> NatStatsRow:
    """Parse one row of the document; AgentError names the row and field on bad data."""
    field = "family"
    try:
        family = Family(_text(doc[field]))
        field = "proto"
        proto = Proto.parse(_text(doc[field]))
        field = "egressIP"
        egress_ip = parse_ip(_text(doc[field]))
        field = "remoteIP"
        remote_ip = parse_ip(_text(doc[field]))
        field = "remotePort"
        remote_port = _whole(doc[field], 0xFFFF)
        field = "count"
        count = _whole(doc[field], 1 << 32)
        field = "rank"
        rank = _whole(doc[field], 1 << 16)
    except (KeyError, TypeError, ValueError) as exc:
        reason = excerpt(str(exc), 80)
        raise AgentError(f"{where}: field {field!r} is missing or invalid ({reason})") from None
    return NatStatsRow(family, proto, egress_ip, remote_ip, remote_port, count, rank)


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"expected a short string, got {excerpt(value)}")
    return value


def _whole(value: object, maximum: int) -> int:
    """A JSON integer in 0..maximum (not a float, a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"expected a whole number in 0..{maximum}, got {excerpt(value)}")
    return value


def rows_from_document(doc: object, source: str) -> list[NatStatsRow]:
    """The rows of a nat-stats document fetched from ``source`` (a URL)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("rows"), list):
        raise AgentError(f"{source}: expected a JSON object with a 'rows' list")
    return [
        row_from_document(row if isinstance(row, Mapping) else {}, f"{source}: rows[{i}]")
        for i, row in enumerate(doc["rows"])
    ]
