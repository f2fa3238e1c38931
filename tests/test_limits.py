"""One rule for the saturation limit: the datapath decides (egressgw.limits).

Expected values are the ports counted from the ranges themselves: Cilium v1.16.2's
nat-stats divides by 65535 - (NodePortMax + 1); a netfilter SNAT rule hands out every
port of MIN-MAX; a plain masquerade uses 1024-65535.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_support import run_cli
from egressgw.config import NodePortRange
from egressgw.errors import ConfigError
from egressgw.limits import (
    NatPortRange,
    cilium_limit,
    datapath_limit,
    dump_limit,
    limit_from_document,
    resolve_limit,
)

ROOT = Path(__file__).parents[1]
CONNTRACK = ROOT / "tests/golden/conntrack-L.txt"  # real `conntrack -L` output
CILIUM = ROOT / "src/egressgw/examples/seed-node-nat-list.txt"
# The busiest tuple of the conntrack table: 3 TCP connections to 198.51.100.2:8080.
TOP = 3


run = run_cli


def test_cilium_divides_by_65535_minus_node_port_max_plus_one() -> None:
    assert cilium_limit(NodePortRange()).ports == 65535 - 32768
    assert cilium_limit(NodePortRange(30000, 65471)).ports == 65535 - 65472
    assert datapath_limit("cilium").ports == 32767


def test_netfilter_counts_every_port_of_the_rule() -> None:
    assert len(range(1024, 65535 + 1)) == 64512
    assert dump_limit("conntrack").ports == 64512
    assert dump_limit("conntrack").source.startswith("Linux masquerade default")
    assert dump_limit("conntrack", nat_port_range=NatPortRange.parse("40000-40063")).ports == 64
    # An explicit --node-port-range on a Linux dump: egressgw's own rule, MAX+1..65535.
    assert dump_limit("conntrack", node_port_range=NodePortRange(30000, 65471)).ports == 64
    assert dump_limit("cilium", node_port_range=NodePortRange(30000, 65471)).ports == 63


def test_bad_ranges_and_cilium_with_a_nat_port_range_are_refused() -> None:
    for text in ("1024", "0-10", "70000-70001", "a-b"):
        with pytest.raises(ConfigError, match="--nat-port-range"):
            NatPortRange.parse(text)
    assert NatPortRange.parse("1000-2000").ports == 1001
    with pytest.raises(ConfigError, match="--nat-port-range"):
        dump_limit("cilium", nat_port_range=NatPortRange(1024, 65535))


def test_documents_round_trip_the_limit() -> None:
    limit = dump_limit("conntrack", nat_port_range=NatPortRange(1024, 2047))
    assert limit_from_document({"limit": limit.document()}) == limit
    assert limit_from_document({"divisor": 5}) is None
    # Flags win over what a document says; the document wins over defaults.
    assert resolve_limit(documented=limit) == limit
    assert resolve_limit(documented=limit, nat_port_range=NatPortRange(1, 10)).ports == 10
    assert resolve_limit(datapath="netfilter").ports == 64512
    assert resolve_limit().ports == 32767
    # --datapath-model netfilter on a Cilium document: the document's range is Cilium's,
    # so the Linux default (or --nat-port-range) applies instead.
    agent = cilium_limit(NodePortRange())
    assert resolve_limit(documented=agent, datapath="netfilter").ports == 64512
    assert resolve_limit(documented=agent, datapath="netfilter",
                         nat_port_range=NatPortRange(1, 10)).ports == 10
    assert resolve_limit(documented=agent, datapath="cilium") == agent
    assert resolve_limit(documented=limit, datapath="netfilter") == limit


def test_nat_stats_on_dumps_uses_the_datapath_of_the_dump(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _out, err = run(capsys, "nat-stats", "--from", str(CONNTRACK))
    assert code == 0
    assert f"saturation ipv4: {TOP / 64512:.2%} ({TOP}/64512)" in err
    assert "limit: 64512 ports (netfilter: Linux masquerade default" in err
    code, out, _err = run(capsys, "nat-stats", "--from", str(CONNTRACK), "-o", "json",
                          "--nat-port-range", "40000-40063")
    doc = json.loads(out)
    assert doc["divisor"] == 64 and doc["saturation"]["ipv4"] == TOP / 64
    assert doc["limit"]["datapath"] == "netfilter" and doc["limit"]["portRange"] == "40000-40063"
    assert doc["limit"]["source"] == "--nat-port-range 40000-40063"
    code, out, _err = run(capsys, "nat-stats", "--from", str(CILIUM), "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["divisor"] == 32767 and doc["limit"]["datapath"] == "cilium"
    code, _out, err = run(capsys, "nat-stats", "--from", str(CILIUM),
                          "--nat-port-range", "1024-65535")
    assert code == 2 and err.count("\n") == 1 and "--nat-port-range" in err


def test_nat_stats_and_forecast_agree_on_one_conntrack_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The dump itself, and nat-stats' JSON of it, give forecast the same limit."""
    code, out, _err = run(capsys, "nat-stats", "--from", str(CONNTRACK), "-o", "json")
    assert code == 0
    stats = json.loads(out)
    document = tmp_path / "stats.json"
    document.write_text(out)
    for snapshots in ([f"{CONNTRACK}@0", f"{CONNTRACK}@60"],
                      [f"{document}@0", f"{document}@60"]):
        code, out, _err = run(capsys, "forecast", *snapshots, "-o", "json")
        assert code == 0, out
        forecast = json.loads(out)
        assert forecast["limit"] == stats["divisor"] == 64512
        assert forecast["portLimit"] == stats["limit"]


