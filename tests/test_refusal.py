"""The refusal curve against the model datapath's own port search.

The exact curve (a uniformly random set of k taken ports) is compared with a Monte Carlo
estimate made by the model datapath itself: k ports taken by connections that keep their
source port, then one new connection, on a fresh tuple per trial. The measured growth
curve is compared with tuples filled connection by connection on the model datapath.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random

import numpy as np
import pytest

from egressgw.cli import main
from egressgw.cli.limits import workload_clients
from egressgw.config import NodePortRange
from egressgw.datapath.model import ModelConfig, ModelDatapath
from egressgw.datapath.model.ports import walk
from egressgw.net import Endpoint, FiveTuple, Proto
from egressgw.sim.refusal import (
    MOD_CLAMP,
    PortSearch,
    SourcePorts,
    clamp_v117,
    growth_curve,
    tried_set_sizes,
    uniform_curve,
    usable_ports,
)
from egressgw.sim.refusal_exact import local_loglinear, refused_given

CLIENT = ipaddress.ip_address("192.0.2.1")
PROBE = ipaddress.ip_address("192.0.2.2")
SERVER = ipaddress.ip_address("198.51.100.1")
EGRESS = ipaddress.ip_address("203.0.113.1")
# NAT ports 65471..65535; the v1.16 clamp reaches 65471..65534 (64 ports). Its walk
# step, (start + 1) mod (end - start), is 0 here: the walk stays on its random port.
SMALL = NodePortRange(30000, 65470)
# NAT ports 65472..65535, 63 reachable; the walk steps by 65536 mod 63 = 16 and visits
# every port (16 and 63 are coprime), like the default range's step of 2.
STEPPING = NodePortRange(30000, 65471)


def test_v117_walk_matches_the_reference_figures() -> None:
    # cilium-snat.md section 11: from 40000 in 32768..65535 the walk visits 52768, 59152.
    start, end = 32768, 65535
    ports = [40000]
    for _ in range(2):
        ports.append(clamp_v117(start, end, ports[-1] + 1))
    assert ports == [40000, 52768, 59152]
    # ... up to 65535, then wraps to 32768 and cycles through about 16 ports.
    search = PortSearch(start, end, "mul", 128, "1.17")
    assert 14 <= len(set(search.walk_from(32768))) <= 18
    assert len(set(search.walk_from(40000))) < 40


def test_v116_walk_is_the_model_datapaths_walk() -> None:
    search = PortSearch.for_version("1.16", NodePortRange())
    draws = iter([5, 40000])
    # walk() draws for the out-of-range port 1000 and after the first collision.
    replay = walk(32768, 65535, 1000, 128, lambda: next(draws))
    assert replay[:2] == [32768 + 5, 32768 + 40000 % 32767]
    assert replay[1:] == search.walk_from(replay[1])
    # With the default range the walk steps by 2 and never repeats within 127 ports.
    assert len(set(search.walk_from(32768 + 11))) == 127


def test_tried_set_sizes_are_a_distribution() -> None:
    search = PortSearch.for_version("1.16", NodePortRange())
    w = tried_set_sizes(search, SourcePorts())
    assert w.sum() == pytest.approx(1.0)
    # The kept port is on the 127-port walk with probability about 127/32767.
    assert w[127] == pytest.approx(127 / 32767, rel=0.05)
    assert w[128] == pytest.approx(1 - 127 / 32767, rel=1e-3)


def test_exact_curve_by_hand_for_a_tiny_range() -> None:
    # 2 tries: the kept port, then one random port. With kept ports uniform over the
    # 64 reachable ports and k taken: P = P(both taken) = k/64 * ((k-1)/63 * P(distinct)
    # + 1 * P(same port)), P(same) = 1/64 up to the clamp's bias of 16-bit values.
    search = PortSearch(SMALL.nat_min, SMALL.nat_max, MOD_CLAMP, 2)
    sources = SourcePorts(65471, 65534)
    k = 40
    curve = uniform_curve(search, sources, divisor=64, held=[k])
    expected = k / 64 * ((k - 1) / 63 * (63 / 64) + 1 / 64)
    assert curve.refused[0] == pytest.approx(expected, rel=1e-3)


def _refused_on_model(search: PortSearch, npr: NodePortRange, k: int, *, trials: int,
                      sources: SourcePorts, seed: int) -> int:
    """Trials on the model datapath: k random usable ports taken, then one probe."""
    config = ModelConfig(node_port_range=npr, cilium_version=search.version,
                         snat_collision_retries=search.retries, bpf_nat_global_max=1 << 22)
    datapath = ModelDatapath(config, random.Random(seed), engine="reference")
    rng = np.random.default_rng(seed)
    reachable = np.nonzero(usable_ports(search, sources))[0]
    refused = 0
    for trial in range(trials):
        server = Endpoint(SERVER, 1 + trial)  # a fresh tuple per trial
        for port in rng.choice(reachable, size=k, replace=False):
            result = datapath.connect(
                FiveTuple(Proto.TCP, Endpoint(CLIENT, int(port)), server), EGRESS)
            assert result.port == port  # a free in-range port is kept
        sport = int(rng.integers(sources.low, sources.high + 1))
        probe = datapath.connect(FiveTuple(Proto.TCP, Endpoint(PROBE, sport), server), EGRESS)
        refused += probe.port is None
    return refused


@pytest.mark.parametrize(
    ("version", "npr", "retries", "k", "sources"),
    [("1.16", SMALL, 4, 48, SourcePorts(65471, 65534)),
     ("1.16", SMALL, 8, 56, SourcePorts(1024, 32767)),
     ("1.16", STEPPING, 8, 56, SourcePorts(65472, 65534)),
     ("1.16", STEPPING, 16, 58, SourcePorts()),
     ("1.17", STEPPING, 128, 50, SourcePorts(1024, 32767)),
     ("1.18", STEPPING, 32, 40, SourcePorts(65472, 65535))],
    ids=["kept-port-in-range", "clients-outside-the-range", "walking-kept-in-range",
         "walking-linux-clients", "v1.17-multiply-shift", "v1.18-32-tries"],
)
def test_exact_curve_matches_the_model_datapath(version: str, npr: NodePortRange, retries: int,
                                                 k: int, sources: SourcePorts) -> None:
    base = PortSearch.for_version(version, npr)
    search = PortSearch(base.start, base.end, base.clamp_kind, retries, version)
    exact = float(uniform_curve(search, sources, divisor=npr.cilium_saturation_divisor,
                                held=[k]).refused[0])
    trials = 2500
    refused = _refused_on_model(search, npr, k, trials=trials, sources=sources,
                                seed=retries + k)
    # Binomial tolerance: 4 standard deviations of the Monte Carlo estimate.
    tolerance = 4 * math.sqrt(exact * (1 - exact) / trials)
    assert 0.05 < exact < 0.95
    assert abs(refused / trials - exact) <= tolerance, (refused / trials, exact, tolerance)


@pytest.mark.parametrize(("version", "retries"), [("1.16", 16), ("1.18", None)])
def test_growth_curve_matches_tuples_filled_on_the_model_datapath(
        version: str, retries: int | None) -> None:
    # 1024 NAT ports, 8 clients walking their ports inside the range; v1.16's search cut
    # to 16 tries, v1.18's own 32 over its multiply-shift clamp: refusals start well
    # before the tuple is full.
    npr = NodePortRange(30000, 64511)
    search = PortSearch.for_version(version, npr)
    if retries is not None:
        search = PortSearch(search.start, search.end, search.clamp_kind, retries, version)
    sources = SourcePorts(npr.nat_min, npr.nat_max, clients=8)
    divisor = npr.cilium_saturation_divisor
    band = (0.70, 0.90) if version == "1.16" else (0.40, 0.80)
    curve = growth_curve(search, sources, divisor, saturations=np.arange(0.3, 0.95, 0.01),
                         steps=5000, seed=3, repeats=8)
    config = ModelConfig(node_port_range=npr, cilium_version=version,
                         snat_collision_retries=retries, bpf_nat_global_max=1 << 22)
    datapath = ModelDatapath(config, random.Random(7), engine="reference")
    rng = np.random.default_rng(7)
    expected = observed = 0.0
    span = sources.high - sources.low + 1
    for tuple_index in range(12):
        server = Endpoint(SERVER, 1 + tuple_index)
        nxt = rng.integers(0, span, sources.clients)
        clients = [ipaddress.ip_address(f"192.0.2.{10 + c}") for c in range(sources.clients)]
        held = 0
        while held < band[1] * divisor:
            c = int(rng.integers(0, sources.clients))
            sport = sources.low + int(nxt[c]) % span
            nxt[c] += 1
            result = datapath.connect(FiveTuple(Proto.TCP, Endpoint(clients[c], sport), server),
                                      EGRESS)
            if held >= band[0] * divisor:
                expected += curve.rate_at(held)
                observed += result.port is None
            held += result.port is not None
    # The curve is 8 fills and the model 12 histories: a loose tolerance, 25% of the
    # expectation plus 4 Poisson standard deviations.
    assert expected > 50
    assert abs(observed - expected) <= 0.25 * expected + 4 * math.sqrt(expected), (
        observed, expected)


def test_limits_command_prints_the_rates_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    main(["limits", "--node-port-range", "30000,63487", "--clients", "0", "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["divisor"] == 65535 - 63488
    for curve in doc["curves"].values():
        values = [v for v in curve["saturationAt"].values() if v is not None]
        assert values == sorted(values)
    # Runs make the measured curves refuse earlier than random ports do.
    at = {name: c["saturationAt"]["0.001"] for name, c in doc["curves"].items()}
    assert at["growth"] <= at["uniform"] and at["steady"] <= at["uniform"]
    # Every measured level is in the document, with its bounds around the estimate.
    assert [p["held"] for p in doc["points"]] == sorted(p["held"] for p in doc["points"])
    for point in doc["points"]:
        low, high = point["growthBounds"]
        assert low <= point["growth"] <= high


def test_limits_rejects_a_bad_plot_path_before_computing(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["limits", "--plot", str(tmp_path / "curve.txt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a .png file" in err


def test_limits_takes_the_clients_from_a_workload(tmp_path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "destinations: [{address: '10.2.0.0:8080'}]\n"
        "clients:\n"
        "  - {count: 300, cidr: 10.244.0.0/16, arrivals: {rate: 1}, duration: 1s}\n"
        "  - {count: 50, cidr: 10.245.0.0/16, arrivals: {rate: 1}, duration: 1s,"
        " source_ports: random}\n"
    )
    # Only the sequential group walks its ports; the random one draws them.
    assert workload_clients(path) == 300


@pytest.mark.parametrize(
    ("version", "retries", "runs"),
    [("1.16", 8, [(0, 20), (30, 14), (50, 8)]),
     ("1.16", 16, [(3, 40), (48, 10)]),
     ("1.18", 32, [(0, 30), (40, 24)])],
    ids=["v1.16-8-tries", "v1.16-16-tries", "v1.18-32-tries"],
)
def test_exact_refusal_of_one_state_matches_the_model_datapath(
        version: str, retries: int, runs: list[tuple[int, int]]) -> None:
    # One set of taken ports with runs in it (the steady curve's states have runs), held
    # by connections that keep their port; then one probe from a random source port, on
    # a fresh tuple per trial. The exact P(refused | taken), summed over every walk,
    # against the model datapath's own search.
    base = PortSearch.for_version(version, STEPPING)
    search = PortSearch(base.start, base.end, base.clamp_kind, retries, version)
    sources = SourcePorts(search.start, search.end)
    reachable = np.nonzero(usable_ports(search, sources))[0]
    taken = np.zeros(1 << 16, dtype=bool)
    for first, length in runs:
        taken[reachable[first:first + length]] = True
    exact = refused_given(taken, start=search.start, end=search.end, retries=retries,
                          clamp=search.clamp_table(), sport_lo=sources.low,
                          sport_hi=sources.high)
    config = ModelConfig(node_port_range=STEPPING, cilium_version=version,
                         snat_collision_retries=retries, bpf_nat_global_max=1 << 22)
    datapath = ModelDatapath(config, random.Random(retries), engine="reference")
    rng = np.random.default_rng(retries)
    trials, refused = 1200, 0
    for trial in range(trials):
        server = Endpoint(SERVER, 1 + trial)
        for port in np.nonzero(taken)[0]:
            result = datapath.connect(
                FiveTuple(Proto.TCP, Endpoint(CLIENT, int(port)), server), EGRESS)
            assert result.port == port
        sport = int(rng.integers(sources.low, sources.high + 1))
        probe = datapath.connect(FiveTuple(Proto.TCP, Endpoint(PROBE, sport), server), EGRESS)
        refused += probe.port is None
    tolerance = 4 * math.sqrt(exact * (1 - exact) / trials)
    assert 0.02 < exact < 0.98
    assert abs(refused / trials - exact) <= tolerance, (refused / trials, exact, tolerance)


def test_local_loglinear_fit_recovers_an_exponential_tail_and_keeps_zeros() -> None:
    # p doubling per level is log-linear: the fit over any window returns it exactly.
    x = np.arange(12.0)
    p = 1e-6 * 2.0**x
    assert local_loglinear(x, p) == pytest.approx(p, rel=1e-6)
    # No refusal anywhere within a level's window: 0 there, never a made-up value.
    flat = np.zeros(12)
    flat[-1] = 1e-4
    out = local_loglinear(x, flat, half_width=3)
    assert (out[:8] == 0).all() and (out[8:] > 0).all()
    # The fit keeps the window's total: at the centre of a symmetric window of equal
    # values it is that value.
    assert local_loglinear(x, np.full(12, 3e-5))[6] == pytest.approx(3e-5, rel=1e-9)
