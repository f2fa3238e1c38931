"""``cilium-dbg bpf nat list``: Cilium's BPF SNAT map, one entry per line.

Lines look like (Cilium v1.16, ``pkg/maps/nat`` and ``pkg/tuple``)::

    TCP OUT 10.244.1.5:51234 -> 1.2.3.4:443 XLATE_SRC 172.18.0.2:40000 Created=12sec ago NeedsCT=1
    TCP IN 1.2.3.4:443 -> 172.18.0.2:40000 XLATE_DST 10.244.1.5:51234 Created=12sec ago NeedsCT=1
    ICMP IN 172.18.0.3:0 -> 172.18.0.2:38193 XLATE_DST 10.244.1.5:38193 Created=3sec ago NeedsCT=1
    TCP IN [2001:db8::1]:443 -> [fd00::2]:40000 XLATE_DST [fd00::5]:5123 Created=? (raw 7) NeedsCT=0

``related `` / ``service `` may follow the tuple, older agents print ``HostLocal=N`` instead
of ``NeedsCT=N``, and each map's listing ends with a blank line.

nat-stats counts IN entries of TCP, UDP, ICMP (IPv4) and ICMPv6 (IPv6) by {proto, egress IP
= the IN tuple's destination, remote = the IN tuple's source ip:port}. Cilium zeroes only
the allocated (destination) port, so the remote port is whatever the key holds: 0 for ICMP
echo replies.

The bulk path must keep up with awk on a million lines, so it never loops over lines in
Python. It works on cache-sized chunks of whole lines (in two processes for big dumps):

1. *Shape*: deleting the digits turns every valid line into one of a few short shapes
   (``TCP IN ...: -> ...: XLATE_DST ...: Created=sec ago NeedsCT=``). A chunk made of the
   six usual IPv4 shapes only is proven so by ``bytes.count`` (see COMMON_SHAPES); other
   chunks by one possessive regex match, which stops at the first bad line.
2. *Keys*: one ``findall`` with a literal ``\\n`` prefix pulls the key text of IN lines,
   a Counter counts the bytes, and only distinct keys are parsed into NatEndpoints (which
   fully validates the counted addresses and ports).

Digits inside OUT entries and translated addresses are checked for shape only; the entry
path (:func:`iter_entries`) parses every field.
"""

from __future__ import annotations

import marshal
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple

from egressgw.dumps.base import DumpCounts, bad_line, normalize
from egressgw.net import (
    Direction,
    Endpoint,
    Family,
    FiveTuple,
    NatEndpoint,
    NatEntry,
    Proto,
    is_counted,
    parse_ip,
)

FORMAT = "cilium"
# Below this size a second process costs more than it saves.
PARALLEL_MIN_BYTES = 8 << 20
# Chunks of the bulk scan: small enough for the CPU cache, big enough to amortize calls.
CHUNK_BYTES = 256 << 10
# How much of a bad line an error message needs.
_MAX_LINE = 4096
DIGITS = b"0123456789"

# --- shapes of lines with their digits deleted --------------------------------------
_A4 = rb"\.\.\.:"  # 10.244.1.5:51234
_A6 = rb"\[[a-f:.]*\]:"  # [fd00::5]:51234 (and ::ffff:1.2.3.4 forms)
# Branches rather than repeats: sre runs a BRANCH of literals much faster than a group
# repeat, and this regex runs once per line.
_TAIL = rb" Created=(?:sec ago|-sec ago|\? \(raw \)) (?:NeedsCT|HostLocal)="


def _xlate(which: bytes) -> bytes:
    """``XLATE_SRC``/``XLATE_DST``, after the optional ``related ``/``service `` markers."""
    return (
        b"(?:"
        + b"|".join(
            flags + b"XLATE_" + which
            for flags in (b"", b"related ", b"service ", b"related service ")
        )
        + b")"
    )


def _shape(protos: bytes, addr: bytes) -> bytes:
    tuple_ = addr + rb" -> " + addr + rb" "
    return (
        protos
        + rb" (?:OUT "
        + tuple_
        + _xlate(b"SRC")
        + rb"|IN "
        + tuple_
        + _xlate(b"DST")
        + rb") "
        + addr
        + _TAIL
    )


