"""``conntrack -L`` dumps: real captured output, variants, masquerade detection, bad lines."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from egressgw.dumps import count_endpoints, iter_entries
from egressgw.errors import InputError
from egressgw.net import Direction, Endpoint, Family, NatEndpoint, Proto, parse_ip

GOLDEN = Path(__file__).parent / "golden"


def ep(proto: Proto, egress: str, remote: str, port: int = 0) -> NatEndpoint:
    ip = parse_ip(egress)
    return NatEndpoint(Family.of(ip), proto, ip, parse_ip(remote), port)


# What tests/golden/capture_conntrack.py does through the gateway (see its docstring).
CAPTURED_IPV6 = {
    ep(Proto.TCP, "2001:db8:2::1", "2001:db8:2::2", 8080): 1,
    ep(Proto.ICMPV6, "2001:db8:2::1", "2001:db8:2::2"): 1,
}
CAPTURED = {
    ep(Proto.TCP, "198.51.100.1", "198.51.100.2", 8080): 3,
    ep(Proto.UDP, "198.51.100.1", "198.51.100.2", 5353): 1,
    ep(Proto.UDP, "198.51.100.1", "198.51.100.2", 9): 1,
    ep(Proto.ICMP, "198.51.100.1", "198.51.100.2"): 1,
    # inserted over ctnetlink: SYN_SENT2 and NONE; zone 7 + mark 5 and zone-orig 3
    ep(Proto.TCP, "198.51.100.1", "198.51.100.3", 443): 2,
    ep(Proto.UDP, "198.51.100.1", "198.51.100.3", 53): 2,
    **CAPTURED_IPV6,
}
# Every file the capture script writes, with what each must count.
GOLDEN_OUTPUTS = {
    "conntrack-L.txt": CAPTURED,
    "conntrack-L-extended.txt": CAPTURED,
    "conntrack-L-id.txt": CAPTURED,
    "conntrack-L-ktimestamp.txt": CAPTURED,
    "conntrack-L-labels.txt": CAPTURED,
    "conntrack-L-all.txt": CAPTURED,
    "conntrack-L-ipv6.txt": CAPTURED_IPV6,
    "conntrack-L-ipv6-extended.txt": CAPTURED_IPV6,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_OUTPUTS))
def test_real_capture_counts_the_masqueraded_connections(name: str) -> None:
    data = (GOLDEN / name).read_bytes()
    dump = count_endpoints(data, source=name)
    assert dump.format == "conntrack"
    assert dump.counts == GOLDEN_OUTPUTS[name]
    assert dump.skipped == 0
    assert dump.lines == data.count(b"\n")


def test_the_capture_has_what_it_promises() -> None:
    """Accounting and timestamps on, the option fields printed, other protocols there."""
    every = (GOLDEN / "conntrack-L-all.txt").read_text()
    assert every.count("packets=") == 2 * every.count("\n")
    for needle in ("delta-time=", "[start=", " id=", "ipv4     2 ", "ipv6     10 ",
                   " SYN_SENT2 ", " NONE ", "zone=7", "mark=5", "zone-orig=3",
                   "sctp     132", "dccp     33", "gre      47", "udplite  136", "unknown  2 "):
        assert needle in every, needle
    # The ping of the gateway itself is tracked but not source-NATed.
    assert "dst=192.0.2.1 type=8" in every


def test_bundled_conntrack_example_is_the_real_capture() -> None:
    example = GOLDEN.parents[1] / "src/egressgw/examples/gateway-conntrack-L.txt"
    assert count_endpoints(example.read_bytes(), source=str(example)).counts == CAPTURED


def test_the_summary_line_counts_nothing() -> None:
    with_summary = (GOLDEN / "conntrack-L.txt").read_bytes() + (
        GOLDEN / "conntrack-L.stderr.txt"
    ).read_bytes()
    assert b"flow entries have been shown." in with_summary
    assert count_endpoints(with_summary, source="x").counts == CAPTURED


def test_entries_of_a_masqueraded_connection_mirror_cilium() -> None:
    entries = list(iter_entries((GOLDEN / "conntrack-L.txt").read_bytes(), source="x"))
    assert len(entries) == 2 * sum(CAPTURED.values())
    assert [e.direction for e in entries[:2]] == [Direction.OUT, Direction.IN]
    tcp = [e for e in entries if e.tuple.proto is Proto.TCP and e.tuple.family is Family.IPV4]
    for out, back in zip(tcp[::2], tcp[1::2], strict=True):
        assert out.tuple.src.ip == parse_ip("192.0.2.2")
        assert out.xlate == back.tuple.dst
        assert back.xlate == out.tuple.src
        assert back.tuple.src in (Endpoint(parse_ip("198.51.100.2"), 8080),
                                  Endpoint(parse_ip("198.51.100.3"), 443))
    icmp = [e for e in entries if e.tuple.proto is Proto.ICMP]
    assert [(e.tuple.src.port, e.tuple.dst.port) for e in icmp] == [(4242, 0), (0, 4242)]


VARIANTS = [
    # zone, secctx, offload flags and labels after the reply tuple
    "tcp      6 117 TIME_WAIT src=192.0.2.7 dst=203.0.113.9 sport=40000 dport=443 "
    "src=203.0.113.9 dst=198.51.100.1 sport=443 dport=61000 [ASSURED] [OFFLOAD] mark=3 "
    "secctx=system_u:object_r:unlabeled_t:s0 zone=2 use=1",
    # directional zones print after each tuple
    "tcp      6 431999 ESTABLISHED src=192.0.2.7 dst=203.0.113.9 sport=40003 dport=443 "
    "zone-orig=1 src=203.0.113.9 dst=198.51.100.1 sport=443 dport=40003 zone-reply=2 "
    "[ASSURED] mark=0 use=1",
    # a SYN that got no answer yet
    "tcp      6 119 SYN_SENT src=192.0.2.8 dst=203.0.113.9 sport=40001 dport=443 [UNREPLIED] "
    "src=203.0.113.9 dst=198.51.100.1 sport=443 dport=40001 mark=0 use=1",
    # DNAT only (a service): the reply goes back to the original source, not counted
    "tcp      6 300 ESTABLISHED src=192.0.2.9 dst=198.51.100.80 sport=40002 dport=80 "
    "src=10.0.0.5 dst=192.0.2.9 sport=8080 dport=40002 [ASSURED] mark=0 use=1",
    # protocols nat-stats does not count
    "sctp     132 3 ESTABLISHED src=192.0.2.7 dst=203.0.113.9 sport=5000 dport=5000 "
    "src=203.0.113.9 dst=198.51.100.1 sport=5000 dport=5000 [ASSURED] mark=0 use=1",
    "gre      47 179 src=192.0.2.7 dst=203.0.113.9 srckey=0x0 dstkey=0x0 "
    "src=203.0.113.9 dst=198.51.100.1 srckey=0x0 dstkey=0x0 [ASSURED] mark=0 use=1",
    "unknown  2 599 src=192.0.2.7 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=192.0.2.7 "
    "mark=0 use=1",
]


def test_conntrack_variants() -> None:
    dump = count_endpoints("\n".join(VARIANTS).encode(), source="v.txt")
    assert dump.counts == {ep(Proto.TCP, "198.51.100.1", "203.0.113.9", 443): 3}
    assert dump.lines == len(VARIANTS)
    entries = list(iter_entries("\n".join(VARIANTS).encode(), source="v.txt"))
    assert len(entries) == 6


GARBLED = [
    ("truncated", VARIANTS[0][:60]),
    ("no-reply", VARIANTS[0].split(" src=203.0.113.9")[0]),
    ("octet", VARIANTS[0].replace("198.51.100.1", "198.51.100.256")),
    ("mixed", VARIANTS[0].replace("198.51.100.1", "2001:db8::1")),
    ("port", VARIANTS[0].replace("sport=443 dport=61000", "sport=99999 dport=61000")),
    ("junk", "this is not conntrack"),
]


@pytest.mark.parametrize(("why", "bad"), GARBLED, ids=[g[0] for g in GARBLED])
def test_a_garbled_line_is_named_by_file_and_line(why: str, bad: str) -> None:
    data = "\n".join([VARIANTS[0], VARIANTS[2], bad, VARIANTS[3]]).encode()
    with pytest.raises(InputError) as caught:
        count_endpoints(data, source="ct.txt")
    assert str(caught.value).startswith("ct.txt:3: ")
    with pytest.raises(InputError, match=r"^ct.txt:3: "):
        list(iter_entries(data, source="ct.txt"))
    skipped = count_endpoints(data, source="ct.txt", skip_invalid=True)
    assert skipped.skipped == 1
    assert skipped.counts == {ep(Proto.TCP, "198.51.100.1", "203.0.113.9", 443): 2}


def _capture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capture", GOLDEN / "capture_conntrack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.kernel
def test_live_capture_in_network_namespaces() -> None:
    """The fixture's generator, run for real: masquerade in a namespace, read conntrack -L."""
    outputs = _capture_module().capture()
    assert set(outputs) == {*GOLDEN_OUTPUTS, "conntrack-L.stderr.txt"}
    for name, expected in GOLDEN_OUTPUTS.items():
        dump = count_endpoints(outputs[name].encode(), source=name, fmt="auto")
        assert dump.counts == expected, name
    assert "packets=" in outputs["conntrack-L.txt"]  # accounting was on
    assert "flow entries have been shown" in outputs["conntrack-L.stderr.txt"]


