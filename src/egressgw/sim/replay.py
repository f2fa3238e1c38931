"""Replay recorded flows from CSV.

Columns: ``start,duration,source,destination,port,protocol`` and optionally ``end``
(fin, rst or idle; default fin), ``egress_ip`` and ``sport``. ``start`` and ``duration``
are seconds (``duration`` may be empty or ``inf`` for a connection held open). A header
line naming the columns is optional; with one, columns may come in any order. Errors
name the file and line: ``flows.csv:12: port: 'http' is not a port number``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from egressgw.config import MAX_DURATION
from egressgw.datapath.model.config import TCP_SYN_RETRIES, TCP_SYN_RTO
from egressgw.errors import InputError, excerpt
from egressgw.inputfiles import read_text
from egressgw.net import IPAddress, Proto, parse_ip
from egressgw.sim.distributions import EndKind
from egressgw.sim.flows import AddressBook, Flows
from egressgw.sim.routing import NOT_MASQUERADED, Routes
from egressgw.sim.workload import EPHEMERAL_MIN

REQUIRED = ("start", "duration", "source", "destination", "port", "protocol")
# Largest flows file: about 4 million flows at 60 bytes a line; their rows take about
# 30 times the text in memory while being read (docs/reliability.md).
MAX_CSV_BYTES = 256 * 1024 * 1024
MAX_CELL_CHARS = 64
OPTIONAL = ("end", "egress_ip", "sport")


def _columns(first: Sequence[str], source: str) -> tuple[dict[str, int], bool]:
    """Column positions, and whether the first row is a header."""
    names = [cell.strip().lower() for cell in first]
    if "start" not in names:
        return {name: i for i, name in enumerate(REQUIRED + OPTIONAL)}, False
    for name in names:
        if name not in REQUIRED + OPTIONAL:
            raise InputError(f"unknown column {excerpt(name)}", source=source, line=1)
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", source=source, line=1)
    return {name: names.index(name) for name in names}, True


class ReplayFlows:
    """Recorded flows, all read up front and then served window by window."""

    def __init__(
        self,
        text: str,
        *,
        source: str,
        routes: Routes,
        book: AddressBook,
        egress_ips: Sequence[IPAddress] = (),
    ) -> None:
        try:
            rows = list(csv.reader(io.StringIO(text)))
        except csv.Error as exc:
            raise InputError(f"not valid CSV: {excerpt(str(exc), 80)}", source=source) from None
        self.unrouted = 0
        if not rows:
            raise InputError("no flows", source=source)
        columns, header = _columns(rows[0], source)
        records: list[tuple[float, float, int, int, int, int, int, int, int]] = []
        sport_next: dict[int, int] = {}
        for number, row in enumerate(rows, start=1):
            if (header and number == 1) or not row or row[0].lstrip().startswith("#"):
                continue
            record = self._parse_row(row, columns, source, number, routes=routes, book=book,
                                     egress_ips=egress_ips, sport_next=sport_next)
            if record is None:
                self.unrouted += 1
            else:
                records.append(record)
        data = np.array(records, dtype=np.float64).reshape(-1, 9)
        order = np.argsort(data[:, 0], kind="stable")
        data = data[order]
        n = len(data)
        self.flows = Flows(
            start=data[:, 0].copy(),
            duration=data[:, 1].copy(),
            end=data[:, 2].astype(np.uint8),
            src=data[:, 3].astype(np.uint32),
            sport=data[:, 4].astype(np.uint16),
            dst=data[:, 5].astype(np.uint32),
            dport=data[:, 6].astype(np.uint16),
            proto=data[:, 7].astype(np.uint8),
            egress=data[:, 8].astype(np.uint32),
            keepalive=np.zeros(n, dtype=np.float32),
            # A recorded TCP client retransmits its SYN as Linux does; UDP is not retried.
            retries=np.where(data[:, 7] == 6, TCP_SYN_RETRIES, 0).astype(np.uint8),
            rto=np.full(n, TCP_SYN_RTO, dtype=np.float32),
        )

    @classmethod
    def from_file(cls, path: Path, *, routes: Routes, book: AddressBook,
                  egress_ips: Sequence[IPAddress] = ()) -> ReplayFlows:
        text = read_text(path, limit=MAX_CSV_BYTES, expected="a CSV file")
        return cls(text, source=str(path), routes=routes, book=book, egress_ips=egress_ips)

    @staticmethod
    def _parse_row(
        row: Sequence[str], columns: dict[str, int], source: str, line: int, *,
        routes: Routes, book: AddressBook, egress_ips: Sequence[IPAddress],
        sport_next: dict[int, int],
    ) -> tuple[float, float, int, int, int, int, int, int, int] | None:
        def cell(name: str) -> str | None:
            i = columns.get(name)
            if i is None or i >= len(row):
                return None
            if len(row[i]) > MAX_CELL_CHARS:
                raise fail(name, f"{excerpt(row[i])}: longer than {MAX_CELL_CHARS} characters")
            return row[i].strip()

        def fail(name: str, message: str) -> InputError:
            return InputError(f"{name}: {message}", source=source, line=line)

        if len(row) < len(REQUIRED):
            raise InputError(f"expected at least {len(REQUIRED)} columns ({','.join(REQUIRED)})"
                             f", got {len(row)}", source=source, line=line)
        try:
            start = float(cell("start") or "")
        except ValueError:
            raise fail("start", f"{excerpt(cell('start'))} is not a number of seconds") from None
        if not math.isfinite(start) or start < 0 or start > MAX_DURATION:
            raise fail("start", f"must be 0..{MAX_DURATION:.0f} seconds")
        text = cell("duration") or "inf"
        try:
            duration = float(text)
        except ValueError:
            raise fail("duration", f"{excerpt(text)} is not a number of seconds") from None
        if duration < 0 or math.isnan(duration):
            raise fail("duration", "must not be negative")
        addresses = []
        for name in ("source", "destination"):
            try:
                addresses.append(parse_ip(cell(name) or ""))
            except ValueError as exc:
                raise fail(name, f"invalid IP address {exc}") from None
        src_ip, dst_ip = addresses
        if src_ip.version != dst_ip.version:
            raise fail("destination", "source and destination differ in family")
        try:
            proto = Proto.parse(cell("protocol") or "")
        except ValueError as exc:
            raise fail("protocol", str(exc)) from None
        port_text = cell("port") or "0"
        if not _is_port(port_text):
            raise fail("port", f"{excerpt(port_text)} is not a port number")
        port = int(port_text) if proto.has_ports else 0
        end_text = (cell("end") or "fin").lower()
        if end_text not in ("fin", "rst", "idle", "rst_server"):
            raise fail("end", f"{excerpt(end_text)}: expected fin, rst, rst_server or idle")
        end = EndKind[end_text.upper()]
        src, dst = book.add(src_ip), book.add(dst_ip)
        sport_text = cell("sport")
        if sport_text:
            if not _is_port(sport_text):
                raise fail("sport", f"{excerpt(sport_text)} is not a port number")
            sport = int(sport_text)
        else:
            sport = EPHEMERAL_MIN + sport_next.get(src, 0) % 28232
            sport_next[src] = sport_next.get(src, 0) + 1
        egress_text = cell("egress_ip")
        if egress_text:
            try:
                egress_ip = parse_ip(egress_text)
            except ValueError as exc:
                raise fail("egress_ip", f"invalid IP address {exc}") from None
            egress = routes.egress.add(egress_ip, routes.gateways.get(egress_ip, "gateway"))
        else:
            egress = routes.egress_for(src_ip, dst_ip, egress_ips, src)
            if egress == NOT_MASQUERADED and routes.router is None:
                raise fail("egress_ip", "no egress IP: give this column, replay.egress_ips "
                           "in the workload, or --policies with --inventory")
        if egress == NOT_MASQUERADED:
            return None
        return (start, duration, int(end), src, sport, dst, port, int(proto), egress)

    def expected(self, t0: float, t1: float) -> float:
        lo, hi = np.searchsorted(self.flows.start, [t0, t1], side="left")
        return float(hi - lo)

    def window(self, t0: float, t1: float) -> Flows:
        lo, hi = np.searchsorted(self.flows.start, [t0, t1], side="left")
        return self.flows.take(slice(int(lo), int(hi)))

    @property
    def last_start(self) -> float:
        return float(self.flows.start[-1]) if len(self.flows) else 0.0


def _is_port(text: str) -> bool:
    """ASCII digits (``str.isdigit`` also takes Unicode digits int() refuses) in 0..65535."""
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 0xFFFF
