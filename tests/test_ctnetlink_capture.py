"""The ctnetlink reader on bytes a real kernel sent, without root.

tests/golden/ctnetlink-dumps.json holds every datagram of real dump answers (see
tests/golden/capture_ctnetlink.py, which also says what the table held). These tests run
the reader's boundary finder, message parser and masquerade filter on those bytes, laid
out in the receive buffer as ``ConntrackReader._dump`` lays them out, and check the counts
against the entries that were created, not against another path of the reader. The
kernel tests (tests/test_conntrack_reader.py) run the same code on live sockets.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import socket
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from egressgw.datapath.kernel import conntrack as ct
from egressgw.errors import DatapathError
from egressgw.net import Family, NatEndpoint

GOLDEN = Path(__file__).parent / "golden"
CAPTURE: dict[str, Any] = json.loads((GOLDEN / "ctnetlink-dumps.json").read_text())


def _capture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capture_ct", GOLDEN / "capture_ctnetlink.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CREATED = _capture_module().entries(CAPTURE["seed"])


def expected(family: int) -> Counter[NatEndpoint]:
    """What nat-stats must count: the source-NATed TCP/UDP/ICMP(v6) entries created."""
    version = 4 if family == socket.AF_INET else 6
    counts: Counter[NatEndpoint] = Counter()
    for e in CREATED:
        if e.egress is not None and e.src.version == version:
            counts[NatEndpoint(Family.of(e.src), e.proto, e.egress, e.dst, e.dport)] += 1
    return counts


def datagrams(dump: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(d) for d in dump["datagrams"]]


def received(chunks: list[bytes]) -> tuple[bytearray, int]:
    """The datagrams back to back in a receive buffer with the reader's spare room."""
    buffer = bytearray(sum(map(len, chunks)) + ct.RECV_ROOM)
    used = 0
    for chunk in chunks:
        buffer[used : used + len(chunk)] = chunk
        used += len(chunk)
    return buffer, used


DUMPS = CAPTURE["dumps"]
IDS = [f"{'ipv4' if d['family'] == socket.AF_INET else 'ipv6'}-"
       f"{'filtered' if d['filtered'] else 'all'}" for d in DUMPS]


@pytest.mark.parametrize("dump", DUMPS, ids=IDS)
def test_the_end_of_a_dump_is_found_only_in_its_last_datagram(dump: dict[str, Any]) -> None:
    chunks = datagrams(dump)
    buffer, _ = received(chunks)
    start = 0
    for index, chunk in enumerate(chunks):
        end = start + len(chunk)
        assert ct._ends_dump(buffer, start, end, dump["seq"]) == (index == len(chunks) - 1)
        start = end


@pytest.mark.parametrize("dump", DUMPS, ids=IDS)
def test_message_boundaries_found_by_numpy_match_the_walk(dump: dict[str, Any]) -> None:
    buffer, used = received(datagrams(dump))
    walked: list[int] = []
    assert ct._walk(buffer, 0, used, dump["seq"], walked) is True
    found = ct._message_offsets(buffer, used, dump["seq"], CAPTURE["port_id"])
    assert found.tolist() == walked
    # With a port id that is not ours the fast finder gives up and the walk decides.
    fallback = ct._message_offsets(buffer, used, dump["seq"], CAPTURE["port_id"] + 1)
    assert fallback.tolist() == walked


@pytest.mark.parametrize("dump", DUMPS, ids=IDS)
def test_counts_are_the_source_nated_entries_created(dump: dict[str, Any]) -> None:
    family, seq = dump["family"], dump["seq"]
    buffer, used = received(datagrams(dump))
    offsets = ct._message_offsets(buffer, used, seq, CAPTURE["port_id"])
    v4 = family == socket.AF_INET
    created = sum(1 for e in CREATED if (e.src.version == 4) == v4)
    natted = sum(1 for e in CREATED if (e.src.version == 4) == v4 and e.egress is not None)
    others = CAPTURE["other_protocols"] if v4 else 0  # SCTP, GRE, UDP-Lite: NATed, not counted
    assert len(offsets) == (natted if dump["filtered"] else created) + others
    counts: dict[tuple[bytes, bytes, int, int], int] = {}
    ct._count_batch(buffer, used, offsets, family, counts)
    endpoints = Counter({ct._endpoint(family, *key): n for key, n in counts.items()})
    assert endpoints == expected(family)
    slow: Counter[tuple[bytes, bytes, int, int]] = Counter()
    for offset in offsets.tolist():
        key = ct._slow_key(buffer, offset, family)
        if key is not None:
            slow[key] += 1
    assert dict(slow) == counts


