"""What every dump reader shares: the result type, input reading and error locating."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from egressgw.errors import InputError
from egressgw.net import NatEndpoint

DUMP_FORMATS = ("auto", "cilium", "conntrack")
STDIN = "-"
_SNIPPET = 80


@dataclass
class DumpCounts:
    """Connections per NAT endpoint counted from one dump.

    ``lines`` is the number of lines read (blank ones included), ``skipped`` the number of
    lines that could not be parsed and were skipped (only with ``skip_invalid``).
    ``reusable``: for ``conntrack -L`` dumps, how many of each endpoint's connections are
    in a TCP state whose port Linux can take over (egressgw.limits.TAKEOVER_TCP_STATES),
    the same as :func:`egressgw.dumps.takeover.takeover_counts`; None for other formats.
    """

    counts: dict[NatEndpoint, int] = field(default_factory=dict)
    lines: int = 0
    skipped: int = 0
    format: str = "auto"
    reusable: dict[NatEndpoint, int] | None = None

    @property
    def connections(self) -> int:
        return sum(self.counts.values())


def read_source(path: str) -> tuple[bytes, str]:
    """Read a whole dump as bytes: a file, or standard input for ``-``.

    Returns the data and the name to use in messages.
    """
    if path == STDIN:
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        with open(path, "rb") as handle:
            return handle.read(), path
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=path) from None


def normalize(data: bytes) -> bytes:
    """CRLF line ends to LF, and a final newline, so every line ends with ``\\n``."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data


def bad_line(source: str, number: int, line: bytes, why: str) -> InputError:
    """An error naming the file and line, quoting the start of the line."""
    text = line.decode("utf-8", "replace")
    if len(text) > _SNIPPET:
        text = text[:_SNIPPET] + "..."
    return InputError(f"{why}: {text!r}", source=source, line=number)
