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

3. *Digits*: the shape check cannot see where digits were. A chunk of common shapes has
   exactly 17 digit runs per line (four octets and a port per address, Created, NeedsCT);
   numpy finds every run and checks its neighbours (so no digit sits inside ``TCP IN``,
   ``->`` or a keyword and no field is empty), octets (0..255, no leading zero) and ports
   (0..65535, no leading zero). Other chunks (IPv6, markers, the raw clock) go through a
   strict regex, and the distinct bracketed addresses through the address parser. Dumps
   under NUMPY_MIN_BYTES use the strict regex for every chunk: loading numpy would cost
   them more than it saves.
4. Every counted IN line of a chunk must have given a key: a line the key regex missed
   would otherwise go uncounted in silence.

So the bulk path accepts exactly the lines :func:`parse_entry` accepts (the fuzz tests
check it), and a chunk that fails a check is read again line by line to name the first
bad line.

The IPv6 map may hold IPv4-mapped addresses (NAT46x64 nodes): Cilium prints map addresses
with Go's ``net.IP.String()``, which writes ``::ffff:192.168.64.2`` as ``192.168.64.2``,
so the IPv6 map's line reads ``[192.168.64.2]:443``. nat-stats counts the IPv6 map's
entries under ipv6 (``pkg/maps/nat/stats/stats.go`` v1.16.2, ``countNat``: the key is the
16-byte ``tuple.TupleKey6``), so a bracketed address is always IPv6 here: dotted text in
brackets is the IPv4-mapped address.
"""

from __future__ import annotations

import functools
import ipaddress
import marshal
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple

from egressgw.dumps.base import DumpCounts, bad_line, normalize
from egressgw.errors import excerpt
from egressgw.net import (
    Direction,
    Endpoint,
    Family,
    FiveTuple,
    IPAddress,
    NatEndpoint,
    NatEntry,
    Proto,
    is_counted,
)

FORMAT = "cilium"
# Below this size a second process costs more than it saves.
PARALLEL_MIN_BYTES = 8 << 20
# A range smaller than this has the digits of its common chunks checked by the strict
# regex rather than numpy: importing numpy costs ~0.1 s of CPU, the regex ~4 ns per byte
# more than numpy (0.8 s against 0.38 s + 0.06 s of shape counts on the 94 MB of common
# chunks of the 1,000,000-line bench dump), so numpy pays off from about 25 MB on.
NUMPY_MIN_BYTES = 16 << 20
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


def _shape(protos: bytes, addr: bytes, tail: bytes = _TAIL) -> bytes:
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
        + tail
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
_COMMON_IN_SHAPES = frozenset(shape for shape in COMMON_SHAPES if b" IN " in shape)
_ONE_SHAPE = re.compile(_LINE_SHAPE)

# --- keys of counted IN entries (on the original text) -------------------------------
# Only run on lines whose shape is valid, so plain "not a space/colon" loops (sre's
# fastest) cannot run past the line.
_KEY = rb"((?:TCP|UDP|ICMPv6|ICMP) IN [^ ]+ -> (?:\[[^\]]*\]|[^:]+))"
_KEYS_AFTER_NEWLINE = re.compile(rb"\n" + _KEY)
_KEY_AT_START = re.compile(_KEY)
_KEY_PARTS = re.compile(r"(TCP|UDP|ICMPv6|ICMP) IN (\S+) -> (\S+)")

# --- every field: the entry path, and the strict check of uncommon chunks --------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PORT = r"(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}|0)"
_V4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
_V6 = r"\[[0-9a-f:.]+\]"  # what is inside is checked by the address parser
_ENTRY = (
    r"(?P<proto>TCP|UDP|ICMPv6|ICMP|SCTP) (?P<dir>OUT|IN) "
    rf"(?P<src>(?:{_V4}|{_V6}):{_PORT}) -> (?P<dst>(?:{_V4}|{_V6}):{_PORT}) "
    r"(?:related )?(?:service )?XLATE_(?P<xdir>SRC|DST) "
    rf"(?P<xlate>(?:{_V4}|{_V6}):{_PORT}) "
    r"Created=(?:(?P<ago>-?\d+)sec ago|\? \(raw \d+\)) "
    r"(?:NeedsCT=(?P<ct>\d+)|HostLocal=\d+)"
)
# A chunk of lines that parse_entry accepts, in bytes: the shapes (pairing of direction
# and XLATE, protocol and map, one family per line) with every number spelled out. For the
# chunks the common shapes do not cover; what is inside brackets is checked apart.
_A4 = rf"{_V4}:{_PORT}".encode()
_A6 = rf"{_V6}:{_PORT}".encode()
_STRICT_TAIL = rb" Created=(?:-?\d+sec ago|\? \(raw \d+\)) (?:NeedsCT|HostLocal)=\d+"
_STRICT_LINES = (
    rb"(?:(?:"
    + _shape(rb"(?:TCP|UDP|ICMP|SCTP)", _A4, _STRICT_TAIL)
    + rb"|"
    + _shape(rb"(?:TCP|UDP|ICMPv6|SCTP)", _A6, _STRICT_TAIL)
    + rb")\n|\n)*+"
)


# The two big regexes are compiled on first use (~12 ms each): a dump of common IPv4
# lines read with numpy needs neither, and every nat-stats run would pay for them.
@functools.cache
def _entry_regex() -> re.Pattern[str]:
    return re.compile(_ENTRY, re.ASCII)


@functools.cache
def _strict_lines_regex() -> re.Pattern[bytes]:
    return re.compile(_STRICT_LINES)


_BRACKETED = re.compile(rb"\[([^\]]*)\]")


@functools.lru_cache(maxsize=1 << 16)  # a dump repeats the same few addresses
def parse_address(text: str) -> IPAddress:
    """An address of a ``bpf nat list`` line: dotted IPv4, or IPv6 in brackets.

    Brackets mean the IPv6 map, so ``[192.168.64.2]`` is the IPv4-mapped IPv6 address
    ``::ffff:192.168.64.2`` (see the module's docstring). Zones are refused.
    """
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        if ":" not in inner:
            return ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(inner)}")
        address = ipaddress.IPv6Address(inner)
        if address.scope_id is not None:
            raise ValueError(f"zone in address {text!r}")
        return address
    return ipaddress.IPv4Address(text)


def parse_endpoint(text: str) -> Endpoint:
    """``1.2.3.4:80`` or ``[2001:db8::1]:80`` (the port is not optional here)."""
    host, sep, port = text.rpartition(":")
    if not sep or re.fullmatch(_PORT, port, re.ASCII) is None:
        raise ValueError(f"bad endpoint {text!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"bad endpoint {text!r}")
    return Endpoint(parse_address(host), int(port))


def parse_key(key: str) -> NatEndpoint:
    """``TCP IN 104.198.14.52:443 -> 172.18.0.2`` to its NatEndpoint (ValueError if bad)."""
    match = _KEY_PARTS.fullmatch(key)
    if match is None:
        raise ValueError("not an IN tuple")
    proto = Proto.parse(match[1])
    remote = parse_endpoint(match[2])
    egress = parse_address(match[3])
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
    # The first bad line: the one the scan stopped at, or an earlier one whose key (the
    # scan counted only keys before where it stopped) does not parse.
    first: list[tuple[int, int, str]] = []
    if scan.bad_offset >= 0:
        line = read(scan.bad_offset, _MAX_LINE).split(b"\n", 1)[0]
        first.append((scan.bad_offset, scan.lines + 1, _problem(line) or "bad line"))
    if bad_keys and not skip_invalid:
        for key, why in bad_keys.items():
            first.append((*_first_line_with(read, size, key), f"bad IN tuple ({why})"))
    if first:
        offset, number, why = min(first)
        line = read(offset, _MAX_LINE).split(b"\n", 1)[0]
        raise bad_line(source, number, line, why)
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


def scan_range(read: Read, start: int, end: int, *, skip_invalid: bool = False,
               numpy: bool | None = None) -> Scan:
    """Scan the lines in ``[start, end)`` (line boundaries) in cache-sized chunks.

    Each chunk is translated, shape-checked and searched while it is still in the CPU
    cache, instead of streaming the whole dump through memory three times. A line with a
    bad shape ends the scan, or with ``skip_invalid`` is skipped and the scan goes on.
    The digits of chunks of common shapes are checked with numpy (by default when the
    range is at least NUMPY_MIN_BYTES), else by the strict regex that checks every other
    chunk: the same lines pass either way (the fuzz tests run both).
    """
    if numpy is None:
        numpy = end - start >= NUMPY_MIN_BYTES
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
        found = _keys_in(chunk, chunk_end)
        if not _chunk_is_valid(chunk, chunk_end, skeleton, skeleton_end, len(found),
                               numpy=numpy):
            found, good = _read_slowly(chunk, chunk_end)
            if good >= 0:  # the first bad line of the chunk is line ``good`` (0-based)
                keys.update(found)
                if not skip_invalid:
                    bad_start = _line_start(block, good)
                    return Scan(dict(keys), lines + good, position + bad_start, skipped)
                lines += good + 1
                skipped += 1
                position += _line_start(block, good + 1)  # go on after the bad line
                continue
        lines += skeleton.count(b"\n", 0, skeleton_end)
        keys.update(found)
        position += cut
    return Scan(dict(keys), lines, -1, skipped)


def _keys_in(chunk: bytes, end: int) -> list[bytes]:
    """The IN keys of the lines in ``chunk[:end]``."""
    found: list[bytes] = _KEYS_AFTER_NEWLINE.findall(chunk, 0, end)
    first = _KEY_AT_START.match(chunk, 0, end)
    if first is not None:
        found.append(first[1])
    return found


def _chunk_is_valid(chunk: bytes, end: int, skeleton: bytes, skeleton_end: int,
                    keys: int, *, numpy: bool) -> bool:
    """Whether every line of ``chunk[:end]`` is one :func:`parse_entry` accepts and every
    counted IN line gave one of the ``keys`` (see the module's docstring)."""
    common, common_in = _common_lines(skeleton, skeleton_end) if numpy else (-1, 0)
    if common >= 0:
        return common_in == keys and _common_digits_are_valid(chunk, end, common)
    # The possessive repeat always matches (maybe empty): its end is where a bad line is.
    if _strict_lines_regex().match(chunk, 0, end).end() != end:  # type: ignore[union-attr]
        return False
    counted_in = (skeleton.count(b" IN ", 0, skeleton_end)
                  - skeleton.count(b"SCTP IN ", 0, skeleton_end))
    if counted_in != keys:
        return False
    if b"[" in skeleton:
        return all(map(_bracketed_is_valid, set(_BRACKETED.findall(chunk, 0, end))))
    return True


def _bracketed_is_valid(inner: bytes) -> bool:
    """What :func:`parse_address` accepts in brackets, at C speed: inet_pton agrees with
    ``ipaddress`` on text of the characters the strict regex lets through (lowercase hex,
    colons, dots; leading zeros refused by both), which the fuzz tests check."""
    try:
        text = inner.decode("ascii")
        import socket  # noqa: PLC0415 - only dumps with IPv6 lines need it (start-up)

        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return True


def _common_digits_are_valid(chunk: bytes, end: int, lines: int) -> bool:
    """See :mod:`egressgw.dumps.digits`; imported on first use, so nat-stats on other
    input (conntrack -L, only uncommon shapes) does not pay for loading numpy."""
    return _digits_check()(chunk, end, lines)


@functools.cache
def _digits_check() -> Callable[[bytes, int, int], bool]:
    from egressgw.dumps import digits  # noqa: PLC0415 - numpy is slow to import

    return digits.common_digits_are_valid


def _read_slowly(chunk: bytes, end: int) -> tuple[list[bytes], int]:
    """Line by line with :func:`parse_entry`: the IN keys of the valid lines before the
    first bad one, and that line's index in the chunk (-1 if every line is valid)."""
    found: list[bytes] = []
    for index, line in enumerate(chunk[:end].split(b"\n")[:-1]):
        if not line:
            continue
        if _problem(line) is not None:
            return found, index
        key = _KEY_AT_START.match(line)
        if key is not None:
            found.append(key[1])
    return found, -1


def _line_start(text: bytes, line: int) -> int:
    """Where line number ``line`` (0-based) of ``text`` starts."""
    offset = 0
    for _ in range(line):
        offset = text.index(b"\n", offset) + 1
    return offset


def _common_lines(skeleton: bytes, end: int) -> tuple[int, int]:
    """The number of lines in ``skeleton[:end]`` and how many of them are IN lines, if all
    have a COMMON_SHAPE; else (-1, 0). (Once the shapes found cover every byte, the others
    cannot occur.)"""
    covered = lines = in_lines = 0
    for shape in COMMON_SHAPES:
        found = skeleton.count(shape, 0, end)
        covered += found * len(shape)
        lines += found
        in_lines += found if shape in _COMMON_IN_SHAPES else 0
        if covered == end:
            return lines, in_lines
    return -1, 0


def scan_in_parallel(read: Read, size: int, *, skip_invalid: bool = False) -> Scan:
    """:func:`scan_range` over ``[0, size)``, the second half in a forked child process.

    The scan is CPU-bound regex work that holds the GIL, so a second core only helps from
    another process. The child writes its small result back through a pipe with marshal.
    Callers check :func:`_can_fork` first: forking a process with other threads is unsafe.
    """
    middle = _line_start_after(read, size // 2, size)
    if middle >= size:
        return scan_range(read, 0, size, skip_invalid=skip_invalid)
    if size - middle >= NUMPY_MIN_BYTES:  # the halves will use numpy (scan_range):
        _digits_check()  # load it once, before the fork, rather than in both processes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: scan the second half, report, exit without cleanup handlers
        status = 0
        try:
            second_half = scan_range(read, middle, size, skip_invalid=skip_invalid)
            payload = marshal.dumps(tuple(second_half))
        except BaseException as exc:  # whatever it is, the parent reports it
            status = 1
            payload = _CHILD_ERROR + repr(exc).encode()[:500]
        try:
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
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
    try:
        if payload.startswith(_CHILD_ERROR):
            raise ValueError(payload[len(_CHILD_ERROR):].decode("utf-8", "replace"))
        if status != 0 or not payload:
            raise ValueError(f"exit status {os.waitstatus_to_exitcode(status)}, "
                             f"{len(payload)} bytes of result")
        second = Scan(*marshal.loads(payload))
    except (ValueError, EOFError, TypeError) as exc:
        # Never silent: a log line and a counter, then the half is scanned here instead.
        FORK_FAILURES.add()
        import logging  # noqa: PLC0415 - only here; every nat-stats run would load it

        logging.getLogger(__name__).warning(
            "dump scan: the forked child scanning bytes %d..%d failed (%s); "
            "scanning them in this process", middle, size, exc)
        second = scan_range(read, middle, size, skip_invalid=skip_invalid)
    keys = Counter(first.keys)
    keys.update(second.keys)
    lines = first.lines + second.lines
    return Scan(dict(keys), lines, second.bad_offset, first.skipped + second.skipped)


class _Counter:
    """A count that only goes up (read ``value``)."""

    def __init__(self) -> None:
        self.value = 0

    def add(self) -> None:
        self.value += 1


_CHILD_ERROR = b"egressgw-scan-error:"
# How many times a forked scan child failed and its half was scanned again in-process.
FORK_FAILURES = _Counter()


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
    """Why a line is not a valid entry, or None if it is (the entry path decides)."""
    try:
        parse_entry(line.decode("ascii"))
    except UnicodeDecodeError:
        return "not a cilium-dbg bpf nat list entry (not ASCII)"
    except ValueError as exc:
        return str(exc)
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
    match = _entry_regex().fullmatch(line)
    if match is None:
        raise ValueError(_diagnose(line))
    direction = Direction(match["dir"])
    if (direction is Direction.OUT) != (match["xdir"] == "SRC"):
        raise ValueError(f"{direction} entry with XLATE_{match['xdir']}")
    src, dst, xlate = (parse_endpoint(match[name]) for name in ("src", "dst", "xlate"))
    if not src.family == dst.family == xlate.family:
        raise ValueError("addresses of different families")
    if match["proto"] == "SCTP":
        return None  # valid, but nat-stats does not count SCTP
    proto = Proto.parse(match["proto"])
    tuple_ = FiveTuple(proto, src, dst)
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


_LOOSE_ENTRY = re.compile(
    r"(?:TCP|UDP|ICMPv6|ICMP|SCTP) (?:OUT|IN) (\S+) -> (\S+) (?:related )?(?:service )?"
    r"XLATE_(?:SRC|DST) (\S+) Created=(?:-?\d+sec ago|\? \(raw \d+\)) "
    r"(?:NeedsCT|HostLocal)=\d+",
    re.ASCII,
)


_REASON_CHARS = 80


def _diagnose(line: str) -> str:
    """Why a line _ENTRY refused is wrong: the first bad address or port, if that is it."""
    loose = _LOOSE_ENTRY.fullmatch(line)
    if loose is not None:
        for text in loose.groups():
            try:
                parse_endpoint(text)
            except ValueError as exc:
                # Both the field and the parser's message quote input: keep them short.
                why = str(exc) if len(str(exc)) <= _REASON_CHARS else "malformed"
                return f"bad address {excerpt(text)} ({why})"
    return "not a cilium-dbg bpf nat list entry"


def sniff(line: bytes) -> bool:
    """Whether a (first, non-blank) line looks like ``bpf nat list`` output."""
    return re.match(rb"(?:TCP|UDP|ICMPv6|ICMP|SCTP) (?:IN|OUT) ", line) is not None