# ICMP exists only in the IPv4 map and ICMPv6 ("ICMPv" without its digit) only in IPv6.
_LINE_SHAPE = (
    rb"(?:"
    + _shape(rb"(?:TCP|UDP|ICMP|SCTP)", _A4)
    + rb"|"
    + _shape(rb"(?:TCP|UDP|ICMPv|SCTP)", _A6)
    + rb")"
)
# The shapes nearly every line of an IPv4 map has. When a chunk consists of these only, a
# few bytes.count calls (C fast search) prove it, instead of the regex: each pattern ends
# with the line's newline and none is a suffix of another, so each line ends at most one
# occurrence; if the occurrences cover every byte, every line is exactly one of them.
# (Every one of them is also a valid _LINE_SHAPE; tests check both properties.)
COMMON_SHAPES = tuple(
    proto + direction + b" ...: -> ...: XLATE_" + xlate + b" ...: Created=sec ago NeedsCT=\n"
    for proto in (b"TCP", b"UDP", b"ICMP")
    for direction, xlate in ((b" OUT", b"SRC"), (b" IN", b"DST"))
)
_ALL_SHAPES = re.compile(rb"(?:" + _LINE_SHAPE + rb"\n|\n)*+")
_ONE_SHAPE = re.compile(_LINE_SHAPE)

# --- keys of counted IN entries (on the original text) -------------------------------
# Only run on lines whose shape is valid, so plain "not a space/colon" loops (sre's
# fastest) cannot run past the line.
_KEY = rb"((?:TCP|UDP|ICMPv6|ICMP) IN [^ ]+ -> (?:\[[^\]]*\]|[^:]+))"
_KEYS_AFTER_NEWLINE = re.compile(rb"\n" + _KEY)
_KEY_AT_START = re.compile(_KEY)
_KEY_PARTS = re.compile(r"(TCP|UDP|ICMPv6|ICMP) IN (\S+) -> (\S+)")

# --- every field, for the entry path --------------------------------------------------
_ENTRY = re.compile(
    r"(?P<proto>TCP|UDP|ICMPv6|ICMP|SCTP) (?P<dir>OUT|IN) (?P<src>\S+:\d+) -> (?P<dst>\S+:\d+) "
    r"(?:related )?(?:service )?XLATE_(?P<xdir>SRC|DST) (?P<xlate>\S+:\d+) "
    r"Created=(?:(?P<ago>-?\d+)sec ago|\? \(raw \d+\)) "
    r"(?:NeedsCT=(?P<ct>\d+)|HostLocal=\d+)"
)


def parse_key(key: str) -> NatEndpoint:
    """``TCP IN 104.198.14.52:443 -> 172.18.0.2`` to its NatEndpoint (ValueError if bad)."""
    match = _KEY_PARTS.fullmatch(key)
    if match is None:
        raise ValueError("not an IN tuple")
    proto = Proto.parse(match[1])
    remote = Endpoint.parse(match[2])
    egress = parse_ip(match[3])
    family = Family.of(egress)
    if remote.ip.version != egress.version:
        raise ValueError("remote and egress addresses are of different families")
    if not is_counted(family, proto):
        raise ValueError(f"{proto.label} in the {family} map")
    return NatEndpoint(family, proto, egress, remote.ip, remote.port)


def count_cilium(data: bytes, *, source: str, skip_invalid: bool = False) -> DumpCounts:
    """Connections per NatEndpoint in a ``cilium-dbg bpf nat list`` dump (bulk path)."""
    data = normalize(data)

    def read(offset: int, size: int) -> bytes:
        return data[offset : offset + size]

    scan = scan_lines(read, len(data), skip_invalid=skip_invalid)
    return _finish(scan, read, len(data), source=source, skip_invalid=skip_invalid)


def count_cilium_file(path: str, *, source: str, skip_invalid: bool = False) -> DumpCounts:
    """:func:`count_cilium` streaming a regular file: each process reads its own half in
    cache-sized blocks, so the dump is never held in memory whole."""
    with open(path, "rb") as handle:
        descriptor = handle.fileno()

        def read(offset: int, size: int) -> bytes:
            return os.pread(descriptor, size, offset)

        size = os.fstat(descriptor).st_size
        scan = scan_lines(read, size, skip_invalid=skip_invalid)
        return _finish(scan, read, size, source=source, skip_invalid=skip_invalid)


