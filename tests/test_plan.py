"""plan: the analytic estimate agrees with arithmetic and with the simulation."""

from __future__ import annotations

import http.server
import json
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml

from egressgw.cli import main
from egressgw.config import NodePortRange
from egressgw.errors import InputError
from egressgw.limits import cilium_limit
from egressgw.net import Family, NatEndpoint, Proto, parse_ip
from egressgw.policy import load_policies
from egressgw.policy.cilium import CiliumVersion
from egressgw.sim.observed import workload_from_counts
from egressgw.sim.plan import (
    estimate,
    make_plan,
    scale_workload,
    steady_gc_interval,
    suggest_node_port_range,
)
from egressgw.sim.remedy import remedy_policies
from egressgw.sim.simulate import SimSettings, simulate
from egressgw.sim.workload import parse_workload

# 10 connections/s, each open 100 s, closed with FIN: held 100 s + the 10 s close timeout
# + the wait for the next GC pass (fixed every 10 s: 5 s on average, 10 s at worst).
DOC = {
    "egress_ips": ["10.1.0.0"],
    "destinations": [{"address": "10.2.0.0:8080", "protocol": "tcp"}],
    "clients": [{
        "count": 100, "cidr": "10.244.0.0/24",
        "arrivals": {"process": "constant", "rate": 10},
        "duration": "100s", "end": "fin",
    }],
}
# 1000 NAT ports per tuple.
RANGE = NodePortRange(30000, 64534)


def settings(node_port_range=RANGE):
    return SimSettings(duration=600.0, conntrack_gc_interval=10.0, stats_interval=7.0,
                       node_port_range=node_port_range)


def test_estimate_matches_the_arithmetic():
    (demand,) = estimate(parse_workload(DOC, source="w"), settings())
    assert demand.peak_rate == pytest.approx(10.0)
    assert demand.mean_hold == pytest.approx(115.0)
    assert demand.concurrent == pytest.approx(10 * 115, rel=0.01)
    assert demand.needed == pytest.approx(1200 + 3 * math.sqrt(1200), rel=0.01)


