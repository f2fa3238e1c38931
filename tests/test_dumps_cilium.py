"""``cilium-dbg bpf nat list`` dumps: entry parsing, the bulk count, and bad lines."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from egressgw.dumps import cilium, count_endpoints, count_file, detect_format, iter_entries
from egressgw.dumps.cilium import parse_entry, scan_in_parallel, scan_range
from egressgw.dumps.synthetic import bench_lines, format_entry, seed_node_dump
from egressgw.errors import ConfigError, InputError
from egressgw.net import Direction, Endpoint, Family, NatEndpoint, NatEntry, Proto, parse_ip
from egressgw.stats import compute_nat_stats, render_table

EXAMPLE = Path(__file__).parents[1] / "src/egressgw/examples/seed-node-nat-list.txt"

# Shapes cilium-dbg prints (pkg/maps/nat, pkg/tuple; v1.16 and older agents).
LINES = [
    "TCP OUT 10.244.1.5:51234 -> 104.198.14.52:443 XLATE_SRC 172.18.0.2:40000 "
    "Created=12sec ago NeedsCT=1",
    "TCP IN 104.198.14.52:443 -> 172.18.0.2:40000 XLATE_DST 10.244.1.5:51234 "
    "Created=12sec ago NeedsCT=1",
    "UDP IN 198.51.100.53:53 -> 172.18.0.2:33000 related XLATE_DST 10.244.1.5:33000 "
    "Created=? (raw 1234567) NeedsCT=0",
    "TCP OUT 10.244.1.9:80 -> 192.0.2.7:41000 service XLATE_SRC 172.18.0.2:41000 "
    "Created=3sec ago HostLocal=1",
    "ICMP IN 172.18.0.3:0 -> 172.18.0.2:38193 XLATE_DST 172.18.0.2:38193 "
    "Created=6292sec ago NeedsCT=1",
    "ICMPv6 IN [fc00:c111::3]:0 -> [fc00:c111::2]:51264 XLATE_DST [fc00:c111::2]:13300 "
    "Created=-1sec ago NeedsCT=0",
    "TCP IN [2001:db8::1]:443 -> [fd00::2]:40000 related service XLATE_DST [fd00::5]:51234 "
    "Created=7sec ago NeedsCT=1",
]


def test_every_field_of_an_out_entry() -> None:
    entry = parse_entry(LINES[0])
    assert entry is not None
    assert entry.direction is Direction.OUT
    assert entry.tuple.proto is Proto.TCP
    assert entry.tuple.src == Endpoint(parse_ip("10.244.1.5"), 51234)
    assert entry.tuple.dst == Endpoint(parse_ip("104.198.14.52"), 443)
    assert entry.xlate == Endpoint(parse_ip("172.18.0.2"), 40000)
    assert (entry.created_ago, entry.needs_ct) == (12.0, True)


def test_markers_raw_clock_and_host_local() -> None:
    related = parse_entry(LINES[2])
    assert related is not None and related.created_ago is None and related.needs_ct is False
    service = parse_entry(LINES[3])
    assert service is not None and service.needs_ct is None and service.created_ago == 3.0
    v6 = parse_entry(LINES[6])
    assert v6 is not None and v6.tuple.family is Family.IPV6
    assert v6.xlate == Endpoint(parse_ip("fd00::5"), 51234)


def test_icmp_ids_stand_in_the_ports() -> None:
    icmp = parse_entry(LINES[4])
    assert icmp is not None and icmp.tuple.proto is Proto.ICMP
    assert (icmp.tuple.src.port, icmp.tuple.dst.port) == (0, 38193)
    icmp6 = parse_entry(LINES[5])
    assert icmp6 is not None and icmp6.tuple.proto is Proto.ICMPV6
    assert icmp6.created_ago == -1.0


def test_only_in_entries_count_by_proto_egress_and_remote() -> None:
    dump = count_endpoints("\n".join(LINES).encode(), source="nat.txt")
    assert dump.format == "cilium"
    assert dump.lines == len(LINES)
    ip = parse_ip
    assert dump.counts == {
        NatEndpoint(Family.IPV4, Proto.TCP, ip("172.18.0.2"), ip("104.198.14.52"), 443): 1,
        NatEndpoint(Family.IPV4, Proto.UDP, ip("172.18.0.2"), ip("198.51.100.53"), 53): 1,
        NatEndpoint(Family.IPV4, Proto.ICMP, ip("172.18.0.2"), ip("172.18.0.3"), 0): 1,
        NatEndpoint(Family.IPV6, Proto.ICMPV6, ip("fc00:c111::2"), ip("fc00:c111::3"), 0): 1,
        NatEndpoint(Family.IPV6, Proto.TCP, ip("fd00::2"), ip("2001:db8::1"), 443): 1,
    }


def count_in_entries(entries: list[NatEntry]) -> Counter[NatEndpoint]:
    """Cilium's key of an IN entry: the remote port is the IN tuple's source port."""
    return Counter(
        NatEndpoint(e.tuple.family, e.tuple.proto, e.tuple.dst.ip, e.tuple.src.ip, e.tuple.src.port)
        for e in entries
        if e.direction is Direction.IN
    )


def test_bulk_count_equals_the_entry_path_and_the_line_by_line_path() -> None:
    data = "".join(bench_lines(4000, seed=7)).encode()
    bulk = count_endpoints(data, source="bench")
    entries = list(iter_entries(data, source="bench"))
    assert len(entries) == 4000
    assert bulk.counts == count_in_entries(entries)
    assert {ep.family for ep in bulk.counts} == {Family.IPV4, Family.IPV6}
    assert {ep.proto for ep in bulk.counts} == set(Proto)


def reader(data: bytes) -> cilium.Read:
    return lambda offset, size: data[offset : offset + size]


def test_the_forked_scan_counts_the_same_as_one_process() -> None:
    data = "".join(bench_lines(3000, seed=3)).encode()
    whole = scan_range(reader(data), 0, len(data))
    assert whole.lines == 3002 and whole.bad_offset == -1  # and a blank line after each map
    assert scan_in_parallel(reader(data), len(data)) == whole
    # A bad line in either half is reported by its offset and the lines before it.
    for at in (100, 2900):
        lines = data.splitlines(keepends=True)
        lines[at] = lines[at].replace(b" -> ", b" => ")
        broken = b"".join(lines)
        expected = (len(b"".join(lines[:at])), at)
        found = scan_in_parallel(reader(broken), len(broken))
        assert (found.bad_offset, found.lines) == expected
        found = scan_range(reader(broken), 0, len(broken))
        assert (found.bad_offset, found.lines) == expected


@pytest.mark.parametrize("chunk", [40, 300, 4096])
def test_chunk_size_does_not_change_the_count(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = "".join(bench_lines(600, seed=11)).encode()
    expected = scan_range(reader(data), 0, len(data))
    monkeypatch.setattr(cilium, "CHUNK_BYTES", chunk)  # 40: every line exceeds a chunk
    assert scan_range(reader(data), 0, len(data)) == expected


def test_halves_never_read_past_their_end(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lines longer than a chunk make the scan read on; it must stop at the range's end.
    monkeypatch.setattr(cilium, "CHUNK_BYTES", 16)
    data = "".join(bench_lines(40, seed=17)).encode()
    middle = cilium._line_start_after(reader(data), len(data) // 2, len(data))
    first = scan_range(reader(data), 0, middle)
    second = scan_range(reader(data), middle, len(data))
    assert first.lines + second.lines == 42
    assert Counter(first.keys) + Counter(second.keys) == Counter(
        scan_range(reader(data), 0, len(data)).keys
    )
    # A blank line right after the range: reading on in 16-byte steps would reach its
    # newline if the reads were not bounded by the range's end.
    for pad in range(16):
        data = (LINES[1] + "\n\n" + LINES[1] + "\n").encode()
        end = len(LINES[1]) + 1
        monkeypatch.setattr(cilium, "CHUNK_BYTES", 16 + pad)
        assert scan_range(reader(data), 0, end).lines == 1


@pytest.mark.parametrize("parallel_from", [1 << 40, 1000])
def test_files_are_streamed_with_the_same_results(
    parallel_from: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cilium, "PARALLEL_MIN_BYTES", parallel_from)
    monkeypatch.setattr(cilium, "CHUNK_BYTES", 4096)
    lines = "".join(bench_lines(2000, seed=13)).splitlines()
    path = tmp_path / "nat.txt"
    path.write_bytes("\r\n".join(lines).encode())  # CRLF and no final newline
    expected = count_endpoints("\n".join(lines).encode(), source=str(path))
    assert count_file(str(path)) == expected
    for number in (7, 1500):
        broken = list(lines)
        broken[number - 1] = broken[number - 1].replace(" -> ", " => ")
        path.write_text("\n".join(broken) + "\n")
        with pytest.raises(InputError) as caught:
            count_file(str(path))
        assert (caught.value.source, caught.value.line) == (str(path), number)
        assert " => " in str(caught.value)
        skipped = count_file(str(path), skip_invalid=True)
        assert skipped.skipped == 1 and skipped.lines == 2002


def test_a_pipe_is_read_whole_without_losing_its_start(tmp_path: Path) -> None:
    fifo = tmp_path / "dump.fifo"
    os.mkfifo(fifo)
    data = "".join(bench_lines(3000, seed=19)).encode()  # bigger than the sniffed head
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        counted = count_file(str(fifo))
    finally:
        writer.join()
    assert counted == count_endpoints(data, source=str(fifo))
    assert counted.lines == 3002


def test_file_formats_and_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n\n")
    assert count_file(str(empty)).counts == {}
    conntrack = Path(__file__).parent / "golden/conntrack-L.txt"
    assert count_file(str(conntrack)).format == "conntrack"
    with pytest.raises(InputError, match=r"nope\.txt: cannot read"):
        count_file(str(tmp_path / "nope.txt"))


def test_common_shapes_are_valid_and_none_ends_another() -> None:
    for shape in cilium.COMMON_SHAPES:
        assert shape.endswith(b"\n") and shape.count(b"\n") == 1
        assert cilium._ONE_SHAPE.fullmatch(shape[:-1]) is not None
        for other in cilium.COMMON_SHAPES:
            assert other == shape or not other.endswith(shape)


def test_a_line_that_merely_ends_in_a_common_shape_is_not_accepted() -> None:
    tcp_out = LINES[0]
    for prefix in ("S", "x", " ", "TCP OUT "):
        data = f"{LINES[1]}\n{prefix}{tcp_out}\n{LINES[1]}\n".encode()
        with pytest.raises(InputError) as caught:
            count_endpoints(data, source="d")
        assert caught.value.line == 2
    # SCTP ends in "TCP": valid, not counted.
    sctp = tcp_out.replace("TCP", "SCTP") + "\n" + LINES[1] + "\n"
    assert sum(count_endpoints(sctp.encode(), source="d").counts.values()) == 1


def test_lines_print_back_as_cilium_dbg_prints_them() -> None:
    for line in LINES[:2] + LINES[4:6]:
        entry = parse_entry(line)
        assert entry is not None
        assert format_entry(entry) == line


def test_bundled_example_is_what_the_generator_writes() -> None:
    assert EXAMPLE.read_text() == seed_node_dump()


def test_bundled_example_looks_like_a_real_node() -> None:
    entries = list(iter_entries(EXAMPLE.read_bytes(), source=str(EXAMPLE)))
    directions = Counter(e.direction for e in entries)
    assert directions[Direction.OUT] == directions[Direction.IN] == 350
    # Every OUT entry has its IN entry: reply tuple and translation mirror each other.
    outs = {(e.tuple.proto, e.xlate, e.tuple.dst) for e in entries if e.direction is Direction.OUT}
    ins = {
        (e.tuple.proto, e.tuple.dst, e.tuple.src) for e in entries if e.direction is Direction.IN
    }
    icmp = {Proto.ICMP, Proto.ICMPV6}
    assert {o for o in outs if o[0] not in icmp} == {i for i in ins if i[0] not in icmp}
    assert all(e.xlate.port >= 32768 for e in entries if e.direction is Direction.OUT)


def test_empty_and_blank_dumps_count_nothing() -> None:
    for data in (b"", b"\n", b"\n\n  \n"):
        dump = count_endpoints(data, source="empty.txt")
        assert dump.counts == {} and dump.skipped == 0
        assert list(iter_entries(data, source="empty.txt")) == []


def test_crlf_and_a_missing_final_newline_are_fine() -> None:
    text = "\r\n".join(LINES[:2]).encode()
    dump = count_endpoints(text, source="crlf.txt")
    assert sum(dump.counts.values()) == 1 and dump.lines == 2


def test_the_first_line_counts_too() -> None:
    dump = count_endpoints((LINES[1] + "\n").encode(), source="one.txt")
    assert sum(dump.counts.values()) == 1


GARBLED = [
    ("truncated", LINES[1][:40]),
    ("arrow", LINES[1].replace(" -> ", " => ")),
    ("letters", LINES[0].replace("10.244.1.5", "10.244.x.5")),
    ("direction", LINES[1].replace("XLATE_DST", "XLATE_SRC")),
    ("octet", LINES[1].replace("104.198.14.52", "104.198.14.520")),
    ("port", LINES[1].replace(":443 ", ":70000 ")),
    ("icmp-in-v6", LINES[5].replace("ICMPv6", "ICMP")),
    ("mixed", LINES[1].replace("104.198.14.52:443", "[2001:db8::1]:443")),
    ("no-port", LINES[1].replace("104.198.14.52:443", "104.198.14.52")),
    ("markers", LINES[6].replace("related service", "service related")),
    ("header", "Proto Dir Src Dst"),
]


@pytest.mark.parametrize(("why", "bad"), GARBLED, ids=[g[0] for g in GARBLED])
def test_a_garbled_line_is_named_by_file_and_line(why: str, bad: str) -> None:
    lines = [*LINES[:3], "", bad, *LINES[3:]]
    data = "\n".join(lines).encode()
    with pytest.raises(InputError) as caught:
        count_endpoints(data, source="node.txt")
    assert (caught.value.source, caught.value.line) == ("node.txt", 5)
    assert str(caught.value).startswith("node.txt:5: ")
    with pytest.raises(InputError) as caught:
        list(iter_entries(data, source="node.txt"))
    assert caught.value.line == 5
    skipped = count_endpoints(data, source="node.txt", skip_invalid=True)
    assert skipped.skipped == 1
    clean = count_endpoints("\n".join([*LINES[:3], *LINES[3:]]).encode(), source="clean")
    assert skipped.counts == clean.counts
    assert len(list(iter_entries(data, source="node.txt", skip_invalid=True))) == len(LINES)


@pytest.mark.parametrize("parallel_from", [1 << 40, 1000])
def test_skipping_bad_lines_keeps_every_good_line(
    parallel_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cilium, "PARALLEL_MIN_BYTES", parallel_from)
    monkeypatch.setattr(cilium, "CHUNK_BYTES", 2048)
    lines = "".join(bench_lines(3000, seed=23)).splitlines()
    garbled = dict.fromkeys([0, 1, 2, 500, 501, 1700, 2999, 3000], " => ")
    broken = [
        line.replace(" -> ", garbled[i]) if i in garbled else line for i, line in enumerate(lines)
    ]
    # A shape-valid IN line whose address does not parse.
    bad_key = next(i for i, line in enumerate(lines) if " IN " in line and i > 2100)
    broken[bad_key] = re.sub(r" -> \d+\.", " -> 999.", lines[bad_key], count=1)
    clean = [line for i, line in enumerate(lines) if i not in garbled and i != bad_key]
    dump = count_endpoints("\n".join(broken).encode(), source="b", skip_invalid=True)
    expected = count_endpoints("\n".join(clean).encode(), source="c")
    assert dump.counts == expected.counts
    assert dump.skipped == len(garbled) + 1
    text = "\n".join(broken)
    assert dump.lines == text.count("\n") + (not text.endswith("\n"))
    with pytest.raises(InputError) as caught:
        count_endpoints("\n".join(broken).encode(), source="b")
    assert caught.value.line == 1


def test_a_bad_address_is_named_by_its_first_line() -> None:
    lines = "".join(bench_lines(2000, seed=29)).splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("TCP IN ")][700]
    lines[at] = re.sub(r" -> \d+\.", " -> 999.", lines[at], count=1)
    with pytest.raises(InputError) as caught:
        count_endpoints("\n".join(lines).encode(), source="big")
    assert caught.value.line == at + 1
    assert "bad address '999.0.113" in str(caught.value)


def test_a_huge_bad_address_is_quoted_short() -> None:
    """A field of megabytes still makes a one-line error of a few hundred characters,
    on the bulk path and on the entry path."""
    line = f"TCP IN 192.0.2.1:80 -> {'9' * 100_000}:4000 XLATE_DST 10.0.0.1:5 Created=1sec ago"
    data = f"{line} NeedsCT=1\n".encode()
    for read in (count_endpoints, lambda d, source: list(iter_entries(d, source=source))):
        with pytest.raises(InputError) as caught:
            read(data, source="huge")
        message = str(caught.value)
        assert caught.value.line == 1 and "9999" in message
        assert "\n" not in message and len(message) < 300, len(message)


def test_a_bad_line_deep_in_a_big_dump_is_found() -> None:
    lines = "".join(bench_lines(6000, seed=5)).splitlines()  # several scan chunks
    number = random.Random(9).randrange(len(lines)) + 1
    lines[number - 1] = lines[number - 1].replace("Created=", "Created:")
    with pytest.raises(InputError) as caught:
        count_endpoints("\n".join(lines).encode(), source="big")
    assert caught.value.line == number


def test_format_is_detected_from_the_first_non_blank_line() -> None:
    assert detect_format(b"\n" + LINES[0].encode(), source="x") == "cilium"
    assert detect_format(b"tcp      6 10 CLOSE src=192.0.2.1 dst=", source="x") == "conntrack"
    assert detect_format(b"", source="x") is None
    with pytest.raises(InputError, match=r"x:2: cannot tell the format"):
        detect_format(b"\nhello world\n", source="x")
    with pytest.raises(ConfigError, match="--format"):
        detect_format(b"", source="x", fmt="pcap")


def test_forcing_the_wrong_format_fails_on_the_first_line() -> None:
    with pytest.raises(InputError) as caught:
        count_endpoints(LINES[0].encode(), source="nat.txt", fmt="conntrack")
    assert caught.value.line == 1


# -- every field checked, the first bad line named ----------------------------------------

OUT_LINE = LINES[0]  # TCP OUT 10.244.1.5:51234 -> 104.198.14.52:443 XLATE_SRC 172.18.0.2:40000
IN_LINE = LINES[1]
# Corruptions the shape check alone cannot see (it deletes digits): each must be an error.
HIDDEN = [
    ("digit in TCP IN", IN_LINE.replace("TCP IN", "TCP I7N")),
    ("digit in proto", IN_LINE.replace("TCP IN", "TC7P IN")),
    ("digit in arrow", IN_LINE.replace(" -> ", " -7> ")),
    ("digit before arrow", IN_LINE.replace(":443 -> ", ":443 7-> ")),
    ("digit in keyword", IN_LINE.replace("XLATE_DST", "XLATE_D7ST")),
    ("digit in created", IN_LINE.replace("sec ago", "se7c ago")),
    ("egress port range", IN_LINE.replace(":40000 ", ":99999 ")),
    ("translated port range", OUT_LINE.replace(":40000 ", ":65536 ")),
    ("out source octet", OUT_LINE.replace("10.244.1.5", "10.244.1.256")),
    ("out source port", OUT_LINE.replace(":51234 ", ":651234 ")),
    ("translated octet", IN_LINE.replace("XLATE_DST 10.244.1.5", "XLATE_DST 10.244.1.500")),
    ("leading zero octet", OUT_LINE.replace("10.244.1.5", "10.244.01.5")),
    ("leading zero port", OUT_LINE.replace(":443 ", ":0443 ")),
    ("empty octet", OUT_LINE.replace("10.244.1.5", "10.244..5")),
    ("empty port", OUT_LINE.replace(":40000 ", ": ")),
    ("empty created", OUT_LINE.replace("=12sec", "=sec")),
    ("empty needs-ct", OUT_LINE.replace("NeedsCT=1", "NeedsCT=")),
    ("unicode digit", OUT_LINE.replace(":443 ", ":44\u0663 ")),
    ("v6 group", LINES[6].replace("[fd00::2]", "[fd00:12345::2]")),
    ("v6 zone", LINES[6].replace("[fd00::5]", "[fd00::5%eth0]")),
]


# The digits of common chunks: numpy (big dumps) or the strict regex (small ones).
DIGIT_CHECKS = {"numpy": 0, "regex": 1 << 40}


@pytest.mark.parametrize("numpy_from", DIGIT_CHECKS.values(), ids=DIGIT_CHECKS.keys())
@pytest.mark.parametrize(("why", "bad"), HIDDEN, ids=[h[0] for h in HIDDEN])
def test_a_line_with_misplaced_or_out_of_range_digits_is_an_error(
    why: str, bad: str, numpy_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cilium, "NUMPY_MIN_BYTES", numpy_from)
    good = "".join(bench_lines(3000, seed=31)).splitlines()  # several chunks of common shapes
    for at in (2, 2500):
        lines = [*good[:at], bad, *good[at:]]
        data = "\n".join(lines).encode()
        with pytest.raises(InputError) as caught:
            count_endpoints(data, source="node.txt")
        assert caught.value.line == at + 1, why
        with pytest.raises(InputError) as caught:
            list(iter_entries(data, source="node.txt"))
        assert caught.value.line == at + 1, why
        skipped = count_endpoints(data, source="node.txt", skip_invalid=True)
        assert skipped.skipped == 1
        assert skipped.counts == count_endpoints("\n".join(good).encode(), source="x").counts


def test_the_first_bad_line_is_named_not_a_later_one() -> None:
    lines = "".join(bench_lines(2000, seed=37)).splitlines()
    third = next(i for i, line in enumerate(lines) if line.startswith("TCP IN ") and i > 2)
    lines[third] = re.sub(r" -> \d+\.", " -> 999.", lines[third], count=1)  # bad address
    lines[1500] = lines[1500].replace(" -> ", " => ")  # and a bad shape much later
    with pytest.raises(InputError) as caught:
        count_endpoints("\n".join(lines).encode(), source="big")
    assert caught.value.line == third + 1


# NAT46x64 nodes: the IPv6 map holds IPv4-mapped addresses, printed by Go's net.IP.String()
# in dotted form inside the brackets; Cilium's nat-stats counts them as ipv6 entries.
MAPPED = [
    "TCP IN [192.0.2.80]:443 -> [192.168.64.2]:40000 XLATE_DST [fd00::5]:51234 "
    "Created=7sec ago NeedsCT=1",
    "TCP IN [::ffff:192.0.2.80]:443 -> [::ffff:192.168.64.2]:40001 XLATE_DST [fd00::5]:51235 "
    "Created=7sec ago NeedsCT=1",
    "TCP OUT [fd00::5]:51234 -> [192.0.2.80]:443 XLATE_SRC [192.168.64.2]:40000 "
    "Created=7sec ago NeedsCT=1",
]


def test_ipv4_mapped_addresses_in_the_ipv6_map_count_as_ipv6() -> None:
    dump = count_endpoints("\n".join(MAPPED).encode(), source="nat46.txt")
    egress = ipaddress.IPv6Address("::ffff:192.168.64.2")
    remote = ipaddress.IPv6Address("::ffff:192.0.2.80")
    assert dump.counts == {NatEndpoint(Family.IPV6, Proto.TCP, egress, remote, 443): 2}
    entries = list(iter_entries("\n".join(MAPPED).encode(), source="nat46.txt"))
    assert [e.tuple.family for e in entries] == [Family.IPV6] * 3
    assert entries[2].xlate == Endpoint(egress, 40000)


def test_ipv4_mapped_rows_print_as_cilium_prints_them() -> None:
    dump = count_endpoints("\n".join(MAPPED).encode(), source="nat46.txt")
    table = render_table(compute_nat_stats(dump.counts, entries=30, divisor=32767).rows)
    assert table.splitlines()[1].split() == [
        "ipv6", "TCP", "[192.168.64.2]", "[192.0.2.80]:443", "2"]


def test_a_failing_forked_child_is_reported_and_its_half_rescanned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = "".join(bench_lines(3000, seed=3)).encode()
    whole = scan_range(reader(data), 0, len(data))
    real_dumps = cilium.marshal.dumps
    parent = os.getpid()

    def failing_in_the_child(value: object) -> bytes:
        if os.getpid() != parent:
            raise MemoryError("no room")
        return real_dumps(value)

    monkeypatch.setattr(cilium.marshal, "dumps", failing_in_the_child)
    before = cilium.FORK_FAILURES.value
    with caplog.at_level("WARNING", logger="egressgw.dumps.cilium"):
        assert scan_in_parallel(reader(data), len(data)) == whole
    assert cilium.FORK_FAILURES.value == before + 1
    assert "MemoryError('no room')" in caplog.text
    assert "forked child" in caplog.text


@pytest.mark.parametrize("numpy_from", DIGIT_CHECKS.values(), ids=DIGIT_CHECKS.keys())
def test_a_hidden_bad_digit_deep_in_a_forked_file_scan_is_named(
    numpy_from: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fast path as nat-stats runs it on a big file: streamed, the second half in the
    # forked child, chunks of common shapes; the bad line is one only the digit check sees.
    monkeypatch.setattr(cilium, "NUMPY_MIN_BYTES", numpy_from)
    monkeypatch.setattr(cilium, "PARALLEL_MIN_BYTES", 1000)
    lines = "".join(bench_lines(6000, seed=43)).splitlines()
    path = tmp_path / "nat.txt"
    failures = cilium.FORK_FAILURES.value
    for number, old, new in ((5700, "XLATE_", "XLATE7_"), (4000, ".", ".256")):
        broken = list(lines)
        assert old in broken[number - 1]
        broken[number - 1] = broken[number - 1].replace(old, new, 1)
        path.write_text("\n".join(broken) + "\n")
        with pytest.raises(InputError) as caught:
            count_file(str(path))
        assert (caught.value.source, caught.value.line) == (str(path), number)
        skipped = count_file(str(path), skip_invalid=True)
        assert (skipped.skipped, skipped.lines) == (1, len(lines))
    assert cilium.FORK_FAILURES.value == failures  # the child's half was read by the child


def test_small_dumps_do_not_load_numpy_and_big_ones_do(tmp_path: Path) -> None:
    # Which digit check runs is seen from outside: numpy is imported only for the big one.
    path = tmp_path / "nat.txt"
    path.write_text("\n".join([OUT_LINE, IN_LINE] * 50) + "\n")  # common shapes only
    program = (
        "import sys\n"
        "from egressgw.dumps import cilium, count_file\n"
        "count_file(sys.argv[1])\n"
        "print('numpy' in sys.modules)\n"
        "cilium.NUMPY_MIN_BYTES = 0\n"
        "count_file(sys.argv[1])\n"
        "print('numpy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program, str(path)],
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]