def _finish(scan: Scan, read: Read, size: int, *, source: str, skip_invalid: bool) -> DumpCounts:
    """Parse the distinct keys; raise for the first bad line unless skipping bad lines."""
    if scan.bad_offset >= 0:
        line = read(scan.bad_offset, _MAX_LINE).split(b"\n", 1)[0]
        raise bad_line(source, scan.lines + 1, line, _problem(line) or "bad line")
    counts: dict[NatEndpoint, int] = {}
    skipped = scan.skipped
    bad_keys: dict[bytes, str] = {}
    for key, n in scan.keys.items():
        try:
            endpoint = parse_key(key.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            bad_keys[key] = str(exc)
            skipped += n  # every line with this key is bad
            continue
        counts[endpoint] = counts.get(endpoint, 0) + n
    if bad_keys and not skip_invalid:
        # Shapes were fine but a counted address is not: name its earliest line.
        offset, number, key = min((*_first_line_with(read, size, key), key) for key in bad_keys)
        line = read(offset, _MAX_LINE).split(b"\n", 1)[0]
        raise bad_line(source, number, line, f"bad IN tuple ({bad_keys[key]})")
    return DumpCounts(counts, scan.lines, skipped, FORMAT)


def _first_line_with(read: Read, size: int, key: bytes) -> tuple[int, int]:
    """Offset and number of the first line that starts with the IN key ``key``."""
    needle = b"\n" + key + b":"
    position = 0
    lines_before = 0
    while position < size:
        block = read(position, 4 * CHUNK_BYTES)
        while b"\n" not in block and position + len(block) < size:  # a very long line
            block += read(position + len(block), 4 * CHUNK_BYTES)
        text = block[: block.rfind(b"\n") + 1 or len(block)]  # whole lines only
        if text.startswith(needle[1:]):
            index = 0
        else:
            index = text.find(needle)
            index = index + 1 if index >= 0 else -1
        if index >= 0:
            return position + index, lines_before + text.count(b"\n", 0, index) + 1
        lines_before += text.count(b"\n")
        position += len(text)
    raise AssertionError(f"key {key!r} was counted but is not in the dump")


# Reads ``size`` bytes at ``offset`` (fewer at the end): a slice of bytes or a pread.
Read = Callable[[int, int], bytes]


class Scan(NamedTuple):
    """Raw IN keys (bytes) and their counts, lines read and lines skipped. When a line has a
    bad shape (and bad lines are not skipped), ``bad_offset`` is where it starts and
    ``lines`` counts the lines before it; otherwise ``bad_offset`` is -1."""

    keys: dict[bytes, int]
    lines: int
    bad_offset: int
    skipped: int = 0


def scan_lines(read: Read, size: int, *, skip_invalid: bool = False) -> Scan:
    """Scan a whole dump: two processes when it is big and a second CPU is free."""
    if size >= PARALLEL_MIN_BYTES and _can_fork():
        return scan_in_parallel(read, size, skip_invalid=skip_invalid)
    return scan_range(read, 0, size, skip_invalid=skip_invalid)


def scan_range(read: Read, start: int, end: int, *, skip_invalid: bool = False) -> Scan:
    """Scan the lines in ``[start, end)`` (line boundaries) in cache-sized chunks.

    Each chunk is translated, shape-checked and searched while it is still in the CPU
    cache, instead of streaming the whole dump through memory three times. A line with a
    bad shape ends the scan, or with ``skip_invalid`` is skipped and the scan goes on.
    """
    keys: Counter[bytes] = Counter()
    lines = skipped = 0
    position = start
    while position < end:
        block = read(position, min(CHUNK_BYTES, end - position))
        cut = block.rfind(b"\n") + 1
        while cut == 0 and position + len(block) < end:  # a line longer than a chunk
            more = min(CHUNK_BYTES, end - position - len(block))  # never past end
            block += read(position + len(block), more)
            cut = block.rfind(b"\n") + 1
        if cut == 0:  # the last line, without its newline
            block += b"\n"
            cut = len(block)
        chunk, chunk_end = block, cut  # the tail after cut is read again with the next block
        if b"\r" in block:
            chunk = block[:cut].replace(b"\r\n", b"\n")
            chunk_end = len(chunk)
        skeleton = chunk.translate(None, DIGITS)
        skeleton_end = skeleton.rfind(b"\n") + 1
        common = _common_lines(skeleton, skeleton_end)
        if common >= 0:
            lines += common
        else:
            # pos/endpos instead of slicing: no copy of the block per chunk.
            shape = _ALL_SHAPES.match(skeleton, 0, skeleton_end)
            if shape is None or shape.end() != skeleton_end:
                good = skeleton.count(b"\n", 0, shape.end() if shape else 0)
                if not skip_invalid:
                    bad_start = _line_start(block, good)
                    return Scan(dict(keys), lines + good, position + bad_start, skipped)
                _count_keys(keys, chunk, _line_start(chunk, good))
                lines += good + 1
                skipped += 1
                position += _line_start(block, good + 1)  # go on after the bad line
                continue
            lines += skeleton.count(b"\n", 0, skeleton_end)
        _count_keys(keys, chunk, chunk_end)
        position += cut
    return Scan(dict(keys), lines, -1, skipped)


def _count_keys(keys: Counter[bytes], chunk: bytes, end: int) -> None:
    """Count the IN keys of the (valid) lines in ``chunk[:end]``."""
    keys.update(_KEYS_AFTER_NEWLINE.findall(chunk, 0, end))
    first = _KEY_AT_START.match(chunk, 0, end)
    if first is not None:
        keys[first[1]] += 1


def _line_start(text: bytes, line: int) -> int:
    """Where line number ``line`` (0-based) of ``text`` starts."""
    offset = 0
    for _ in range(line):
        offset = text.index(b"\n", offset) + 1
    return offset


def _common_lines(skeleton: bytes, end: int) -> int:
    """The number of lines in ``skeleton[:end]`` if all have a COMMON_SHAPE, else -1."""
    covered = lines = 0
    for shape in COMMON_SHAPES:
        found = skeleton.count(shape, 0, end)
        covered += found * len(shape)
        lines += found
        if covered == end:
            return lines
    return -1


def scan_in_parallel(read: Read, size: int, *, skip_invalid: bool = False) -> Scan:
    """:func:`scan_range` over ``[0, size)``, the second half in a forked child process.

    The scan is CPU-bound regex work that holds the GIL, so a second core only helps from
    another process. The child writes its small result back through a pipe with marshal.
    Callers check :func:`_can_fork` first: forking a process with other threads is unsafe.
    """
    middle = _line_start_after(read, size // 2, size)
    if middle >= size:
        return scan_range(read, 0, size, skip_invalid=skip_invalid)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: scan the second half, report, exit without cleanup handlers
        status = 0
        try:
            second_half = scan_range(read, middle, size, skip_invalid=skip_invalid)
            payload = marshal.dumps(tuple(second_half))
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as incoming:
            first = scan_range(read, 0, middle, skip_invalid=skip_invalid)
            payload = incoming.read()
    finally:
        _, status = os.waitpid(pid, 0)
    if first.bad_offset >= 0:
        return first
    if status == 0 and payload:
        second = Scan(*marshal.loads(payload))
    else:
        second = scan_range(read, middle, size, skip_invalid=skip_invalid)
    keys = Counter(first.keys)
    keys.update(second.keys)
    lines = first.lines + second.lines
    return Scan(dict(keys), lines, second.bad_offset, first.skipped + second.skipped)


def _line_start_after(read: Read, offset: int, size: int) -> int:
    """The offset of the first line that starts at or after ``offset``."""
    if offset <= 0:
        return 0
    position = offset - 1
    while position < size:
        block = read(position, CHUNK_BYTES)
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)
    return size


def _can_fork() -> bool:
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus > 1


def _problem(line: bytes) -> str | None:
    """Why a line is not a valid entry for the bulk count, or None if it is."""
    if _ONE_SHAPE.fullmatch(line.translate(None, DIGITS)) is None:
        return "not a cilium-dbg bpf nat list entry"
    key = _KEY_AT_START.match(line)
    if key is not None:
        try:
            parse_key(key[1].decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            return f"bad IN tuple ({exc})"
    return None


def iter_cilium(data: bytes, *, source: str, skip_invalid: bool = False) -> Iterator[NatEntry]:
    """Every NAT entry of a ``cilium-dbg bpf nat list`` dump, every field parsed.

    SCTP entries (Cilium built with SCTP support) are valid but have no Proto here and are
    not yielded.
    """
    for number, line in enumerate(normalize(data).split(b"\n")[:-1], start=1):
        if not line:
            continue
        try:
            entry = parse_entry(line.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            if skip_invalid:
                continue
            raise bad_line(source, number, line, str(exc)) from None
        if entry is not None:
            yield entry


def parse_entry(line: str) -> NatEntry | None:
    """One ``bpf nat list`` line to a NatEntry (None for SCTP); ValueError when malformed."""
    match = _ENTRY.fullmatch(line)
    if match is None:
        raise ValueError("not a cilium-dbg bpf nat list entry")
    direction = Direction(match["dir"])
    if (direction is Direction.OUT) != (match["xdir"] == "SRC"):
        raise ValueError(f"{direction} entry with XLATE_{match['xdir']}")
    if match["proto"] == "SCTP":
        return None
    proto = Proto.parse(match["proto"])
    tuple_ = FiveTuple(proto, Endpoint.parse(match["src"]), Endpoint.parse(match["dst"]))
    xlate = Endpoint.parse(match["xlate"])
    if xlate.family is not tuple_.family:
        raise ValueError("translated address of another family")
    if not is_counted(tuple_.family, proto):
        raise ValueError(f"{proto.label} in the {tuple_.family} map")
    ago = match["ago"]
    ct = match["ct"]
    return NatEntry(
        direction,
        tuple_,
        xlate,
        created_ago=float(ago) if ago is not None else None,
        needs_ct=bool(int(ct)) if ct is not None else None,
    )


def sniff(line: bytes) -> bool:
    """Whether a (first, non-blank) line looks like ``bpf nat list`` output."""
    return re.match(rb"(?:TCP|UDP|ICMPv6|ICMP|SCTP) (?:IN|OUT) ", line) is not None
