"""simulate end to end on small workloads: consistent counters, the port limit, routing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from egressgw.cli import main
from egressgw.config import NodePortRange
from egressgw.datapath.model import DropReason
from egressgw.policy import compile_rules, load_inventory, load_policies
from egressgw.sim.report import interval_rows, render_summary, result_document, tries_buckets
from egressgw.sim.simulate import SimSettings, simulate
from egressgw.sim.workload import load_workload, parse_workload

EXAMPLES = Path(__file__).parents[1] / "src" / "egressgw" / "examples"
# NAT ports 65526..65535: nat.h's clamp reaches 65526..65534, so 9 allocatable ports.
TINY_RANGE = NodePortRange(30000, 65525)
TINY_PORTS = 9


def workload(*, rate=10.0, duration="forever", count=20, egress=("10.1.0.0",), **extra):
    client = {
        "count": count,
        "cidr": "10.244.0.0/24",
        "arrivals": {"process": "constant", "rate": rate},
        "duration": duration,
        **extra,
    }
    return parse_workload(
        {
            "egress_ips": list(egress),
            "destinations": [{"address": "10.2.0.0:8080", "protocol": "tcp"}],
            "clients": [client],
        },
        source="w.yaml",
    )


def test_long_lived_connections_beyond_the_ports_give_exactly_that_many_drops():
    # 2 connections a second for 10 s: 20 held-open connections for 9 ports.
    result = simulate(
        workload(rate=2.0), SimSettings(duration=10.0, node_port_range=TINY_RANGE, seed=3)
    )
    totals = result.totals
    assert totals.attempted == 20
    assert totals.established == TINY_PORTS
    assert totals.drops == {int(DropReason.NAT_NO_MAPPING): 20 - TINY_PORTS}
    assert totals.attempted == totals.established + totals.dropped
    # Every drop used all 128 tries; the saturation reached 100% and stayed.
    assert totals.tries[-1] == 20 - TINY_PORTS
    (endpoint,) = result.series
    assert result.peak(endpoint) == TINY_PORTS == result.settings.divisor
    assert set(result.crossings[endpoint]) == {0.8, 0.95, 1.0}
    assert result.intervals[-1].stats.saturation  # the last pass saw the tuple


def test_counters_are_consistent_and_the_marks_are_ordered():
    result = simulate(
        workload(rate=3.0, duration={"distribution": "exponential", "mean": "4s"}),
        SimSettings(duration=120.0, node_port_range=TINY_RANGE, stats_interval=5.0, seed=1),
    )
    totals = result.totals
    assert totals.attempted == 360
    assert totals.attempted == totals.established + totals.dropped
    assert int(totals.tries.sum()) == totals.attempted
    attempted = [r.totals.attempted for r in result.intervals]
    assert attempted == sorted(attempted) and len(attempted) == 24
    for marks in result.crossings.values():
        times = [marks[t] for t in (0.8, 0.95, 1.0) if t in marks]
        assert times == sorted(times)


def test_two_egress_ips_halve_each_tuple():
    one = simulate(workload(rate=20.0), SimSettings(duration=60.0, seed=2))
    two = simulate(workload(rate=20.0, egress=("10.1.0.0", "10.1.0.1")),
                   SimSettings(duration=60.0, seed=2))
    assert one.totals.established == two.totals.established == 1200
    (only,) = one.series
    assert one.peak(only) == 1200
    # Clients alternate between the egress IPs; each connection picks a client at random.
    peaks = [two.peak(e) for e in two.series]
    assert len(peaks) == 2 and sum(peaks) == 1200
    assert all(abs(p - 600) < 75 for p in peaks)
    assert two.peak_saturation == pytest.approx(one.peak_saturation / 2, rel=0.15)


def test_a_small_nat_map_evicts_and_breaks_connections():
    # 700 held-open connections with keepalives need 1400 entries; the map holds 1024.
    result = simulate(
        workload(rate=70.0, count=200, keepalive="5s"),
        SimSettings(duration=30.0, bpf_nat_global_max=1024, seed=4),
    )
    assert result.totals.evictions > 0
    assert result.totals.broken > 0


def test_equal_seeds_give_equal_results():
    settings = SimSettings(duration=60.0, node_port_range=NodePortRange(30000, 65000), seed=9)
    doc = workload(rate=15.0, duration={"distribution": "lognormal", "median": "3s",
                                         "sigma": 1})
    first, again = simulate(doc, settings), simulate(doc, settings)
    assert result_document(first)["intervals"] == result_document(again)["intervals"]
    assert np.array_equal(first.totals.tries, again.totals.tries)


def test_policies_pick_egress_ips_and_exclusions_are_not_masqueraded():
    rules = compile_rules(load_policies(EXAMPLES / "policies"),
                          load_inventory(EXAMPLES / "inventory.yaml"))
    result = simulate(load_workload(EXAMPLES / "workloads" / "with-policies.yaml"),
                      SimSettings(duration=60.0, seed=1), rules=rules)
    assert result.gateways == ["gateway-1"]
    assert set(result.egress_ips) == {"203.0.113.10", "203.0.113.12", "203.0.113.13"}
    assert result.not_masqueraded > 0
    remotes = {str(e.remote_ip) for e in result.series}
    assert "198.51.100.200" not in remotes


def test_tries_buckets_cover_every_slot():
    tries = np.arange(129, dtype=np.int64)
    buckets = tries_buckets(tries)
    assert sum(n for _, n in buckets) == int(tries.sum())
    assert buckets[0] == ("0", 0) and buckets[-1] == ("128 (all used: dropped)", 128)


def test_cli_json_and_table_and_plot(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text(
        "egress_ips: [10.1.0.0]\n"
        "destinations: [{address: '10.2.0.0:8080'}]\n"
        "clients: [{count: 5, cidr: 10.244.0.0/24, arrivals: {process: constant, rate: 2},"
        " duration: forever}]\n"
    )
    main(["simulate", str(path), "--duration", "10s", "--node-port-range", "30000,65525",
          "--nat-map-stats-interval", "5s", "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["attempted"] == 20
    assert doc["totals"]["drops"] == {"167": 11}
    assert doc["tuples"][0]["crossed"]["1"] == 5.0
    assert [i["time"] for i in doc["intervals"]] == [5.0, 10.0]
    # Each pass's nat-stats is the document egressgw nat-stats -o json prints.
    (row,) = doc["intervals"][-1]["natStats"]["rows"]
    assert (row["egressIP"], row["remoteAddr"], row["count"]) == ("10.1.0.0", "10.2.0.0:8080", 9)
    plot = tmp_path / "s.png"
    main(["simulate", str(path), "--duration", "10s", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "# IPFamily   Proto   EgressIP   RemoteAddr      Count" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_bad_workload_in_one_line(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text("destinations: []\nclients: [{count: -1}]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clients" in err


def test_summary_names_the_drop_reason():
    result = simulate(workload(rate=2.0),
                      SimSettings(duration=10.0, node_port_range=TINY_RANGE))
    text = render_summary(result)
    assert "167 No mapping for NAT masquerade   11" in text
    assert "saturation ipv4: 100.00% (9/9)" in text
    assert "10s    10.1.0.0 -> 10.2.0.0:8080   9       100.0%       +11" in text


def test_per_pass_rows_thin_out_long_runs_but_keep_the_last():
    result = simulate(workload(rate=1.0),
                      SimSettings(duration=100.0, stats_interval=1.0, node_port_range=TINY_RANGE))
    rows = interval_rows(result, max_rows=24)
    assert len(rows) - 1 <= 25 and rows[-1][0] == "1m40s"
    # The refusals of the thinned rows still add up to all of them.
    assert sum(int(r[4]) for r in rows[1:]) == result.totals.refused == 100 - TINY_PORTS
