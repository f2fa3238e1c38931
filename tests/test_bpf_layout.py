"""The BPF datapath's user-space side without the kernel: layouts, listing, GC pacing."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egressgw.datapath.bpf import layout
from egressgw.datapath.bpf.compiler import build
from egressgw.datapath.bpf.gc import GcSchedule, find_keys
from egressgw.datapath.bpf.natmap import NatTable, endpoint_counts, iter_nat_list
from egressgw.dumps import iter_entries
from egressgw.errors import ConfigError, DatapathError
from egressgw.net import Direction, Family, Proto


def table4(rows: list[tuple[str, str, int, int, int, int, str, int, int]]) -> NatTable:
    """Rows of (daddr, saddr, dport, sport, proto, flags, xlate addr, xlate port, created)."""
    keys = np.zeros(len(rows), layout.KEY4)
    values = np.zeros(len(rows), layout.VALUE4)
    for i, (daddr, saddr, dport, sport, proto, flags, addr, port, created) in enumerate(rows):
        keys[i] = (ipaddress.IPv4Address(daddr).packed, ipaddress.IPv4Address(saddr).packed,
                   dport, sport, proto, flags)
        values[i] = (created, 1, created, 0, ipaddress.IPv4Address(addr).packed, port, b"\0\0")
    return NatTable(Family.IPV4, keys, values)


def test_key_and_value_sizes_are_ciliums() -> None:
    # pkg/maps/nat: TupleKey4 14 bytes, NatEntry4 40; TupleKey6 38, NatEntry6 56.
    assert [d.itemsize for d in (layout.KEY4, layout.VALUE4, layout.KEY6, layout.VALUE6)] == [
        14, 40, 38, 56]
    key = np.zeros(1, layout.KEY4)
    key["dport"] = 443
    # Ports are in network order in the key, as the program writes them.
    assert key.tobytes()[8:10] == b"\x01\xbb"


def test_listing_is_read_back_by_the_cilium_dump_reader() -> None:
    table = table4([
        ("198.51.100.10", "192.0.2.10", 443, 51234, 6, 0, "203.0.113.10", 65472, 100),
        ("203.0.113.10", "198.51.100.10", 65472, 443, 6, 1, "192.0.2.10", 51234, 100),
        ("198.51.100.10", "192.0.2.10", 0, 7, 1, 0, "203.0.113.10", 65473, 90),
        ("203.0.113.10", "198.51.100.10", 65473, 0, 1, 1, "192.0.2.10", 7, 90),
    ])
    text = "".join(iter_nat_list(table, now=112))
    assert text.splitlines()[0] == ("TCP OUT 192.0.2.10:51234 -> 198.51.100.10:443 XLATE_SRC "
                                    "203.0.113.10:65472 Created=12sec ago NeedsCT=1")
    entries = list(iter_entries(text.encode(), source="-"))
    assert [(e.direction, e.tuple.proto, e.created_ago) for e in entries] == [
        (Direction.OUT, Proto.TCP, 12), (Direction.IN, Proto.TCP, 12),
        (Direction.OUT, Proto.ICMP, 22), (Direction.IN, Proto.ICMP, 22)]
    from_dump = {e.endpoint: 1 for e in entries if e.endpoint is not None}
    assert endpoint_counts(table) == from_dump


def test_versions_and_their_search_parameters() -> None:
    assert [(v.clamp, v.retries, v.signal_thres) for v in layout.CILIUM_VERSIONS.values()] == [
        (0, 128, 64), (1, 128, 64), (1, 32, 16)]
    with pytest.raises(ConfigError, match="--cilium-version"):
        layout.cilium_version("1.15")


def test_policy_key_is_source_then_destination_prefix() -> None:
    key, value = layout.policy_entry(ipaddress.ip_address("192.0.2.10"),
                                     ipaddress.ip_network("198.51.100.0/25"),
                                     layout.POLICY_MASQUERADE,
                                     ipaddress.ip_address("203.0.113.10"))
    assert key == (57).to_bytes(4, "little") + bytes([192, 0, 2, 10, 198, 51, 100, 0])
    assert value == bytes([203, 0, 113, 10]) + (1).to_bytes(4, "little")


def test_gc_interval_adapts_like_ciliums() -> None:
    # calculateInterval: start 5 min; >25% deleted shrinks it, <5% grows it by half.
    gc = GcSchedule(now=0)
    assert gc.next_at == 300
    gc.after_pass(300, deleted=0, capacity=1000)
    assert gc.interval == 450
    gc.after_pass(750, deleted=500, capacity=1000)  # 50%: x (1 - 0.5)
    assert gc.interval == 225
    gc.after_pass(975, deleted=950, capacity=1000)  # 95% is capped at 90%
    assert gc.interval == 22
    gc.after_pass(997, deleted=1000, capacity=1000)
    assert gc.interval == 10  # floor
    for _ in range(40):
        gc.after_pass(gc.next_at, deleted=0, capacity=1000)
    assert gc.interval == 12 * 3600  # cap


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    main = "import sys; from egressgw.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", main, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_bpf_nat_list_without_a_datapath_says_where_it_looked(tmp_path: Path) -> None:
    done = run_cli("bpf", "nat", "list", "--bpffs", str(tmp_path), "--netns", "nothere")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"egressgw: error: no BPF datapath pinned at {tmp_path}/"
                                   "nothere (is the agent running with --datapath bpf?)")


def test_bad_bpf_flags_are_one_line_errors_and_exit_2() -> None:
    done = run_cli("bpf", "nat", "list", "--netns", "no such/ns")
    assert done.returncode == 2
    assert done.stderr.strip() == ("egressgw: error: --netns: 'no such/ns': not a network "
                                   "namespace name")
    done = run_cli("agent", "--datapath", "bpf", "--bpf-nat-global-max", "0", "--cleanup")
    assert done.returncode == 2 and "--bpf-nat-global-max" in done.stderr


def test_missing_clang_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DatapathError, match="apt-get install clang"):
        build(cache=tmp_path)


@pytest.mark.parametrize("key_type", [layout.KEY4, layout.KEY6], ids=["v4", "v6"])
def test_find_keys_agrees_with_a_dictionary(key_type: np.dtype[np.void]) -> None:
    rng = np.random.default_rng(7)
    width = key_type.itemsize

    def random_keys(n: int) -> bytes:
        return rng.integers(0, 4, size=(n, width), dtype=np.uint8).tobytes()

    keys = np.frombuffer(random_keys(3000), key_type)
    keys = np.unique(keys.view(f"V{width}")).view(key_type)  # a map's keys are unique
    # Joined as bytes: np.concatenate would make the big-endian port fields native.
    wanted = np.frombuffer(keys[rng.permutation(len(keys))[:500]].tobytes()
                           + random_keys(500), key_type)
    index = {k.tobytes(): i for i, k in enumerate(keys)}
    expected = [index.get(w.tobytes(), -1) for w in wanted]
    assert find_keys(keys, wanted).tolist() == expected
    assert sum(e >= 0 for e in expected) >= 500
    assert find_keys(keys[:0], wanted).tolist() == [-1] * len(wanted)