# A captured line (conntrack-L-all.txt, with -o extended,id,ktimestamp) to vary.
REAL = (
    "ipv4     2 tcp      6 299 SYN_SENT2 src=192.0.2.2 dst=198.51.100.3 sport=41000 dport=443 "
    "packets=0 bytes=0 [UNREPLIED] src=198.51.100.3 dst=198.51.100.1 sport=443 dport=41000 "
    "packets=0 bytes=0 mark=0 delta-time=0 [start=Sat Dec  5 07:45:56 2026] use=1 id=774218576"
)
REAL_ENDPOINT = ep(Proto.TCP, "198.51.100.1", "198.51.100.3", 443)
# libnetfilter_conntrack's TCP state names (src/conntrack/constants.c; LISTEN is what
# versions before 1.0.7 printed for SYN_SENT2).
TCP_STATE_NAMES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                   "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2", "LISTEN"]


@pytest.mark.parametrize("state", TCP_STATE_NAMES)
def test_every_tcp_state_is_counted(state: str) -> None:
    line = REAL.replace(" SYN_SENT2 ", f" {state} ")
    assert count_endpoints(line.encode(), source="x").counts == {REAL_ENDPOINT: 1}


# What conntrack-tools prints for kernels and options this machine cannot show (the order
# is libnetfilter_conntrack's __snprintf_conntrack_default).
OPTIONAL_FIELDS = [
    REAL.replace("mark=0", "[OFFLOAD] mark=0"),
    REAL.replace("mark=0", "[HW_OFFLOAD] mark=0"),
    REAL.replace("mark=0", "[ASSURED] mark=0 secmark=7 secctx=system_u:object_r:unlabeled_t:s0"),
    REAL.replace("dport=41000 packets=0", "dport=41000 zone-reply=4 packets=0"),
    REAL.replace("2026] use=1", "2026] [stop=Sat Dec  5 07:46:56 2026] helper=ftp use=1"),
    REAL + " labels=egress,audited",
    REAL.replace(" id=774218576", "").replace("ipv4     2 ", ""),
]


