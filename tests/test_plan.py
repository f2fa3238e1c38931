"""plan: the analytic estimate agrees with arithmetic and with the simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from egressgw.cli import main
from egressgw.config import NodePortRange
from egressgw.errors import InputError
from egressgw.sim.plan import (
    estimate,
    make_plan,
    steady_gc_interval,
    suggest_node_port_range,
)
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
    # The simulation tries one IP fewer than the estimate first: it fails, two pass.
    assert [c.label for c in plan.checks] == ["1 egress IP", "2 egress IPs"]
    assert not plan.checks[0].ok
    assert confirmed is not None and confirmed is plan.checks[1]
    assert confirmed.result.peak_saturation <= 0.8
    assert confirmed.result.totals.refused == 0
    # The alternative: a NAT range of about 1304 / 0.8 = 1630 ports for one egress IP.
    assert plan.node_port_range is not None
    (own,) = plan.node_port_estimate
    assert own.needed == pytest.approx(1304, rel=0.01)
    assert plan.node_port_range.cilium_saturation_divisor == math.ceil(own.needed / 0.8)
    assert plan.node_port_check is not None and plan.node_port_check.ok


def test_suggested_ranges_and_impossible_ones():
    assert suggest_node_port_range(32767).cilium_saturation_divisor == 32767
    assert suggest_node_port_range(70000) is None


def test_adaptive_gc_settles_between_its_thresholds():
    # 20 TCP connections/s end on a 524288-entry CT map. By hand (GetInterval): 300 s
    # deletes 6000 (1.1% < 5%: x1.5) -> 450 (1.7%) -> 675 (2.6%) -> 1012.5 rounds up to
    # 1013 (3.9%) -> 1519.5 -> 1520 (5.8%: between 5% and 25%, unchanged).
    rates = {(0, True): 20.0}
    assert steady_gc_interval(rates, SimSettings()) == 1520.0
    assert steady_gc_interval(rates, SimSettings(conntrack_gc_interval=42.0)) == 42.0


def test_plan_cli_prints_the_evidence(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(DOC))
    main(["plan", str(path), "--duration", "5m", "--node-port-range", str(RANGE),
          "--conntrack-gc-interval", "10s"])
    out = capsys.readouterr().out
    assert "Estimate: 2 egress IP(s)" in out
    assert "2 egress IPs: peak saturation" in out and "-> OK" in out
    assert "Plan: 2 egress IPs (10.1.0.0, 10.1.0.1)" in out
    assert "--node-port-range" in out


def test_plan_rejects_a_bad_target():
    with pytest.raises(InputError, match="--target-saturation"):
        make_plan(parse_workload(DOC, source="w"), settings(), target=1.5)
