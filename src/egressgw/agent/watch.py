"""``statedb nat-stats -w``: keep printing the rows that changed, like cilium-dbg's watch.

cilium-dbg asks StateDB for the objects changed since the last revision it saw and prints
them under a header, repeating the header every 100 lines. The agent's API has no
revisions, so the watcher diffs consecutive fetches instead: a row is printed when its
tuple is new or its count moved (a rank shifting alone changes nothing on screen).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

from egressgw.net import Family, IPAddress, Proto
from egressgw.stats import NatStatsRow, render_table

# As cilium-dbg: the number of lines after which the header is printed again.
REPRINT_HEADER_EVERY = 100

RowKey = tuple[Family, Proto, IPAddress, IPAddress, int]


def row_key(row: NatStatsRow) -> RowKey:
    return (row.family, row.proto, row.egress_ip, row.remote_ip, row.remote_port)


class RowDiff:
    """Remembers the last rows seen and tells which of the next ones changed."""

    def __init__(self) -> None:
        self._seen: dict[RowKey, int] = {}

    def changed(self, rows: Iterable[NatStatsRow]) -> list[NatStatsRow]:
        out = []
        for row in rows:
            key = row_key(row)
            if self._seen.get(key) != row.count:
                out.append(row)
                self._seen[key] = row.count
        return out


def watch(
    fetch: Callable[[], Sequence[NatStatsRow]],
    out: TextIO,
    *,
    interval: float,
    sleep: Callable[[float], object],
    rounds: int | None = None,
) -> None:
    """Print the table, then every ``interval`` the rows that changed (``rounds`` limits)."""
    diff = RowDiff()
    lines_since_header: int | None = None
    done = 0
    while rounds is None or done < rounds:
        if done:
            sleep(interval)
        rows = diff.changed(fetch())
        done += 1
        if not rows and lines_since_header is not None:
            continue
        text = render_table(rows)
        _header, _, body = text.partition("\n")
        if lines_since_header is None or lines_since_header > REPRINT_HEADER_EVERY:
            out.write(text)
            lines_since_header = 0
        else:
            out.write(body)
        lines_since_header += len(rows)
        out.flush()