def test_simulation_agrees_with_the_estimate():
    workload = parse_workload(DOC, source="w")
    roomy = settings(NodePortRange())  # 32767 ports: no drops to disturb the count
    (demand,) = estimate(workload, roomy)
    result = simulate(workload, roomy)
    assert result.totals.refused == 0
    (series,) = result.series.values()
    steady = np.array(series[len(series) // 3:])  # after the first 200 s
    assert steady.mean() == pytest.approx(demand.concurrent, rel=0.03)
    assert steady.max() <= demand.needed


def test_plan_picks_two_egress_ips_and_the_simulation_confirms():
    workload = parse_workload(DOC, source="w")
    plan = make_plan(workload, settings(), target=0.8, max_drop_rate=0.0)
    # One IP needs 1304 ports > 800 (80% of 1000); two need 600 + 3 sqrt(600) = 674 each.
    assert plan.estimate_ips == 2
    assert [str(t.endpoint.egress_ip) for t in plan.estimate] == ["10.1.0.0", "10.1.0.1"]
    confirmed = plan.confirmed
    # 2 met the targets, so 1 was tried too, and failed.
    assert [c.egress_ips for c in plan.checks] == [1, 2]
    assert not plan.checks[0].ok
    assert confirmed is not None and confirmed is plan.checks[1]
    assert confirmed.result.peak_saturation <= 0.8
    assert confirmed.result.totals.refused == 0
    # The alternative needs a NAT range of about 1304 / 0.8 = 1630 ports for one egress
    # IP; this test's NodePort range is 34535 ports wide, and moved down by 630 it would
    # cover 51871 (wireguard): not offered.
    (own,) = plan.node_port_estimate
    assert own.needed == pytest.approx(1304, rel=0.01)
    assert plan.alternative is not None and not plan.alternative.offered
    assert "51871 (wireguard)" in plan.alternative.reason


def test_suggested_ranges_only_widen_and_keep_node_ports_clear():
    default = NodePortRange()
    # Already fits: nothing to suggest (the range is never narrowed).
    npr, reason = suggest_node_port_range(32767, default)
    assert npr is None and reason.startswith("not needed")
    npr, reason = suggest_node_port_range(1000, default)
    assert npr is None and reason.startswith("not needed")
    # 40000 NAT ports: NodePorts 22767-25534, the default range's width, below them.
    npr, _ = suggest_node_port_range(40000, default)
    assert npr == NodePortRange(22767, 25534)
    assert npr.cilium_saturation_divisor == 40000
    # 60000: NodePorts 2767-5534 would cover cilium-health's 4240 and hubble's 4244.
    npr, reason = suggest_node_port_range(60000, default)
    assert npr is None and "4240 (cilium-health)" in reason
    # The seed scenario on one egress IP (62514 ports): NodePorts 253-3020, below 1024.
    npr, reason = suggest_node_port_range(62514, default)
    assert npr is None and "below 1024 (253-3020)" in reason
    assert suggest_node_port_range(70000, default)[0] is None


def test_plan_tries_fewer_egress_ips_than_the_estimate():
    # 1500 NAT ports, target 85% (1275): the estimate's 1304 (peak 1200 + 3 sigma) asks
    # for 2 egress IPs, but constant arrivals hold at most 10 x (100 + 10 + 10) = 1200
    # ports (80%), so 1 meets the target.
    wide = NodePortRange(30000, 64034)
    plan = make_plan(parse_workload(DOC, source="w"), settings(wide), target=0.85,
                     max_drop_rate=1e-3)
    assert plan.estimate_ips == 2
    assert [c.egress_ips for c in plan.checks] == [1, 2]
    assert plan.confirmed is not None and plan.confirmed.egress_ips == 1
    assert plan.confirmed.result.peak_saturation <= 0.85


def test_scale_multiplies_every_rate():
    workload = parse_workload(DOC, source="w")
    (one,) = estimate(workload, settings())
    (three,) = estimate(scale_workload(workload, 3.0), settings())
    assert three.peak_rate == pytest.approx(3 * one.peak_rate)
    assert three.concurrent == pytest.approx(3 * one.concurrent, rel=1e-6)
    with pytest.raises(InputError, match="--scale"):
        scale_workload(workload, 0.0)


def test_observed_counts_become_a_workload_that_holds_them():
    counts = {
        NatEndpoint(Family.IPV4, Proto.TCP, parse_ip("10.1.0.0"), parse_ip("10.2.0.0"),
                    8080): 700,
        NatEndpoint(Family.IPV4, Proto.TCP, parse_ip("10.1.0.0"), parse_ip("10.2.0.9"),
                    443): 100,
    }
    run = settings()
    # Calibrated by the estimate only: the estimate holds the counts exactly.
    by_estimate = workload_from_counts(counts, hold=120.0, settings=run, clients=50,
                                       simulate_once=False)
    held = {d.endpoint.remote_port: d.concurrent
            for d in estimate(by_estimate, replace(run, duration=by_estimate.duration))}
    assert held[8080] == pytest.approx(700, rel=0.01)
    assert held[443] == pytest.approx(100, rel=0.01)
    # Calibrated by one simulation too (the default): the simulation holds about as many.
    workload = workload_from_counts(counts, hold=120.0, settings=run, clients=50)
    result = simulate(workload, replace(run, duration=workload.duration), progress=False)
    key = next(e for e in result.series if e.remote_port == 8080)
    steady = np.array(result.series[key][len(result.series[key]) // 2:])
    assert steady.mean() == pytest.approx(700, rel=0.1)


def test_adaptive_gc_settles_between_its_thresholds():
    # 20 TCP connections/s end on a 524288-entry CT map. By hand (GetInterval): 300 s
    # deletes 6000 (1.1% < 5%: x1.5) -> 450 (1.7%) -> 675 (2.6%) -> 1012.5 rounds up to
    # 1013 (3.9%) -> 1519.5 -> 1520 (5.8%: between 5% and 25%, unchanged).
    rates = {(0, True): 20.0}
    assert steady_gc_interval(rates, SimSettings()) == 1520.0
    assert steady_gc_interval(rates, SimSettings(conntrack_gc_interval=42.0)) == 42.0


def test_plan_cli_prints_the_evidence_and_the_policies(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(DOC))
    main(["plan", str(path), "--duration", "5m", "--node-port-range", str(RANGE),
          "--conntrack-gc-interval", "10s"])
    out = capsys.readouterr().out
    assert "Estimate: 2 egress IP(s)" in out
    assert "2 egress IPs: peak saturation" in out and "-> OK" in out
    assert "1 egress IP: peak saturation" in out and "-> NOT OK" in out
    assert "Plan: 2 egress IPs (10.1.0.0, 10.1.0.1)" in out
    # The alternative is not offered (it would cover port 51871): no section for it.
    assert "Alternative" not in out
    # The policies that implement the plan parse with egressgw's own parser.
    policy_text = out.split("CiliumEgressGatewayPolicy for the plan:\n\n", 1)[1]
    (tmp_path / "plan.yaml").write_text(policy_text)
    policies = load_policies(tmp_path / "plan.yaml", CiliumVersion.V1_16)
    assert [str(g.egress_ip) for p in policies for g in p.gateways] == ["10.1.0.0", "10.1.0.1"]


@pytest.mark.parametrize("version", ["1.16", "1.18"])
def test_remedy_policies_parse_and_carry_every_egress_ip(tmp_path, version):
    ips = [parse_ip("203.0.113.10"), parse_ip("203.0.113.11"), parse_ip("203.0.113.12")]
    text = remedy_policies(ips, ["gw-1", "gw-1", "gw-2"], [parse_ip("198.51.100.7")],
                           cilium_version=version)
    (tmp_path / "p.yaml").write_text(text)
    # Parsed and checked against that version's CRD.
    policies = load_policies(tmp_path / "p.yaml", CiliumVersion(version))
    # 1.18: one policy with egressGateways[]; 1.16: one policy per egress IP.
    assert len(policies) == (1 if version == "1.18" else 3)
    gateways = [g for p in policies for g in p.gateways]
    assert [str(g.egress_ip) for g in gateways] == [str(ip) for ip in ips]
    assert all(str(c) == "198.51.100.7/32" for p in policies for c in p.destination_cidrs)


def test_plan_cli_json_and_exit_status_without_a_plan(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(DOC))
    args = ["plan", str(path), "--duration", "5m", "--node-port-range", str(RANGE),
            "--conntrack-gc-interval", "10s", "-o", "json"]
    main(args)
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"] == {"egressIPs": ["10.1.0.0", "10.1.0.1"], "count": 2}
    assert [c["ok"] for c in doc["checks"]] == [False, True]
    assert doc["portRangeAlternative"]["offered"] is False
    # One egress IP at most cannot meet the target: the plan says so and exits 1.
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--max-egress-ips", "1"])
    assert exit_info.value.code == 1
    assert json.loads(capsys.readouterr().out)["plan"] is None


def test_plan_cli_from_observed_stats(tmp_path, capsys):
    doc = {"updatedAt": 0, "rows": [
        {"family": "ipv4", "proto": "TCP", "egressIP": "10.1.0.0", "remoteIP": "10.2.0.0",
         "remotePort": 8080, "count": 700}]}
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(doc))
    main(["plan", "--stats", str(stats), "--connection-length", "100s", "--clients", "50",
          "--node-port-range", str(RANGE), "--conntrack-gc-interval", "10s",
          "--scale", "3", "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    # 700 held now; 3x traffic holds about 2100: at least 3 egress IPs for 80% of 1000
    # ports (700 each, 70%), 4 with the Poisson and GC headroom the estimate keeps.
    assert out["scale"] == 3
    assert sum(t["expected"] for t in out["estimate"]) == pytest.approx(2100, rel=0.1)
    assert out["plan"]["count"] in (3, 4)
    # The plan is the fewest that passed: every smaller count simulated failed.
    assert all(not c["ok"] for c in out["checks"] if len(c["egressIPs"]) < out["plan"]["count"])


def test_plan_cli_needs_a_connection_length_with_stats(tmp_path, capsys):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--stats", str(stats)])
    assert exit_info.value.code == 2
    assert "--connection-length" in capsys.readouterr().err


def test_plan_hold_is_the_deprecated_spelling_of_connection_length(tmp_path, capsys):
    # forecast --hold is the time a port is held; plan's old --hold, the median
    # connection length, still works and says what to write instead.
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"updatedAt": 0, "divisor": 1000, "rows": [
        {"family": "ipv4", "proto": "TCP", "egressIP": "10.1.0.0", "remoteIP": "10.2.0.0",
         "remotePort": 8080, "remoteAddr": "10.2.0.0:8080", "count": 700, "rank": 1}]}))
    args = ["plan", "--stats", str(stats), "--clients", "50", "--estimate-only", "-o", "json",
            "--node-port-range", "30000,64534"]
    main([*args, "--connection-length", "100s"])
    new = capsys.readouterr()
    main([*args, "--hold", "100s"])
    old = capsys.readouterr()
    assert old.out == new.out and "deprecated" not in new.err
    assert ("plan --hold is deprecated, use --connection-length" in old.err)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--hold", "100s", "--connection-length", "100s"])
    assert exit_info.value.code == 2


def test_plan_rejects_a_bad_target():
    with pytest.raises(InputError, match="--target-saturation"):
        make_plan(parse_workload(DOC, source="w"), settings(), target=1.5)


class _Agent(http.server.BaseHTTPRequestHandler):
    """An agent stand-in over real HTTP: one nat-stats document."""

    document: ClassVar[dict] = {}

    def do_GET(self):
        body = json.dumps(type(self).document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_plan_from_the_agents_url_uses_the_agents_limit(capsys):
    # An agent with --node-port-range 30000,64534 (1000 ports per tuple) holding 700.
    _Agent.document = {
        "updatedAt": 0, "entries": 30, "divisor": 1000,
        "limit": cilium_limit(RANGE).document(),
        "rows": [{"family": "ipv4", "proto": "TCP", "egressIP": "10.1.0.0",
                  "remoteIP": "10.2.0.0", "remotePort": 8080,
                  "remoteAddr": "10.2.0.0:8080", "count": 700, "rank": 1}],
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        main(["plan", "--stats", f"http://127.0.0.1:{server.server_address[1]}",
              "--connection-length", "100s", "--clients", "50", "--estimate-only", "-o", "json"])
    finally:
        server.shutdown()
        server.server_close()
    doc = json.loads(capsys.readouterr().out)
    # The limit is the agent's 1000 ports, not the default 32767: saturations divide by it.
    assert doc["portLimit"]["ports"] == 1000
    assert all(t["saturation"] == pytest.approx(t["needed"] / 1000) for t in doc["estimate"])


def test_plan_from_a_cilium_dump_and_from_a_linux_one(capsys):
    examples = Path(__file__).parents[1] / "src" / "egressgw" / "examples"
    main(["plan", "--stats", str(examples / "seed-node-nat-list.txt"), "--connection-length", "1m",
          "--estimate-only", "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    # The bundled node's dump: 294 connections to 104.198.14.52:443 (nat-stats' table).
    assert {t["remoteAddr"] for t in doc["estimate"]} >= {"104.198.14.52:443"}
    assert doc["portLimit"]["datapath"] == "cilium"
    # A Linux gateway's conntrack dump: planned on the netfilter model, against Linux's
    # masquerade range (1024-65535, 64512 ports), as nat-stats counts that dump.
    main(["plan", "--stats", str(examples / "gateway-conntrack-L.txt"), "--connection-length", "1m",
          "--estimate-only", "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["portLimit"]["datapath"] == "netfilter"
    assert doc["portLimit"]["ports"] == 64512


def test_plan_says_what_it_simulates_with_progress(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(DOC))
    args = ["plan", str(path), "--duration", "5m", "--node-port-range", str(RANGE),
            "--conntrack-gc-interval", "10s"]
    main([*args, "--progress"])
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("plan: ")]
    assert steps == ["plan: estimating...", "plan: simulating 2 egress IPs...",
                     "plan: simulating 1 egress IP..."]
    # Not a terminal and no --progress: nothing on stderr.
    main(args)
    assert capsys.readouterr().err == ""