@pytest.mark.parametrize("line", OPTIONAL_FIELDS)
def test_optional_fields_are_read(line: str) -> None:
    dump = count_endpoints(line.encode(), source="x")
    assert (dump.counts, dump.skipped) == ({REAL_ENDPOINT: 1}, 0)


BAD_LINES = [
    ("extended garbage", "ipv4     2 garbage that is not conntrack"),
    ("other protocol garbage", "ipv4     2 sctp     132 3 whatever"),
    ("name and number", REAL.replace("tcp      6", "tcp      17")),
    ("unknown for a known number", REAL.replace("tcp      6", "unknown  6")),
    ("layer 3 number", REAL.replace("ipv4     2", "ipv4     10")),
    ("layer 3 family", REAL.replace("ipv4     2", "ipv6     10")),
    ("state", REAL.replace("SYN_SENT2", "SYN_SENT3")),
    ("state on udp", REAL.replace("tcp      6", "udp      17")),
    ("icmp fields on tcp", REAL.replace("sport=41000 dport=443", "type=8 code=0 id=4")),
    ("port range", REAL.replace("sport=443", "sport=65536")),
    ("unicode digit", REAL.replace("sport=443", "sport=44\u0663")),
    ("octet", REAL.replace("dst=198.51.100.1", "dst=198.51.100.256")),
    ("zone in address", REAL.replace("dst=198.51.100.1", "dst=fe80::1%eth0")),
    ("reply missing", REAL.split(" src=198.51.100.3", maxsplit=1)[0]),
    ("field order", REAL.replace("mark=0 delta-time=0", "delta-time=0 mark=0")),
    ("unknown field", REAL.replace("use=1", "use=1 frob=2")),
    ("icmpv6 on ipv4", REAL.replace("tcp      6 299 SYN_SENT2", "icmpv6   58 299").replace(
        "sport=41000 dport=443", "type=128 code=0 id=5").replace(
        "sport=443 dport=41000", "type=129 code=0 id=5")),
]


