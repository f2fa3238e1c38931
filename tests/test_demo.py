"""The demo: the seed's failure in act 1, the remedy's effect in act 2, and its report."""

from __future__ import annotations

from egressgw.cli import main
from egressgw.sim.demo import DEMO_NAT_MAP, demo_settings, run_demo


def test_demo_shows_the_failure_then_the_remedy_and_writes_its_report(tmp_path):
    printed: list[str] = []
    result = run_demo(tmp_path / "report", scale=0.05, seed=1, echo=printed.append)
    before, after = result.before, result.after
    # Act 1: the tuple climbs past 80% and 95%, then drops and evictions follow.
    (top,) = before.top_endpoints(1)
    assert str(top.egress_ip) == "10.1.0.0" and top.remote_addr == "10.2.0.0:8080"
    assert {0.8, 0.95} <= set(before.crossings[top])
    assert before.totals.drops.get(167, 0) > 0
    assert before.totals.evictions > 0 and before.totals.broken > 0
    # Refused first packets are drops too; broken connections add drops of later packets.
    assert 0 < before.totals.refused <= before.totals.dropped
    # Act 2: the same demand split over two egress IPs on two gateways runs clean.
    assert after.gateways == ["gateway-1", "gateway-2"]
    assert after.totals.evictions <= before.totals.evictions // 100
    assert after.totals.broken <= before.totals.broken // 100
    assert after.totals.refused <= before.totals.refused // 100
    # Cilium's CT holds ports longer than a naive model (an RST after the handshake keeps
    # the entry 8000 s; the GC paces by the CT map's size): at this scale act 2 still
    # peaks at 83%, clear of act 1's 99% and with nothing refused or evicted.
    assert after.peak_saturation < 0.9 < before.peak_saturation
    # The nat-stats table was printed every interval, the way cilium-dbg prints it.
    text = "".join(printed)
    intervals = len(before.intervals) + len(after.intervals)
    assert text.count("# IPFamily   Proto   EgressIP   RemoteAddr          Count") == intervals
    assert "167 No mapping for NAT masquerade" in text
    report = result.report.read_text()
    assert "## Act 1: one egress IP" in report and "## Effect of the remedy" in report
    assert "![saturation over time](saturation.png)" in report
    assert result.plot.read_bytes()[:4] == b"\x89PNG"


def test_demo_is_deterministic_for_a_seed(tmp_path, capsys):
    main(["demo", "--scale", "0.02", "--quiet", "--out", str(tmp_path / "a")])
    first = capsys.readouterr().out
    main(["demo", "--scale", "0.02", "--quiet", "--out", str(tmp_path / "b")])
    second = capsys.readouterr().out
    assert first.replace(str(tmp_path / "a"), "") == second.replace(str(tmp_path / "b"), "")
    assert "Act 2" in first


def test_scale_shrinks_ports_and_map_together():
    full, small = demo_settings(1.0), demo_settings(0.1)
    assert full.divisor == 32767 and full.bpf_nat_global_max == DEMO_NAT_MAP
    assert small.node_port_range.nat_ports == round(32768 * 0.1)
    assert small.bpf_nat_global_max == round(DEMO_NAT_MAP * 0.1)
