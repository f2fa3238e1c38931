"""The refusal curve of a Linux gateway's nf_nat search, against independent counts.

- The rounds' sizes are nf_nat_l4proto_unique_tuple's rule (Linux 6.18 nf_nat_proto.c)
  worked out by hand for a few range sizes.
- The distribution of ports one search tries is checked against brute force on a tiny
  ring (every placement enumerated), against the kernel's offset arithmetic written out
  here for one round (every u16 offset), and against offsets sampled here for five.
- The exact curve is checked against the netfilter model datapath (which
  tests/test_netfilter_model_kernel.py checks against the kernel): k random ports held
  by connections that keep their own source port, then one new connection, a fresh
  tuple per trial; the measured growth curve against tuples filled on that model.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli_support import run_cli
from egressgw.datapath.model import EndKind, ModelConfig, ModelDatapath
from egressgw.limits import NatPortRange
from egressgw.net import Endpoint, FiveTuple, Proto
from egressgw.sim.nf_refusal import _ring_union_sizes, round_sizes, union_sizes
from egressgw.sim.refusal import (
    PortSearch,
    SourcePorts,
    growth_curve,
    steady_curve,
    uniform_curve,
)

CLIENT = ipaddress.ip_address("192.0.2.1")
PROBE = ipaddress.ip_address("192.0.2.2")
SERVER = ipaddress.ip_address("198.51.100.1")
EGRESS = ipaddress.ip_address("203.0.113.1")
ROOT = Path(__file__).parents[1]


def test_round_sizes_are_the_kernels_halving() -> None:
    # attempts = min(size, 128); another round only while attempts < size and >= 16.
    assert round_sizes(64) == (64,)
    assert round_sizes(128) == (128,)
    assert round_sizes(129) == (128, 64, 32, 16, 8)
    assert round_sizes(64512) == (128, 64, 32, 16, 8)
    assert sum(round_sizes(256)) == 248


def test_ring_counting_matches_every_placement_of_a_tiny_ring() -> None:
    size, lengths = 7, (3, 2, 1)
    counts: Counter[int] = Counter()
    for starts in itertools.product(range(size), repeat=len(lengths)):
        covered = {(s + i) % size for s, n in zip(starts, lengths, strict=True)
                   for i in range(n)}
        counts[len(covered)] += 1
    expected = np.zeros(sum(lengths) + 1)
    for j, n in counts.items():
        expected[j] = n / size ** len(lengths)
    assert _ring_union_sizes(size, lengths) == pytest.approx(expected, abs=1e-15)


def test_one_round_counts_the_u16_wrap_like_the_kernel() -> None:
    # 100 ports: one round of 100 from min + off % 100, off a u16 that wraps; offsets
    # near 65535 jump back to residue 0 and try some ports twice.
    size = 100
    counts: Counter[int] = Counter()
    for off in range(1 << 16):
        counts[len({((off + i) & 0xFFFF) % size for i in range(size)})] += 1
    sizes, how = union_sizes(size)
    assert how == "exact"
    assert counts[size] < 1 << 16  # the wrap is there to count
    for j in range(size + 1):
        assert sizes[j] == pytest.approx(counts[j] / (1 << 16), abs=1e-15)


@pytest.mark.parametrize("size", [256, 512, 300])
def test_five_rounds_match_sampled_offsets(size: int) -> None:
    rng = np.random.default_rng(size)
    samples = 40_000
    covered = np.zeros((samples, size), dtype=bool)
    rows = np.arange(samples)[:, None]
    for attempts in (128, 64, 32, 16, 8):
        off = rng.integers(0, 1 << 16, samples)[:, None]
        covered[rows, ((off + np.arange(attempts)) & 0xFFFF) % size] = True
    sampled = np.bincount(covered.sum(axis=1), minlength=249) / samples
    sizes, how = union_sizes(size)
    assert how == ("exact" if (1 << 16) % size == 0 else "ring approximation")
    # Kolmogorov-Smirnov: the largest gap between the two CDFs, 99.9% level.
    gap = np.abs(np.cumsum(sampled[: len(sizes)]) - np.cumsum(sizes)).max()
    assert gap < 1.95 / math.sqrt(samples), gap


def _refused_on_model(port_range: NatPortRange, k: int, *, trials: int, sources: SourcePorts,
                      seed: int) -> int:
    """Trials on the netfilter model: k random ports held, then one new connection."""
    datapath = ModelDatapath(ModelConfig(datapath_model="netfilter",
                                         nat_port_range=port_range), random.Random(seed))
    rng = np.random.default_rng(seed)
    refused = 0
    for trial in range(trials):
        server = Endpoint(SERVER, 1 + trial)  # a fresh tuple per trial
        for port in rng.choice(np.arange(port_range.min, port_range.max + 1), k,
                               replace=False):
            held = datapath.connect(FiveTuple(Proto.TCP, Endpoint(CLIENT, int(port)), server),
                                    EGRESS)
            assert held.port == port  # a free port in the range is kept
        sport = int(rng.integers(sources.low, sources.high + 1))
        probe = datapath.connect(FiveTuple(Proto.TCP, Endpoint(PROBE, sport), server), EGRESS)
        refused += probe.port is None
    return refused


@pytest.mark.parametrize(
    ("port_range", "k", "sources"),
    [(NatPortRange(65280, 65535), 255, SourcePorts()),
     (NatPortRange(65280, 65535), 254, SourcePorts(65280, 65535)),
     (NatPortRange(65236, 65535), 299, SourcePorts())],
    ids=["256-ports-linux-clients", "256-ports-kept-in-range", "300-ports-ring-approximation"],
)
def test_exact_curve_matches_the_netfilter_model(port_range: NatPortRange, k: int,
                                                 sources: SourcePorts) -> None:
    search = PortSearch.netfilter(port_range)
    exact = float(uniform_curve(search, sources, port_range.ports, held=[k]).refused[0])
    trials = 300
    refused = _refused_on_model(port_range, k, trials=trials, sources=sources, seed=k)
    tolerance = 4 * math.sqrt(exact * (1 - exact) / trials)
    print(f"{port_range}, k={k}, clients {sources}: exact {exact:.4f}, netfilter model "
          f"{refused / trials:.4f} ({refused}/{trials}), 4 sigma {tolerance:.4f}")
    assert 0.05 < exact < 0.95
    assert abs(refused / trials - exact) <= tolerance, (refused / trials, exact, tolerance)


def _fill_tuples(sources: SourcePorts, curve: Any, *, tuples: int, shared_clients: bool,
                 seed: int) -> tuple[float, float]:
    """(refused, expected by ``curve``) filling ``tuples`` tuples of 256 ports in turn
    on the netfilter model, from 80% to 99%. ``shared_clients``: the same client
    addresses for every tuple, so a client port met before brings the mapping it got
    there (find_appropriate_src); else fresh addresses per tuple, as the curve assumes."""
    port_range = NatPortRange(65280, 65535)
    divisor = port_range.ports
    datapath = ModelDatapath(ModelConfig(datapath_model="netfilter",
                                         nat_port_range=port_range), random.Random(seed))
    rng = np.random.default_rng(seed)
    egress = ipaddress.ip_address("2001:db8:203::1")
    expected = observed = 0.0
    span = sources.high - sources.low + 1
    for tuple_index in range(tuples):
        server = Endpoint(ipaddress.ip_address("2001:db8:100::1"), 1 + tuple_index)
        group = 0 if shared_clients else tuple_index
        clients = [ipaddress.ip_address(f"2001:db8:1::{group:x}:{c:x}")
                   for c in range(sources.clients)]
        nxt = rng.integers(0, span, sources.clients)
        held = 0
        while held < 0.99 * divisor:
            c = int(rng.integers(0, sources.clients))
            sport = sources.low + int(nxt[c]) % span
            nxt[c] += 1
            result = datapath.connect(FiveTuple(Proto.TCP, Endpoint(clients[c], sport), server),
                                      egress)
            if held >= 0.8 * divisor:
                expected += curve.rate_at(held)
                observed += result.port is None
            held += result.port is not None
    return observed, expected


def test_growth_curve_matches_tuples_filled_on_the_netfilter_model() -> None:
    # 256 SNAT ports, 8 clients walking their ports inside the range: each keeps its
    # port while free, so their runs meet and the search must find the gaps.
    port_range = NatPortRange(65280, 65535)
    search = PortSearch.netfilter(port_range)
    sources = SourcePorts(port_range.min, port_range.max, clients=8)
    curve = growth_curve(search, sources, port_range.ports,
                         saturations=np.arange(0.8, 1.0, 0.004), steps=4000, seed=3,
                         repeats=16)
    observed, expected = _fill_tuples(sources, curve, tuples=40, shared_clients=False, seed=7)
    shared, _ = _fill_tuples(sources, curve, tuples=40, shared_clients=True, seed=7)
    print(f"growth on 40 tuples of 256 ports: {observed:.0f} refused, {expected:.1f} expected; "
          f"the same 8 client addresses for every tuple: {shared:.0f} refused")
    assert expected > 30
    assert abs(observed - expected) <= 0.25 * expected + 4 * math.sqrt(expected), (
        observed, expected)
    # Client ports met on an earlier tuple bring their mapping there, a port that was
    # free on that tuple: fewer refusals than the curve, which leaves that out.
    assert shared < observed


def test_steady_curve_with_time_wait_matches_the_netfilter_model() -> None:
    """220 of 256 ports held by established connections of a 600 s hold; each new one
    that gets a port ends the oldest with FIN, whose entry lingers 120 s in TIME_WAIT
    (the model's lifetimes and takeover, which tests/test_netfilter_model_kernel.py and
    tests/test_refusal_netfilter_timewait_kernel.py check against the kernel). Clients
    draw random ports outside the range, one address each. The steady curve with
    TIME_WAIT must give the model's refusal rate; without TIME_WAIT it is far below."""
    port_range = NatPortRange(65280, 65535)
    k, hold, measured = 220, 600.0, 10_000
    # The arrangement of established, TIME_WAIT and free ports settles slowly (the
    # refusal rate climbs for some 50 turnovers of the k connections): both warm up for
    # 60 x k new connections first.
    warm_factor = 60
    sources = SourcePorts()
    with_tw = steady_curve(PortSearch.netfilter(port_range, hold=hold), sources,
                           port_range.ports, saturations=[k / port_range.ports], steps=100_000,
                           warm_factor=warm_factor)
    without = steady_curve(PortSearch.netfilter(port_range, hold=None), sources,
                           port_range.ports, saturations=[k / port_range.ports], steps=100_000)
    assert int(with_tw.held[0]) == k
    datapath = ModelDatapath(ModelConfig(datapath_model="netfilter",
                                         nat_port_range=port_range), random.Random(11))
    rng = np.random.default_rng(11)
    server = Endpoint(ipaddress.ip_address("2001:db8:100::10"), 443)
    egress = ipaddress.ip_address("2001:db8:203::10")
    established: list[FiveTuple] = []
    dt = hold / k  # k connections of this hold: one new connection every hold / k
    now = 0.0
    refused = 0
    warm = warm_factor * k
    for step in range(k + warm + measured):
        now += dt
        datapath.advance(now)
        client = ipaddress.ip_address(f"2001:db8:1::{step + 1:x}")
        tup = FiveTuple(Proto.TCP, Endpoint(client, int(rng.integers(32768, 61000))), server)
        got = datapath.open(tup, egress).port is not None
        if step >= k + warm:
            refused += not got
        if not got:
            continue
        established.append(tup)
        if len(established) > k:
            datapath.close(established.pop(0), EndKind.FIN)
    observed = refused / measured
    expected = float(with_tw.refused[0])
    sigma = math.sqrt(expected * (1 - expected) / measured)
    print(f"{k}/256 established, {hold:g} s hold: netfilter model refused {refused} of "
          f"{measured} ({observed:.4f}); steady curve with TIME_WAIT {expected:.4f}, "
          f"without {float(without.refused[0]):.5f}")
    assert abs(observed - expected) <= 0.2 * expected + 4 * sigma
    assert float(without.refused[0]) < expected / 10


