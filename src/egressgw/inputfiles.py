"""Reading input files as text: bounded in size, UTF-8 checked, errors naming the file.

Every text reader (YAML policies, inventories and workloads, CSV flows) goes through
:func:`read_text`, so a file that is too large, unreadable or not UTF-8 is one clear
:class:`InputError` line, never a traceback or a gigabyte read into memory.
"""

from __future__ import annotations

from pathlib import Path

from egressgw.errors import InputError

# Largest YAML file read (bytes). An inventory of 100,000 endpoints is about 12 MB; the
# objects built from YAML take about 30 times the text, so this keeps a reader near a
# gigabyte at worst whatever the file holds (docs/reliability.md).
MAX_YAML_BYTES = 32 * 1024 * 1024


def read_text(path: Path, *, limit: int = MAX_YAML_BYTES, expected: str = "a YAML file") -> str:
    """The UTF-8 text of ``path``, refusing files over ``limit`` bytes."""
    source = str(path)
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise InputError("no such file or directory", source=source) from None
    except IsADirectoryError:
        raise InputError(f"is a directory, expected {expected}", source=source) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=source) from None
    if len(data) > limit:
        raise InputError(f"larger than {limit // (1024 * 1024)} MiB", source=source)
    return decode_utf8(data, source)


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as UTF-8; an invalid byte is an error naming its line and offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            source=source,
            line=line,
        ) from None


__all__ = ["MAX_YAML_BYTES", "decode_utf8", "read_text"]
