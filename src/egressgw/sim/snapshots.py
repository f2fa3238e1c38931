"""Timed nat-stats snapshots read from files, the input of ``egressgw forecast``.

A snapshot is a count per tuple at a time. Files may be:

- the nat-stats table as ``cilium-dbg statedb nat-stats`` prints it (``# IPFamily ...``);
- JSON from ``egressgw nat-stats -o json`` or the agent's ``/v1/statedb/nat-stats``
  (an object with ``rows``, or a list of rows; ``updatedAt`` gives the time);
- a NAT table dump (``cilium-dbg bpf nat list``, ``conntrack -L``), counted here.

The time comes from ``FILE@TIME`` or, for JSON with ``updatedAt``, from the document.
TIME is seconds (e.g. Unix time) or an ISO 8601 timestamp.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from egressgw.dumps import count_endpoints
from egressgw.dumps.takeover import takeover_counts
from egressgw.errors import InputError, excerpt
from egressgw.limits import PortLimit, dump_datapath, limit_from_document
from egressgw.net import Endpoint, Family, NatEndpoint, Proto, parse_ip

TABLE_HEADER = "# IPFamily"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counts per tuple at ``time`` (seconds)."""

    source: str
    time: float
    counts: Mapping[NatEndpoint, int]
    # Who made the counts, when the file says: a dump's format, or a document's limit.
    datapath: str | None = None
    limit: PortLimit | None = None


# Snapshot times: seconds (Unix time or relative) up to the end of year 9999, the last
# moment datetime can print; beyond it a fit's squares overflow and dates cannot be shown.
MAX_TIME = 253402300799.0
MAX_TIME_CHARS = 40


def parse_time(text: str, *, source: str) -> float:
    """Seconds, or an ISO 8601 timestamp (naive ones are taken as UTC), within +-MAX_TIME."""
    expected = f"{excerpt(text)}: expected seconds or an ISO 8601 time such as 2024-05-01T12:00:00Z"
    if len(text) > MAX_TIME_CHARS:
        raise InputError(expected, source=source)
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(expected, source=source) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            value = moment.timestamp()
        except (OverflowError, ValueError):
            raise InputError(expected, source=source) from None
    if not (math.isfinite(value) and -MAX_TIME <= value <= MAX_TIME):
        raise InputError(
            f"{excerpt(text)}: a time must lie within {MAX_TIME:.0f} s of 0 (year 9999)",
            source=source,
        )
    return value


def split_spec(spec: str) -> tuple[str, str | None]:
    """``FILE@TIME`` -> (FILE, TIME); a plain FILE -> (FILE, None)."""
    path, sep, when = spec.rpartition("@")
    if sep and path:
        return path, when
    return spec, None


def parse_table(text: str, *, source: str) -> dict[NatEndpoint, int]:
    """Rows of the cilium-dbg nat-stats table."""
    counts: dict[NatEndpoint, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split()
        if len(cells) != 5:
            raise InputError(
                "expected 5 columns: IPFamily Proto EgressIP RemoteAddr Count",
                source=source, line=number,
            )
        try:
            family = Family(cells[0])
            proto = Proto.parse(cells[1])
            egress = parse_ip(cells[2])
            remote = Endpoint.parse(cells[3])
            count = _count(cells[4])
        except ValueError as exc:
            raise InputError(f"bad row: {excerpt(str(exc), 80)}", source=source,
                             line=number) from None
        key = NatEndpoint(family, proto, egress, remote.ip, remote.port)
        counts[key] = counts.get(key, 0) + count
    return counts


def _field(doc: Mapping[str, Any], camel: str, snake: str, default: object = None) -> Any:
    """A row field as egressgw writes it (camelCase), or in snake_case."""
    if camel in doc:
        return doc[camel]
    if snake in doc or default is None:
        return doc[snake]
    return default


def _row(doc: object, where: str, source: str) -> tuple[NatEndpoint, int]:
    if not isinstance(doc, Mapping):
        raise InputError("must be an object", source=source, field=where)
    try:
        egress = parse_ip(_field(doc, "egressIP", "egress_ip"))
        family = Family(_short(doc.get("family", Family.of(egress).value)))
        key = NatEndpoint(
            family,
            Proto.parse(_short(doc["proto"])),
            egress,
            parse_ip(_field(doc, "remoteIP", "remote_ip")),
            _whole(_field(doc, "remotePort", "remote_port", 0), 0xFFFF),
        )
        # Linux rows say which entries block a port (TIME_WAIT/CLOSE do not): the count
        # that runs out is that one (egressgw.limits).
        return key, _whole(doc["blocking"] if "blocking" in doc else doc["count"], MAX_COUNT)
    except KeyError as exc:
        raise InputError(f"missing field {excerpt(exc.args[0])}", source=source,
                         field=where) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad value: {excerpt(str(exc), 80)}", source=source,
                         field=where) from None