@pytest.mark.parametrize(("why", "bad"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_an_invalid_line_is_an_error_in_every_output_format(why: str, bad: str) -> None:
    data = "\n".join([REAL, REAL, bad, *[REAL] * 700]).encode()
    with pytest.raises(InputError, match=r"^ct\.txt:3: "):
        count_endpoints(data, source="ct.txt")
    with pytest.raises(InputError, match=r"^ct\.txt:3: "):
        list(iter_entries(data, source="ct.txt"))
    skipped = count_endpoints(data, source="ct.txt", skip_invalid=True)
    assert (skipped.skipped, skipped.counts) == (1, {REAL_ENDPOINT: 702})


def test_the_first_bad_line_is_named_when_a_later_one_is_bad_too() -> None:
    later = REAL.replace("ipv4     2 tcp", "ipv4     2 garbage")
    earlier = REAL.replace("sport=443", "sport=99999")  # passes a loose shape, not the range
    data = "\n".join([REAL, REAL, earlier, *[REAL] * 600, later]).encode()
    with pytest.raises(InputError, match=r"^ct\.txt:3: "):
        count_endpoints(data, source="ct.txt")


def _nat_stats(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    dump = tmp_path / "ct.txt"
    dump.write_text(text)
    program = "import sys; from egressgw.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", program, "nat-stats", "--from", str(dump),
                           *args], capture_output=True, text=True, check=False)


def test_an_empty_table_with_exit_0_means_nothing_was_masqueraded(tmp_path: Path) -> None:
    not_nated = "\n".join(
        line for line in (GOLDEN / "conntrack-L-all.txt").read_text().splitlines()
        if "dst=192.0.2.1 " in line or " sctp " in line or " gre " in line)
    done = _nat_stats(tmp_path, not_nated + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == []  # the header only
    garbage = not_nated + "\nipv4     2 tcp      6 garbage\n"
    done = _nat_stats(tmp_path, garbage)
    assert done.returncode == 2
    assert done.stderr.startswith("egressgw: error: ") and done.stderr.count("\n") == 1
    assert f"ct.txt:{not_nated.count(chr(10)) + 2}: not a conntrack -L line" in done.stderr


@pytest.mark.parametrize("output", ["table", "json"])
def test_skipped_lines_are_always_counted_on_stderr(tmp_path: Path, output: str) -> None:
    text = (GOLDEN / "conntrack-L.txt").read_text() + "ipv4     2 tcp      6 garbage\n"
    done = _nat_stats(tmp_path, text, "--skip-invalid", "-o", output)
    assert done.returncode == 0, done.stderr
    assert "skipped 1 invalid line(s)" in done.stderr


@pytest.mark.parametrize("state", TCP_STATE_NAMES)
def test_reusable_connections_are_counted_in_the_same_pass(state: str) -> None:
    # The bulk count's takeover column against the takeover module's own line filter
    # (egressgw.dumps.takeover), which picks the lines by their state word.
    from egressgw.dumps.takeover import takeover_counts  # noqa: PLC0415

    line = REAL.replace(" SYN_SENT2 ", f" {state} ")
    other = REAL.replace(" SYN_SENT2 ", " ESTABLISHED ").replace("41000", "41001")
    data = "\n".join([line, other, line.replace("41000", "41002")]).encode()
    expected = {REAL_ENDPOINT: 2} if state in ("TIME_WAIT", "CLOSE", "SYN_SENT2") else {}
    assert takeover_counts(data, source="x") == expected
    assert count_endpoints(data, source="x").reusable == expected
    # Through the line-by-line path too (a bad line, skipped).
    broken = data + b"\ntcp 6 garbled\n"
    assert count_endpoints(broken, source="x", skip_invalid=True).reusable == expected


def test_golden_dumps_reusable_matches_the_takeover_filter() -> None:
    from egressgw.dumps.takeover import takeover_counts  # noqa: PLC0415

    for path in sorted(GOLDEN.glob("conntrack-L*.txt")):
        data = path.read_bytes()
        assert count_endpoints(data, source=path.name).reusable == takeover_counts(
            data, source=path.name), path.name