def test_batches_split_anywhere_between_datagrams_count_the_same() -> None:
    dump = next(d for d in DUMPS if d["family"] == socket.AF_INET and not d["filtered"])
    chunks = datagrams(dump)
    total: Counter[tuple[bytes, bytes, int, int]] = Counter()
    for chunk in chunks:  # one datagram per batch, as when RECV_BATCH fills up
        buffer, used = received([chunk])
        counts: dict[tuple[bytes, bytes, int, int], int] = {}
        offsets = ct._message_offsets(buffer, used, dump["seq"], CAPTURE["port_id"])
        ct._count_batch(buffer, used, offsets, socket.AF_INET, counts)
        total.update(counts)
    endpoints = Counter({ct._endpoint(socket.AF_INET, *k): n for k, n in total.items()})
    assert endpoints == expected(socket.AF_INET)


def test_a_truncated_message_is_an_error_not_a_miscount() -> None:
    dump = DUMPS[0]
    buffer, used = received(datagrams(dump))
    first_length = int.from_bytes(buffer[0:4], "little")
    with pytest.raises(DatapathError, match="malformed netlink message"):
        ct._walk(buffer, 0, first_length - 8, dump["seq"], [])
    # The numpy finder does not accept a chain that stops short either; the walk then
    # refuses it.
    with pytest.raises(DatapathError):
        ct._message_offsets(buffer, used - 4, dump["seq"], CAPTURE["port_id"])


def test_statistics_match_conntrack_tools() -> None:
    stats = CAPTURE["stats"]
    buffer, used = received(datagrams(stats))
    offsets = ct._message_offsets(buffer, used, stats["seq"], CAPTURE["port_id"])
    totals = dict.fromkeys(ct.STATS_CPU_COUNTERS.values(), 0)
    ct._add_stats(buffer, offsets, totals)
    summed: Counter[str] = Counter()
    for name, value in re.findall(r"(\w+)=(\d+)", CAPTURE["conntrack_S"]):
        if name != "cpu":
            summed[name] += int(value)
    assert totals["insert"] == summed["insert"] == len(CREATED) + CAPTURE["other_protocols"]
    for name in ct.STATS_CPU_COUNTERS.values():
        assert totals[name] == summed[name], name


def test_the_capture_came_from_a_kernel() -> None:
    assert CAPTURE["kernel"]
    assert sum(len(d["datagrams"]) for d in DUMPS) >= len(DUMPS)
    first = base64.b64decode(DUMPS[0]["datagrams"][0])
    # nlmsghdr: a ctnetlink IPCTNL_MSG_CT_NEW message for our request and port id.
    length, msg_type, _flags, seq, pid = np.frombuffer(first[:16], dtype="<u4,<u2,<u2,<u4,<u4")[0]
    assert (msg_type, seq, pid) == (ct.CT_NEW, DUMPS[0]["seq"], CAPTURE["port_id"])
    assert length <= len(first)


@pytest.mark.kernel
def test_a_fresh_capture_counts_the_same() -> None:
    """The capture script, run for real: the kernel's answer today gives the same counts."""
    fresh = _capture_module().capture()
    for dump in fresh["dumps"]:
        buffer, used = received(datagrams(dump))
        offsets = ct._message_offsets(buffer, used, dump["seq"], fresh["port_id"])
        counts: dict[tuple[bytes, bytes, int, int], int] = {}
        ct._count_batch(buffer, used, offsets, dump["family"], counts)
        endpoints = Counter({ct._endpoint(dump["family"], *k): n for k, n in counts.items()})
        assert endpoints == expected(dump["family"])