# A tuple's count cannot exceed the NAT map (Cilium's --bpf-nat-global-max is at most 2^24).
MAX_COUNT = 1 << 32


def _short(value: object) -> str:
    if not isinstance(value, str) or len(value) > 16:
        raise ValueError(f"expected a short name, got {excerpt(value)}")
    return value


def _whole(value: object, maximum: int) -> int:
    """A JSON integer in 0..maximum: not a float, a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"expected a whole number in 0..{maximum}, got {excerpt(value)}")
    return value


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise ValueError(f"count {excerpt(text)}: expected a whole number")
    count = int(text)
    if count > MAX_COUNT:
        raise ValueError(f"count {count}: at most {MAX_COUNT}")
    return count


def parse_json(doc: Any, *, source: str) -> tuple[dict[NatEndpoint, int], float | None]:
    """Rows and the ``updatedAt`` time (if any) of a nat-stats JSON document."""
    rows = doc.get("rows") if isinstance(doc, Mapping) else doc
    if not isinstance(rows, list):
        raise InputError("expected a nat-stats document with 'rows'", source=source)
    counts: dict[NatEndpoint, int] = {}
    for i, item in enumerate(rows):
        key, count = _row(item, f"rows[{i}]", source)
        counts[key] = counts.get(key, 0) + count
    when = None
    if isinstance(doc, Mapping):
        when = doc.get("updatedAt", doc.get("updated_at"))
    if when is None:
        return counts, None
    if isinstance(when, bool) or not isinstance(when, int | float | str):
        raise InputError(f"updatedAt: expected a time, got {excerpt(when)}", source=source)
    return counts, parse_time(str(when), source=source)


def _count_dump(data: bytes, source: str) -> tuple[dict[NatEndpoint, int], str]:
    """Connections per tuple; for a conntrack dump only those that block a port (the
    kernel takes TIME_WAIT/CLOSE ports over), as nat-stats' saturation counts them."""
    dump = count_endpoints(data, source=source)
    counts = dict(dump.counts)
    if dump.format == "conntrack":
        reusable = takeover_counts(data, source=source)
        counts = {ep: n - reusable.get(ep, 0) for ep, n in counts.items()
                  if n > reusable.get(ep, 0)}
    return counts, dump_datapath(dump.format)


def load_snapshot(spec: str, *, at: str | None = None) -> Snapshot:
    """Read one snapshot from ``FILE`` or ``FILE@TIME`` (``at`` overrides the time)."""
    path_text, when = split_spec(spec)
    when = at if at is not None else when
    try:
        data = Path(path_text).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", source=path_text) from None
    text = data.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    doc_time: float | None = None
    datapath: str | None = None
    limit: PortLimit | None = None
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc.msg}", source=path_text,
                             line=exc.lineno) from None
        except RecursionError:
            raise InputError("not valid JSON: nested too deep", source=path_text) from None
        counts, doc_time = parse_json(doc, source=path_text)
        limit = limit_from_document(doc)
    elif stripped.startswith(TABLE_HEADER):
        counts = parse_table(text, source=path_text)
    else:
        counts, datapath = _count_dump(data, path_text)
    if when is not None:
        time = parse_time(when, source=path_text)
    elif doc_time is not None:
        time = doc_time
    else:
        raise InputError(
            "no time for this snapshot: write FILE@TIME (seconds or ISO 8601) or use --at",
            source=path_text,
        )
    return Snapshot(path_text, time, counts, datapath, limit)


def load_snapshots(specs: Sequence[str], at: Sequence[str] = ()) -> list[Snapshot]:
    """Read snapshots, sorted by time; ``at`` (if given) holds one time per file."""
    if at and len(at) != len(specs):
        raise InputError(f"--at given {len(at)} times for {len(specs)} snapshots",
                         field="--at")
    snapshots = [
        load_snapshot(spec, at=at[i] if at else None) for i, spec in enumerate(specs)
    ]
    return sorted(snapshots, key=lambda s: s.time)


def poll_snapshots(
    fetch: Callable[[], Any],
    *,
    samples: int,
    every: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    source: str,
) -> list[Snapshot]:
    """Take ``samples`` distinct snapshots from ``fetch`` (a nat-stats JSON document).

    The document's ``updatedAt`` is its time (the clock's when it has none). The agent
    recounts every --nat-map-stats-interval, so a poll that returns the same pass again
    is not counted twice; polling gives up after 3 x ``samples`` tries.
    """
    taken: list[Snapshot] = []
    for attempt in range(3 * samples):
        if attempt:
            sleep(every)
        doc = fetch()
        counts, when = parse_json(doc, source=source)
        time = clock() if when is None else when
        if taken and time <= taken[-1].time:
            continue
        taken.append(Snapshot(source, time, counts, limit=limit_from_document(doc)))
        if len(taken) == samples:
            break
    return taken