_run = run_cli


def test_limits_prints_the_netfilter_curve(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _run(capsys, "limits", "--datapath-model", "netfilter",
                           "--nat-port-range", "65024-65535", "--clients", "0", "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["datapath"] == "netfilter" and doc["ciliumVersion"] is None
    assert doc["divisor"] == doc["ports"] == 512 and doc["tries"] == 248
    assert doc["curves"]["uniform"]["kind"] == "uniform (exact)"
    # Random clients, random occupancy: the first refusals need nearly every port taken
    # (P = 1e-4 where all of ~233 tried ports are among the taken ones).
    assert 0.9 < doc["curves"]["uniform"]["saturationAt"]["0.0001"] < 0.99
    code, out, _err = _run(capsys, "limits", "--datapath-model", "netfilter", "--clients", "0")
    assert code == 0
    assert out.startswith("Linux nf_nat port search: SNAT ports 1024-65535")
    assert "saturation divides by 64512" in out and "ring approximation" in out


def test_limits_refuses_a_nat_port_range_for_cilium(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "limits", "--nat-port-range", "1024-65535")
    assert code == 2 and not out and err.count("\n") == 1 and "--nat-port-range" in err


def test_forecast_takes_the_netfilter_curve_over_what_snapshots_say(
        capsys: pytest.CaptureFixture[str]) -> None:
    snapshots = sorted(str(p) for p in (ROOT / "src/egressgw/examples/capacity").glob("*.json"))
    code, out, _err = _run(capsys, "forecast", *snapshots)
    assert code == 0 and "Cilium 1.16" in out and "Limit 32767 ports (cilium" in out
    code, out, _err = _run(capsys, "forecast", "--datapath-model", "netfilter", *snapshots)
    assert code == 0 and "Cilium" not in out
    assert "Limit 64512 ports (netfilter" in out and "Linux nf_nat" in out
    # 22937 connections of 64512 ports.
    assert f"{22937 / 64512:.1%}" in out


def test_alerts_render_the_netfilter_curve(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _run(capsys, "alerts", "--datapath-model", "netfilter",
                           "--nat-port-range", "32768-65535", "--clients", "0")
    assert code == 0
    assert ("Generated by `egressgw alerts --datapath-model netfilter --nat-port-range "
            "32768-65535 --clients 0`") in out
    assert "Linux nf_nat port search: SNAT ports 32768-65535" in out
    assert "nf_nat tries" in out and "nat.h" not in out  # the why names Linux's search
    code, out, _err = _run(capsys, "alerts", "--fleet", "--datapath-model", "netfilter",
                           "--nat-port-range", "32768-65535", "--clients", "0")
    assert code == 0
    assert ("Generated by `egressgw alerts --fleet --datapath-model netfilter "
            "--nat-port-range 32768-65535 --clients 0`") in out
    assert "nf_nat tries" in out and "nat.h" not in out


def test_forecast_of_conntrack_dumps_uses_the_netfilter_curve(
        capsys: pytest.CaptureFixture[str]) -> None:
    dump = ROOT / "tests/golden/conntrack-L.txt"  # real `conntrack -L` output
    code, out, _err = _run(capsys, "forecast", f"{dump}@0", f"{dump}@60",
                           "--nat-port-range", "65024-65535")
    assert code == 0
    assert out.startswith("Limit 512 ports (netfilter: --nat-port-range 65024-65535)")
    assert "(egressgw limits, Linux nf_nat, clients" in out
    code, out, _err = _run(capsys, "forecast", f"{dump}@0", f"{dump}@60",
                           "--nat-port-range", "65024-65535", "-o", "json")
    assert code == 0
    named = json.loads(out)["refusalCurve"]  # the JSON names the curve, as the table does
    assert named["datapath"] == "Linux nf_nat" and named["curve"] == "steady"
    assert named["search"].startswith("Linux nf_nat port search: SNAT ports 65024-65535")


def test_limits_hold_sets_the_time_wait_share_and_is_netfilter_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    small = ("--datapath-model", "netfilter", "--nat-port-range", "65280-65535", "--clients", "0")
    code, out, _err = _run(capsys, "limits", *small, "--hold", "none")
    assert code == 0 and "; no TIME_WAIT;" in out
    code, out, _err = _run(capsys, "limits", *small, "--hold", "2m")
    assert code == 0 and "ended connections 120 s in TIME_WAIT after a 120 s hold" in out
    code, out, err = _run(capsys, "limits", "--hold", "10m")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--hold" in err
    code, out, err = _run(capsys, "limits", *small, "--hold", "soon")
    assert code == 2 and "--hold" in err
