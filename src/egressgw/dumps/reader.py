"""Choosing the reader: ``--format auto|cilium|conntrack``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from egressgw.dumps import cilium, conntrack
from egressgw.dumps.base import DUMP_FORMATS, DumpCounts
from egressgw.errors import ConfigError, InputError
from egressgw.net import NatEntry

_MAX_SNIFF = 4096
# Enough of a file to tell its format from its first non-blank line.
_HEAD_BYTES = 64 << 10


def detect_format(data: bytes, *, source: str, fmt: str = "auto") -> str | None:
    """The dump format: ``fmt`` itself unless it is ``auto``; None for an empty dump.

    ``auto`` looks at the first non-blank line.
    """
    if fmt not in DUMP_FORMATS:
        raise ConfigError(f"{fmt!r}: expected one of {', '.join(DUMP_FORMATS)}", field="--format")
    if fmt != "auto":
        return fmt
    start = 0
    number = 1
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line = data[start:end].rstrip(b"\r")
        if line.strip():
            if cilium.sniff(line):
                return cilium.FORMAT
            if conntrack.sniff(line):
                return conntrack.FORMAT
            snippet = line[:_MAX_SNIFF].decode("utf-8", "replace")[:80]
            raise InputError(
                f"cannot tell the format from {snippet!r} "
                "(expected cilium-dbg bpf nat list or conntrack -L output; see --format)",
                source=source,
                line=number,
            )
        start = end + 1
        number += 1
    return None


def count_endpoints(
    data: bytes, *, source: str, fmt: str = "auto", skip_invalid: bool = False
) -> DumpCounts:
    """Connections per NatEndpoint in a dump (the bulk path nat-stats uses).

    A line that cannot be parsed raises InputError naming ``source`` and the line number,
    unless ``skip_invalid``: then it is skipped and counted in ``DumpCounts.skipped``.
    """
    found = detect_format(data, source=source, fmt=fmt)
    if found == cilium.FORMAT:
        return cilium.count_cilium(data, source=source, skip_invalid=skip_invalid)
    if found == conntrack.FORMAT:
        return conntrack.count_conntrack(data, source=source, skip_invalid=skip_invalid)
    return DumpCounts(lines=data.count(b"\n"), format=fmt)


def count_file(
    path: str, *, source: str | None = None, fmt: str = "auto", skip_invalid: bool = False
) -> DumpCounts:
    """:func:`count_endpoints` on a file. A ``bpf nat list`` dump in a regular file is
    streamed (two processes, each reading its half) instead of being read whole; pipes and
    other files are read whole.
    """
    name = path if source is None else source
    try:
        with open(path, "rb") as handle:
            regular = stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
            head = handle.read(_HEAD_BYTES)
            found = detect_format(head, source=name, fmt=fmt) if head.strip() else None
            if found is None and fmt != "auto":
                found = fmt
            if regular and found == cilium.FORMAT:
                return cilium.count_cilium_file(path, source=name, skip_invalid=skip_invalid)
            # Not streamable: the rest from the same handle (a pipe cannot be reopened).
            data = head + handle.read()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=name) from None
    return count_endpoints(data, source=name, fmt=fmt, skip_invalid=skip_invalid)


def iter_entries(
    data: bytes, *, source: str, fmt: str = "auto", skip_invalid: bool = False
) -> Iterator[NatEntry]:
    """Every NAT entry of a dump with every field parsed (the entry path)."""
    found = detect_format(data, source=source, fmt=fmt)
    if found == cilium.FORMAT:
        return cilium.iter_cilium(data, source=source, skip_invalid=skip_invalid)
    if found == conntrack.FORMAT:
        return conntrack.iter_conntrack(data, source=source, skip_invalid=skip_invalid)
    return iter(())
