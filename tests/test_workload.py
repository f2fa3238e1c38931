"""Workload documents: validation names the field; generation has the promised statistics."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.errors import InputError
from egressgw.sim.arrivals import Arrivals, ConstantRate, DailyRate, Process, RampRate
from egressgw.sim.flows import AddressBook
from egressgw.sim.generate import EPHEMERAL_SPAN, WorkloadFlows, occurrence_rank
from egressgw.sim.routing import route_workload
from egressgw.sim.workload import load_workload, parse_workload

EXAMPLES = Path(__file__).parents[1] / "src" / "egressgw" / "examples" / "workloads"


def base(**client_overrides):
    client = {
        "count": 10,
        "cidr": "10.244.0.0/24",
        "arrivals": {"process": "poisson", "rate": 100},
        "duration": "30s",
    }
    client.update(client_overrides)
    return {
        "egress_ips": ["10.1.0.0"],
        "destinations": [{"name": "backend", "address": "10.2.0.0:8080", "protocol": "tcp"}],
        "clients": [client],
    }


def generate(doc, t1, seed=1, window=30.0):
    workload = parse_workload(doc, source="w.yaml")
    flows = WorkloadFlows(workload, route_workload(workload), AddressBook(),
                          np.random.default_rng(seed))
    parts = [flows.window(t, min(t + window, t1)) for t in np.arange(0.0, t1, window)]
    return workload, parts


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": 0}, "w.yaml: clients[0].count: must be a positive integer"),
        ({"count": "ten"}, "w.yaml: clients[0].count: must be a positive integer"),
        ({"count": 300}, "w.yaml: clients[0].count: 300 clients do not fit in 10.244.0.0/24"),
        ({"cidr": "10.244.0.0/33"}, "w.yaml: clients[0].cidr: invalid CIDR '10.244.0.0/33'"),
        ({"arrivals": {"rate": -1}}, "w.yaml: clients[0].arrivals.rate: must be a non-negative"),
        ({"arrivals": {"rate": 1, "ramp": {"from": 1, "to": 2, "over": 5}}},
         "w.yaml: clients[0].arrivals: give exactly one of rate, ramp or daily"),
        ({"arrivals": {"process": "bursty", "rate": 1}},
         "w.yaml: clients[0].arrivals.process: 'bursty': expected poisson or constant"),
        ({"arrivals": {"ramp": {"from": 1, "to": 2}}},
         "w.yaml: clients[0].arrivals.ramp.over: is required"),
        ({"duration": "soon"}, "w.yaml: clients[0].duration: 'soon': expected a duration"),
        ({"duration": {"distribution": "pareto"}},
         "w.yaml: clients[0].duration.distribution: 'pareto': expected one of"),
        ({"duration": {"distribution": "exponential"}},
         "w.yaml: clients[0].duration.mean: is required"),
        ({"end": "close"}, "w.yaml: clients[0].end: 'close': expected fin, rst, rst_server, idle"),
        ({"end": {"fin": 0, "rst": 0}}, "w.yaml: clients[0].end: the shares must not all be 0"),
        ({"destinations": ["nowhere"]},
         "w.yaml: clients[0].destinations[0]: 'nowhere' is not a destination (backend)"),
        ({"requests_per_connection": 0.5},
         "w.yaml: clients[0].requests_per_connection: must be at least 1"),
        ({"colour": "red"}, "w.yaml: clients[0].colour: unknown field"),
        ({"source_ports": "odd"}, "w.yaml: clients[0].source_ports: 'odd': expected"),
        ({"syn_retries": -1}, "w.yaml: clients[0].syn_retries: must be an integer from 0 to 255"),
        ({"udp_retries": {"count": 2, "every": "5s"}},
         "w.yaml: clients[0].udp_retries.every: unknown field"),
        ({"udp_retries": {"count": 1, "timeout": 0}},
         "w.yaml: clients[0].udp_retries.timeout: must be a positive duration"),
    ],
)
def test_bad_client_fields_are_named(change, message):
    with pytest.raises(InputError) as err:
        parse_workload(base(**change), source="w.yaml")
    assert str(err.value).startswith(message)


def test_bad_destinations_are_named():
    doc = base()
    doc["destinations"][0]["address"] = "10.2.0.0"
    with pytest.raises(InputError, match=r"destinations\[0\]\.address: '10.2.0.0': TCP needs"):
        parse_workload(doc, source="w.yaml")
    doc["destinations"][0].update(address="10.2.0.0:80", protocol="sctp")
    with pytest.raises(InputError, match=r"destinations\[0\]\.protocol: unknown protocol"):
        parse_workload(doc, source="w.yaml")


def test_missing_egress_ip_says_how_to_give_one():
    doc = base()
    del doc["egress_ips"]
    workload = parse_workload(doc, source="w.yaml")
    with pytest.raises(InputError, match=r"w.yaml: clients\[0\]: no egress IP: give egress_ips"):
        route_workload(workload)


def test_egress_ips_of_the_other_family_are_not_used():
    doc = base(egress_ips=["2001:db8:203::10", "10.1.0.1"])
    routes = route_workload(parse_workload(doc, source="w.yaml"))
    assert [str(ip) for ip in routes.egress.ips] == ["10.1.0.1"]
    doc = base(egress_ips=["2001:db8:203::10"])
    with pytest.raises(InputError, match=r"clients\[0\]: no IPv4 egress IP among 2001:db8"):
        route_workload(parse_workload(doc, source="w.yaml"))


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("clients:\n  - count: 1\n   cidr: [\n")
    with pytest.raises(InputError, match=r"w.yaml:\d+: invalid YAML"):
        load_workload(path)


@pytest.mark.parametrize("name", ["seed-scenario", "web-and-dns", "replay"])
def test_shipped_examples_are_valid(name):
    workload = load_workload(EXAMPLES / f"{name}.yaml")
    assert workload.duration is not None and workload.duration > 0


def test_poisson_rate_and_exponential_mean_are_within_tolerance():
    doc = base(duration={"distribution": "exponential", "mean": "20s"})
    _, parts = generate(doc, 600.0)
    starts = np.concatenate([p.start for p in parts])
    durations = np.concatenate([p.duration for p in parts])
    # 60,000 expected arrivals: the Poisson standard deviation is about 245.
    assert abs(len(starts) - 60_000) < 5 * 245
    assert np.all(np.diff(starts) >= 0) and starts.min() >= 0 and starts.max() < 600
    # Inter-arrival times of a Poisson process are exponential: mean 1/rate, CV 1.
    gaps = np.diff(starts)
    assert gaps.mean() == pytest.approx(0.01, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    assert durations.mean() == pytest.approx(20.0, rel=0.03)


def test_constant_process_is_evenly_spaced_across_windows():
    doc = base(arrivals={"process": "constant", "rate": 4})
    _, parts = generate(doc, 100.0, window=7.0)
    starts = np.concatenate([p.start for p in parts])
    assert len(starts) == 400
    assert np.allclose(np.diff(starts), 0.25)


def test_ramp_and_daily_profiles_integrate_to_their_shape():
    ramp = Arrivals(Process.POISSON, RampRate(10.0, 110.0, begin=100.0, over=200.0))
    # 100 s at 10/s, 200 s ramping (mean 60/s), 100 s at 110/s.
    assert ramp.expected(0.0, 400.0) == pytest.approx(1000 + 12000 + 11000)
    assert ramp.peak_rate(400.0) == 110.0
    daily = Arrivals(Process.POISSON, DailyRate(10.0, 30.0, peak_at=43200.0))
    assert daily.expected(0.0, 86400.0) == pytest.approx(20.0 * 86400.0)
    assert daily.peak_rate(86400.0) == pytest.approx(30.0)
    rng = np.random.default_rng(3)
    times = daily.draw(rng, 0.0, 86400.0)
    # The busiest quarter of the day (around the peak) gets more than the quietest.
    peak = np.count_nonzero(np.abs(times - 43200.0) < 10800.0)
    night = np.count_nonzero((times < 10800.0) | (times >= 75600.0))
    assert peak > 1.5 * night
    assert len(times) == pytest.approx(daily.expected(0.0, 86400.0), rel=0.01)


def test_connection_reuse_divides_connections_and_lengthens_them():
    single = Arrivals(Process.POISSON, ConstantRate(100.0))
    pooled = Arrivals(Process.POISSON, ConstantRate(100.0), per_connection=10.0)
    assert pooled.expected(0, 60) == pytest.approx(single.expected(0, 60) / 10)
    workload = parse_workload(base(requests_per_connection=10), source="w.yaml")
    assert workload.groups[0].duration.mean == pytest.approx(300.0)


def test_ends_follow_their_shares():
    doc = base(end={"fin": 0.4, "rst": 0.2, "idle": 0.2, "rst_server": 0.2})
    _, parts = generate(doc, 300.0)
    ends = np.concatenate([p.end for p in parts])
    shares = np.bincount(ends, minlength=4) / len(ends)
    # The model's EndKind codes: FIN 0, RST (client) 1, IDLE 2, RST_SERVER 3.
    assert shares == pytest.approx([0.4, 0.2, 0.2, 0.2], abs=0.02)
    (only,) = generate(base(end="rst_server"), 10.0)[1]
    assert set(only.end.tolist()) == {3}


def test_retransmission_settings_go_into_every_row():
    doc = base(syn_retries=3)
    doc["destinations"].append({"name": "dns", "address": "10.96.0.10:53", "protocol": "udp"})
    doc["destinations"].append({"name": "ping", "address": "10.2.0.9", "protocol": "icmp"})
    doc["clients"][0]["udp_retries"] = {"count": 2, "timeout": "5s"}
    _, parts = generate(doc, 60.0)
    rows = list(zip(*(np.concatenate([getattr(p, c) for p in parts]).tolist()
                      for c in ("proto", "retries", "rto")), strict=True))
    assert set(rows) == {(6, 3, 1.0), (17, 2, 5.0), (1, 0, 5.0)}
    default = generate(base(), 10.0)[1][0]
    assert set(default.retries.tolist()) == {6} and set(default.rto.tolist()) == {1.0}


def test_sequential_source_ports_walk_the_ephemeral_range_per_client():
    doc = base(count=3, arrivals={"process": "constant", "rate": 100})
    _, parts = generate(doc, 60.0, window=10.0)
    src = np.concatenate([p.src for p in parts])
    sport = np.concatenate([p.sport for p in parts]).astype(np.int64)
    for client in np.unique(src):
        ports = sport[src == client]
        steps = np.diff(ports) % EPHEMERAL_SPAN
        assert np.all(steps == 1)  # round-robin, continuing across windows
        assert ports.min() >= 32768 and ports.max() <= 60999


def test_clients_come_from_the_cidr_and_spread_over_egress_ips():
    doc = base(count=4, egress_ips=["10.1.0.0", "10.1.0.1"])
    workload, _ = generate(doc, 30.0)
    addresses = workload.groups[0].addresses
    assert addresses[0] == ipaddress.ip_address("10.244.0.1") and len(addresses) == 4
    routes = route_workload(workload)
    assert routes.per_group[0][:, 0].tolist() == [0, 1, 0, 1]


def test_equal_seeds_give_equal_connections():
    doc = base(duration={"distribution": "lognormal", "median": "5s", "sigma": 1})
    _, first = generate(doc, 60.0, seed=7)
    _, again = generate(doc, 60.0, seed=7)
    _, other = generate(doc, 60.0, seed=8)
    assert all(np.array_equal(a.start, b.start) and np.array_equal(a.sport, b.sport)
               for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0].start, other[0].start)


def test_occurrence_rank_counts_earlier_rows_with_the_same_key():
    keys = np.array([3, 1, 3, 3, 1, 2])
    assert occurrence_rank(keys).tolist() == [0, 0, 1, 2, 1, 0]


def test_document_round_trips_through_yaml(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(base()))
    assert load_workload(path).groups[0].count == 10


@settings(max_examples=40, deadline=None)
@given(
    process=st.sampled_from([Process.POISSON, Process.CONSTANT]),
    low=st.floats(0.0, 50.0),
    high=st.floats(0.0, 50.0),
    cuts=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_profile_draws_sorted_starts_inside_each_window(process, low, high, cuts, seed):
    arrivals = Arrivals(process, RampRate(low, high, begin=10.0, over=30.0))
    rng = np.random.default_rng(seed)
    edges = sorted({0.0, 100.0, *cuts})
    total = 0
    for t0, t1 in itertools.pairwise(edges):
        times = arrivals.draw(rng, t0, t1)
        assert np.all(np.diff(times) >= 0)
        assert np.all((times >= t0) & (times < t1))
        total += len(times)
    if process is Process.CONSTANT:
        # Evenly spaced: one arrival per unit of cumulative intensity, however cut.
        assert abs(total - arrivals.expected(0.0, 100.0)) <= 1
