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
    }
    client.update(extra)
    return parse_workload(
        {
            "egress_ips": list(egress),
            "destinations": [{"address": "10.2.0.0:8080", "protocol": "tcp"}],
            "clients": [client],
        },
        source="w.yaml",
    )


def test_long_lived_connections_beyond_the_ports_give_exactly_that_many_drops():
    # 2 connections a second for 10 s: 20 held-open connections for 9 ports; clients that
    # do not retransmit (tcp_syn_retries 0).
    result = simulate(
        workload(rate=2.0, syn_retries=0),
        SimSettings(duration=10.0, node_port_range=TINY_RANGE, seed=3),
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


def test_refused_syns_are_retransmitted_and_counted_apart():
    # As above with Linux's clients: the 11 refused connections start at 4.75, 5.25, ...,
    # 9.75 s (constant arrivals at (k + 0.5) / 2 s) and retransmit 1, 3, 7, ... s later.
    # Before 10 s: +1 for the 9 starting before 9 s, +3 for the 5 before 7 s, +7 for none.
    # The ports stay held, so every SYN is dropped: 11 + 14 packets.
    result = simulate(
        workload(rate=2.0), SimSettings(duration=10.0, node_port_range=TINY_RANGE, seed=3)
    )
    totals = result.totals
    assert (totals.attempted, totals.established) == (20, TINY_PORTS)
    assert totals.retransmits == 14
    assert totals.drops == {int(DropReason.NAT_NO_MAPPING): 11 + 14}
    assert (totals.refused, totals.connect_failed, totals.still_retrying) == (11, 0, 11)
    assert totals.delayed_count == 0
    document = result_document(result)["totals"]
    assert (document["neverGotAPort"], document["stillRetrying"]) == (0, 11)
    assert "still retransmitting at the end" in render_summary(result)


def test_a_delayed_connection_reports_its_extra_latency():
    # 10 connections at 0.05, 0.15, ..., 0.95 s; 9 hold the 9 ports for 20 s and close
    # with FIN (lifetime until 30.05-30.85 s). The 10th is refused at 0.95 and retransmits
    # at 1.95, 3.95, 7.95, 15.95, 31.95. Each refusal signals nat_fill_up, whose pass
    # restarts the 5 s GC timer (gc.go waits a fresh interval after every pass): after the
    # pass at 15.95 they run at 20.95, 25.95, 30.95, and the one at 30.95 frees the ports.
    # The retransmission at 31.95 gets one: 31 s late.
    burst = {"process": "constant", "ramp": {"from": 10, "to": 0, "start": 1, "over": 0.001}}
    result = simulate(
        workload(count=10, duration="20s", end="fin", arrivals=burst),
        SimSettings(duration=70.0, node_port_range=TINY_RANGE, seed=3,
                    conntrack_gc_interval=5.0),
    )
    totals = result.totals
    assert (totals.attempted, totals.established, totals.retransmits) == (10, 10, 5)
    assert totals.delayed_count == 1
    assert totals.latency_percentile(0.5) == pytest.approx(31.0)
    assert totals.latency_percentile(0.5, all_established=True) == 0.0
    assert result_document(result)["totals"]["connectLatency"]["p99"] == pytest.approx(31.0)
    assert "p50 31s, p99 31s" in render_summary(result)


def test_counters_are_consistent_and_the_marks_are_ordered():
    result = simulate(
        workload(rate=3.0, duration={"distribution": "exponential", "mean": "4s"},
                 syn_retries=0),
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
    # 11 refused connections and 14 retransmissions of their SYNs (worked out in
    # test_refused_syns_are_retransmitted_and_counted_apart).
    assert doc["totals"]["drops"] == {"167": 11 + 14}
    assert doc["totals"]["refused"] == 11 and doc["totals"]["retransmits"] == 14
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
    assert "167 No mapping for NAT masquerade   25" in text  # 11 SYNs, 14 retransmitted
    assert "saturation ipv4: 100.00% (9/9)" in text
    assert "10s    10.1.0.0 -> 10.2.0.0:8080   9       100.0%       +11" in text


def test_per_pass_rows_thin_out_long_runs_but_keep_the_last():
    result = simulate(workload(rate=1.0),
                      SimSettings(duration=100.0, stats_interval=1.0, node_port_range=TINY_RANGE))
    rows = interval_rows(result, max_rows=24)
    assert len(rows) - 1 <= 25 and rows[-1][0] == "1m40s"
    # The refusals of the thinned rows still add up to all of them.
    assert sum(int(r[4]) for r in rows[1:]) == result.totals.refused == 100 - TINY_PORTS


def test_random_source_ports_never_reuse_an_open_tuple():
    # One client, one destination, 5000 connections held open. Drawn uniformly from the
    # 28232 ephemeral ports, about 5000**2 / (2 * 28232) = 440 would repeat a 5-tuple that
    # is still open; the kernel refuses such a tuple and connect() picks another port. So
    # every connection holds its own NAT mapping: the tuple counts all 5000.
    result = simulate(
        workload(rate=500.0, count=1, source_ports="random", syn_retries=0),
        SimSettings(duration=10.0, seed=1),
    )
    totals = result.totals
    assert totals.attempted == totals.established == 5000
    (endpoint,) = result.series
    assert result.peak(endpoint) == 5000