def test_plan_widens_the_range_by_the_datapath_limit() -> None:
    from egressgw.sim.plan import suggest_node_port_range  # noqa: PLC0415

    # The range only widens (64 ports fit already: nothing to suggest), by each limit.
    assert suggest_node_port_range(64)[0] is None
    assert suggest_node_port_range(64, datapath="netfilter")[0] is None
    cilium, _ = suggest_node_port_range(40000)
    netfilter, _ = suggest_node_port_range(40000, datapath="netfilter")
    assert cilium is not None and netfilter is not None
    assert 65535 - (cilium.max + 1) == 40000  # Cilium's divisor
    assert len(range(netfilter.max + 1, 65535 + 1)) == 40000  # the nft rule's ports


TAKEOVER_DUMP = """\
tcp      6 431998 ESTABLISHED src=192.0.2.2 dst=198.51.100.2 sport=42322 dport=8080 \
src=198.51.100.2 dst=198.51.100.1 sport=8080 dport=42322 [ASSURED] mark=0 use=1
tcp      6 118 TIME_WAIT src=192.0.2.2 dst=198.51.100.2 sport=42323 dport=8080 \
src=198.51.100.2 dst=198.51.100.1 sport=8080 dport=42323 [ASSURED] mark=0 use=1
tcp      6 8 CLOSE src=192.0.2.2 dst=198.51.100.2 sport=42324 dport=8080 \
src=198.51.100.2 dst=198.51.100.1 sport=8080 dport=42324 [ASSURED] mark=0 use=1
tcp      6 100 FIN_WAIT src=192.0.2.2 dst=198.51.100.2 sport=42325 dport=8080 \
src=198.51.100.2 dst=198.51.100.1 sport=8080 dport=42325 [ASSURED] mark=0 use=1
udp      17 29 src=192.0.2.2 dst=198.51.100.2 sport=36202 dport=8080 \
src=198.51.100.2 dst=198.51.100.1 sport=8080 dport=36202 mark=0 use=1
"""


@pytest.mark.parametrize("prefix", ["", "ipv4     2 "])
def test_conntrack_dumps_count_time_wait_and_close_apart(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prefix: str
) -> None:
    """4 TCP entries of which TIME_WAIT and CLOSE can be taken over: 2 of 4 ports block."""
    dump = tmp_path / "conntrack.txt"
    dump.write_text("".join(prefix + line + "\n" for line in TAKEOVER_DUMP.splitlines()))
    code, out, _err = run(capsys, "nat-stats", "--from", str(dump), "-o", "json",
                          "--nat-port-range", "1-4")
    assert code == 0
    doc = json.loads(out)
    tcp = next(row for row in doc["rows"] if row["proto"] == "TCP")
    udp = next(row for row in doc["rows"] if row["proto"] == "UDP")
    assert (tcp["count"], tcp["reusable"], tcp["blocking"]) == (4, 2, 2)
    assert (udp["count"], udp["reusable"]) == (1, 0)
    assert doc["topBlocking"]["ipv4"] == 2 and doc["saturation"]["ipv4"] == 2 / 4
    code, _out, err = run(capsys, "nat-stats", "--from", str(dump), "--nat-port-range", "1-4")
    assert ("saturation ipv4: 50.00% (2/4; top tuple 4 entries, 2 of them the kernel can "
            "take over)") in err


def test_forecast_counts_what_blocks_like_nat_stats(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The same conntrack table: forecast's share of the limit is nat-stats' saturation."""
    dump = tmp_path / "conntrack.txt"
    dump.write_text(TAKEOVER_DUMP)
    code, out, _err = run(capsys, "nat-stats", "--from", str(dump), "-o", "json",
                          "--nat-port-range", "1-4")
    stats = json.loads(out)
    document = tmp_path / "stats.json"
    document.write_text(out)
    for snapshot in (dump, document):
        code, out, _err = run(capsys, "forecast", f"{snapshot}@0", f"{snapshot}@60",
                              "--nat-port-range", "1-4", "-o", "json")
        assert code == 0, out
        tcp = next(t for t in json.loads(out)["tuples"] if t["proto"] == "TCP")
        assert tcp["count"] / 4 == stats["saturation"]["ipv4"] == 0.5
