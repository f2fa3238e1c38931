"""The one error tree of egressgw.

Every failure a user can cause or meet is an :class:`EgressgwError`. Adapters at the edges
(files, subprocess, netlink, HTTP) translate what they catch into one of these, so the CLI
can print one clear line and exit non-zero without a traceback.
"""

from __future__ import annotations


class EgressgwError(Exception):
    """Base of every error egressgw reports to its user."""

    exit_code = 1


class InputError(EgressgwError):
    """Bad input: a file, a line in it, or a field of a document.

    The message names where the problem is, as ``FILE:LINE: what`` or
    ``FILE: document N: field.path: what``.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        document: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.document = document
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where: list[str] = []
        if self.source is not None:
            where.append(self.source if self.line is None else f"{self.source}:{self.line}")
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.document is not None:
            where.append(f"document {self.document}")
        if self.field is not None:
            where.append(self.field)
        return ": ".join([*where, self.message])


class ConfigError(InputError):
    """A bad flag or configuration value (names the flag)."""


class DatapathError(EgressgwError):
    """The datapath refused or failed an operation (nft, netlink, the model)."""


class AgentError(EgressgwError):
    """The agent or its HTTP API could not be reached or answered badly."""


EXCERPT_CHARS = 40


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A short, escaped quotation of an input value for an error message.

    Only strings and numbers are quoted, and only their first ``limit`` characters are
    formatted: a value read from a file can be megabytes long (or, from YAML with
    aliases, a structure that would take gigabytes to print), so it is never passed to
    ``repr`` or ``str`` whole. Control characters come out escaped, so the message stays
    one line.
    """
    if isinstance(value, str):
        return _quote(value, limit)
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, int):
        digits = value.bit_length() * 0.30103  # about the decimal digits, without formatting
        return str(value) if digits < limit else f"a number of about {round(digits)} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} keys"
    return f"a {type(value).__name__}"


def _quote(text: str, limit: int) -> str:
    """``text`` in single quotes, non-printable characters escaped as repr escapes them,
    cut so that the quoted part holds at most ``limit`` characters (escapes included)."""
    pieces: list[str] = []
    used = 0
    for char in text:
        if char in "'\\":
            piece = "\\" + char
        elif char.isprintable():
            piece = char
        else:
            piece = repr(char)[1:-1]
        if used + len(piece) > limit:
            return "'" + "".join(pieces) + "'..."
        pieces.append(piece)
        used += len(piece)
    return "'" + "".join(pieces) + "'"
