"""Cilium's TCP CT state, its GC pacing and nat_fill_up, on both engines.

The expected values come from Cilium v1.16.2's source, worked by hand in the comments:
bpf/lib/conntrack.h (__ct_lookup, ct_update_timeout, ACTION_CLOSE), pkg/maps/ctmap
(GetInterval, calculateInterval), pkg/maps/ctmap/gc (runGC, signals), bpf/lib/nat.h.
"""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest

from egressgw.config import NodePortRange
from egressgw.datapath.model import (
    ConnectionBatch,
    EndKind,
    ModelConfig,
    ModelDatapath,
    TcpFlags,
)
from egressgw.datapath.model.gcpacing import SECOND, get_interval
from egressgw.datapath.model.ports import walk
from egressgw.net import Direction, Endpoint, FiveTuple, Proto
from model_helpers import EGRESS, REMOTE, pod, small_config, tcp

ENGINES = ["reference", "compiled"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def held_ports(dp: ModelDatapath) -> set[int]:
    return {e.tuple.dst.port for e in dp.nat_entries() if e.direction is Direction.IN}


def gc_every(seconds: float, **overrides: object) -> ModelConfig:
    return small_config(conntrack_gc_interval=seconds, **overrides)


# -- CT lifetimes per direction -------------------------------------------------------------


def test_rst_after_both_syns_holds_the_port_for_8000_seconds(engine):
    # After SYN, SYN-ACK, ACK both SYNs are seen: the pod's RST marks only tx_closing,
    # ct_entry_alive stays true and ct_update_timeout has just set 100 + 8000 = 8100.
    # With a pass every 10 s, the pass at 8100 sees lifetime >= now (alive), 8110 deletes.
    dp = ModelDatapath(gc_every(10.0), random.Random(1), engine=engine)
    t = tcp(1, sport=65500)
    dp.open(t, EGRESS)
    dp.advance(100.0)
    assert dp.close(t, EndKind.RST).ok
    dp.advance(8105.0)
    assert held_ports(dp) == {65500}
    dp.advance(8115.0)
    assert held_ports(dp) == set()


def test_rst_from_the_server_after_both_syns_also_keeps_8000_seconds(engine):
    dp = ModelDatapath(gc_every(10.0), random.Random(1), engine=engine)
    t = tcp(1, sport=65500)
    dp.open(t, EGRESS)
    dp.advance(100.0)
    dp.close(t, EndKind.RST_SERVER)  # rx_closing only
    dp.advance(8105.0)
    assert held_ports(dp) == {65500}
    dp.advance(8115.0)
    assert held_ports(dp) == set()


def test_rst_before_both_syns_closes_both_directions_with_10_seconds(engine):
    # SYN at 0 (lifetime 60), the remote answers RST: no SYN seen in the reply direction,
    # so both directions close and the lifetime is CT_CLOSE_TIMEOUT: 0 + 10. The pass at
    # 10 sees it alive, the pass at 20 deletes it (long before the SYN timeout, 60).
    dp = ModelDatapath(gc_every(10.0), random.Random(1), engine=engine)
    t = tcp(1, sport=65500)
    assert dp.connect(t, EGRESS).port == 65500
    assert dp.reply(t, EGRESS, TcpFlags.RST).ok
    dp.advance(15.0)
    assert held_ports(dp) == {65500}
    dp.advance(25.0)
    assert held_ports(dp) == set()


def test_one_fin_keeps_8000_seconds_and_the_second_fin_gives_10(engine):
    dp = ModelDatapath(gc_every(10.0), random.Random(1), engine=engine)
    t = tcp(1, sport=65500)
    dp.open(t, EGRESS)
    dp.advance(100.0)
    dp.send(t, EGRESS, TcpFlags.FIN)  # tx_closing: alive, lifetime 100 + 8000
    dp.advance(5000.0)
    assert held_ports(dp) == {65500}
    dp.reply(t, EGRESS, TcpFlags.FIN)  # rx_closing too: 5000 + 10
    dp.advance(5015.0)  # the pass at 5010 sees it alive
    assert held_ports(dp) == {65500}
    dp.advance(5025.0)
    assert held_ports(dp) == set()


def test_a_syn_answered_by_a_syn_ack_alone_keeps_the_syn_timeout(engine):
    # ct_update_timeout gives the TCP lifetime only after a packet without SYN
    # (seen_non_syn); a SYN-ACK carries SYN, so the entry keeps 60 s until the ACK.
    dp = ModelDatapath(gc_every(10.0), random.Random(1), engine=engine)
    t = tcp(1, sport=65500)
    dp.connect(t, EGRESS)
    dp.reply(t, EGRESS, TcpFlags.SYN)
    dp.advance(65.0)  # lifetime 60: the pass at 60 sees it alive
    assert held_ports(dp) == {65500}
    dp.advance(75.0)
    assert held_ports(dp) == set()


def test_a_new_syn_on_a_closing_entry_starts_fresh_and_keeps_the_port(engine):
    # ACTION_CREATE on a closing entry returns CT_NEW: a new entry (SYN lifetime, 60 s)
    # while the OUT NAT entry still maps the tuple to the same port.
    dp = ModelDatapath(gc_every(10.0), random.Random(1), engine=engine)
    t = tcp(1, sport=65500)
    dp.open(t, EGRESS)
    dp.close(t, EndKind.RST)  # tx_closing, 8000 s
    dp.advance(1000.0)
    again = dp.connect(t, EGRESS)
    assert again.port == 65500 and again.tries == 0
    dp.advance(1065.0)  # lifetime 1000 + 60: the pass at 1060 sees it alive
    assert held_ports(dp) == {65500}
    dp.advance(1075.0)
    assert held_ports(dp) == set()


def test_bulk_end_kinds_hold_ports_as_cilium_does(engine):
    # Four connections opened at 0 and ended at 5: FIN frees at the pass after 5 + 10,
    # the others (RST from either side, idle) hold 5 + 8000.
    dp = ModelDatapath(gc_every(30.0), random.Random(2), engine=engine)
    src = [dp.intern(pod(i)) for i in range(4)]
    remote, egress = dp.intern(REMOTE), dp.intern(EGRESS)
    rows = [
        (0.0, 5.0, kind, src[i], 65500 + i, remote, 443, 6, egress, 0.0)
        for i, kind in enumerate(
            [EndKind.FIN, EndKind.RST, EndKind.RST_SERVER, EndKind.IDLE]
        )
    ]
    dp.run(ConnectionBatch.from_rows(rows), 60.0)
    assert held_ports(dp) == {65501, 65502, 65503}
    assert dp.counters.closed == 3
    dp.run(ConnectionBatch.empty(), 8000.0)
    assert held_ports(dp) == {65501, 65502, 65503}
    dp.run(ConnectionBatch.empty(), 8040.0)  # lifetime 8005: the pass at 8010 deletes
    assert held_ports(dp) == set()


# -- GC pacing ---------------------------------------------------------------------------------


def test_get_interval_worked_by_hand():
    s = SECOND
    # No ratio yet: the starting interval, and the cache stays unset.
    assert get_interval(0, 0, 0.0, 0) == (300 * s, 0)
    # 400 of 1024 deleted: 0.390625 > 0.25, 300 s * 0.609375 = 182.8125 s -> 183 s.
    assert get_interval(0, 300 * s, 400 / 1024, 0) == (183 * s, 183 * s)
    # 30 of 1024 = 0.0293 < 0.05: 183 s * 1.5 = 274.5 s, Go rounds halves up: 275 s.
    assert get_interval(183 * s, 183 * s, 30 / 1024, 0) == (275 * s, 275 * s)
    # The previous pass came after 117 s of an expected 275: 120/1024 = 0.1171875 is
    # scaled by 275/117 to 0.27544 > 0.25: 275 s * (1 - 0.27544) = 199.25 s -> 199 s.
    assert get_interval(275 * s, 117 * s, 120 / 1024, 0) == (199 * s, 199 * s)
    # Between 5% and 25%: unchanged, but cached.
    assert get_interval(0, 300 * s, 0.1, 0) == (300 * s, 300 * s)
    # Floors and caps: 20 s * 0.1 = 2 s -> 10 s; 40000 s * 1.5 -> 12 h;
    # --conntrack-gc-max-interval caps what is returned, not what is cached.
    assert get_interval(20 * s, 20 * s, 0.95, 0) == (10 * s, 10 * s)
    assert get_interval(40000 * s, 40000 * s, 0.01, 0) == (43200 * s, 43200 * s)
    assert get_interval(300 * s, 300 * s, 0.01, 400 * s) == (400 * s, 450 * s)


def _syn_only(dp: ModelDatapath, first: int, count: int) -> None:
    """``count`` unanswered SYNs (60 s lifetime), each with its own kept port."""
    for i in range(first, first + count):
        assert dp.connect(tcp(i, sport=40000 + i), EGRESS).ok


def pacing_datapath(engine: str, **overrides: object) -> ModelDatapath:
    config = ModelConfig(
        bpf_ct_global_tcp_max=1024, snat_signal_thres=0, **overrides  # type: ignore[arg-type]
    )
    return ModelDatapath(config, random.Random(3), engine=engine)


def test_gc_pacing_on_a_worked_example(engine):
    # --bpf-ct-global-tcp-max 1024. Passes: the initial one at 0 (nothing deleted: 300 s,
    # cache unset); at 300 it deletes the 400 SYNs of t=0 (expired at 60): ratio
    # 400/1024 -> 183 s (see test_get_interval_worked_by_hand), next at 483; at 483 it
    # deletes the 30 SYNs of t=301: 30/1024 -> 275 s, next at 758.
    dp = pacing_datapath(engine)
    _syn_only(dp, 0, 400)
    dp.advance(300.0)
    assert dp.counters.gc_runs == 1
    dp.advance(301.0)
    assert dp.counters.gc_runs == 2
    assert held_ports(dp) == set()
    _syn_only(dp, 1000, 30)
    dp.advance(483.0)
    assert dp.counters.gc_runs == 2
    dp.advance(483.5)
    assert dp.counters.gc_runs == 3
    dp.advance(758.0)
    assert dp.counters.gc_runs == 3
    dp.advance(758.5)
    assert dp.counters.gc_runs == 4


def test_a_signalled_pass_scales_the_ratio_by_expected_over_actual(engine):
    # As above up to 483 (next pass due at 758). 120 SYNs at 500 expire at 560; at 600 a
    # collision (SNAT_SIGNAL_THRES 0) signals nat_fill_up and wakes the GC 117 s after the
    # last pass: 120/1024 * 275/117 = 0.2754 -> 199 s, next at 799 (unscaled it would
    # stay 275 s: 875).
    dp = pacing_datapath(engine)
    keeper = tcp(5000, sport=50000)
    dp.open(keeper, EGRESS)  # established: alive throughout
    _syn_only(dp, 0, 400)
    dp.advance(301.0)
    _syn_only(dp, 1000, 30)
    dp.advance(500.0)
    _syn_only(dp, 2000, 120)
    dp.advance(600.0)
    assert dp.counters.gc_runs == 3
    assert dp.connect(tcp(5001, sport=50000), EGRESS).tries == 1
    assert dp.counters.signals == 1
    assert dp.counters.gc_runs == 4
    dp.advance(799.0)
    assert dp.counters.gc_runs == 4
    dp.advance(799.5)
    assert dp.counters.gc_runs == 5


def test_signals_are_muted_while_a_pass_runs(engine):
    # gc.go mutes nat_fill_up from the moment the GC wakes until its pass ends; the model
    # gives a pass gc_pass_seconds (5 here). Timer pass at 100: a signal at 102 is
    # dropped, one at 106 wakes a pass.
    config = small_config(conntrack_gc_interval=100.0, snat_signal_thres=0, gc_pass_seconds=5.0)
    dp = ModelDatapath(config, random.Random(1), engine=engine)
    dp.open(tcp(0, sport=65500), EGRESS)
    dp.advance(102.0)
    runs = dp.counters.gc_runs
    assert dp.connect(tcp(1, sport=65500), EGRESS).tries >= 1
    assert (dp.counters.signals, dp.counters.gc_runs) == (1, runs)
    dp.advance(106.0)
    assert dp.connect(tcp(2, sport=65500), EGRESS).tries >= 1
    assert (dp.counters.signals, dp.counters.gc_runs) == (2, runs + 1)


def test_the_ratio_divides_by_the_ct_maps_max_entries(engine):
    # 100 expired entries of 100 tracked: Cilium's ratio is 100/524288 (< 5%: 300 -> 450 s),
    # not 100/100 (which would shrink the interval to 30 s).
    dp = ModelDatapath(ModelConfig(), random.Random(1), engine=engine)
    _syn_only(dp, 0, 100)
    dp.advance(300.5)
    assert dp.counters.gc_runs == 2
    dp.advance(750.0)
    assert dp.counters.gc_runs == 2
    dp.advance(750.5)
    assert dp.counters.gc_runs == 3


# -- nat.h's signal threshold, and eviction counters ----------------------------------------


@pytest.mark.parametrize(("collisions", "signals"), [(64, 0), (65, 1)])
def test_nat_fill_up_fires_above_64_tries_not_at_64(engine, collisions, signals):
    # nat.h v1.16: `if (retries > SNAT_SIGNAL_THRES)` with SNAT_SIGNAL_THRES 64. Occupy
    # exactly the first `collisions` ports the search will try (predicted from the same
    # random stream), so the probe finds a free port after exactly that many tries.
    npr = NodePortRange(30000, 65000)  # NAT ports 65001..65535
    seed = 11
    draws = random.Random(seed)
    tried = walk(npr.nat_min, npr.nat_max, 1234, 128, lambda: draws.getrandbits(16))
    assert len(set(tried[: collisions + 1])) == collisions + 1
    dp = ModelDatapath(ModelConfig(node_port_range=npr), random.Random(seed), engine=engine)
    for i, port in enumerate(tried[:collisions]):  # kept source ports: no draws
        assert dp.connect(tcp(i, sport=port), EGRESS).port == port
    probe = dp.connect(tcp(999, sport=1234), EGRESS)
    assert probe.port == tried[collisions] and probe.tries == collisions
    assert dp.counters.signals == signals


def test_evictions_of_out_and_in_entries_are_counted_apart(engine):
    # 512 connections fill the 1024-entry map (IN then OUT each); replies then refresh
    # every IN entry, so the 512 OUT entries are the oldest. Three new connections insert
    # six entries and evict six OUT entries, no IN entry.
    dp = ModelDatapath(small_config(), random.Random(1), engine=engine)
    conns = [tcp(i, sport=65500, dport=1000 + i) for i in range(515)]
    for t in conns[:512]:
        assert dp.connect(t, EGRESS).ok
    for t in conns[:512]:
        assert dp.reply(t, EGRESS).ok
    for t in conns[512:]:
        assert dp.connect(t, EGRESS).ok
    assert (dp.counters.evictions_out, dp.counters.evictions_in) == (6, 0)


# -- retransmissions ----------------------------------------------------------------------------


def test_a_refused_syn_is_retransmitted_at_1_3_7_15_31_63_seconds(engine):
    # Linux: initial RTO 1 s, doubling, tcp_syn_retries 6. The tuple's only reachable
    # ports are held; the holders end (FIN) at 20 and a pass every 10 s frees them at 40
    # (lifetime 30: the pass at 30 sees them alive). The waiting client's SYNs at 0, 1, 3,
    # 7, 15, 31 are dropped; the one at 63 gets a port: 63 s of extra latency.
    config = gc_every(10.0)
    dp = ModelDatapath(config, random.Random(5), engine=engine)
    src = [dp.intern(pod(i)) for i in range(64)]
    remote, egress = dp.intern(REMOTE), dp.intern(EGRESS)
    rows = [
        (0.0, 20.0, EndKind.FIN, src[i], 65472 + i, remote, 443, 6, egress, 0.0, 0, 0.0)
        for i in range(63)  # 65472..65534: every port the clamp reaches
    ]
    rows.append((0.5, 100.0, EndKind.FIN, src[63], 2000, remote, 443, 6, egress, 0.0, 6, 1.0))
    dp.run(ConnectionBatch.from_rows(rows), 200.0)
    c = dp.counters
    assert c.attempted == 64
    assert c.established == 64
    assert c.retransmits == 6
    assert c.drops.get(167, 0) == 6  # the first SYN and retransmissions 1-5
    assert c.connect_failed == 0
    assert np.flatnonzero(c.delayed).tolist() == [630]  # 63.0 s in 0.1 s bins
    assert int(c.delayed.sum()) == 1


def test_a_connection_that_never_gets_a_port_is_counted_once(engine):
    config = gc_every(10.0)
    dp = ModelDatapath(config, random.Random(5), engine=engine)
    src = [dp.intern(pod(i)) for i in range(64)]
    remote, egress = dp.intern(REMOTE), dp.intern(EGRESS)
    rows = [
        (0.0, np.inf, EndKind.FIN, src[i], 65472 + i, remote, 443, 6, egress, 0.0, 0, 0.0)
        for i in range(63)
    ]
    # A UDP-like constant timeout is TCP's doubling here (TCP): 2 retries at 1 and 3 s.
    rows.append((0.5, 10.0, EndKind.FIN, src[63], 2000, remote, 443, 6, egress, 0.0, 2, 1.0))
    dp.run(ConnectionBatch.from_rows(rows), 100.0)
    c = dp.counters
    assert (c.established, c.connect_failed, c.retransmits) == (63, 1, 2)
    assert c.drops.get(167, 0) == 3
    assert int(c.delayed.sum()) == 0


def test_a_signalled_pass_covers_only_the_signalled_family(engine):
    # gc.go: a nat_fill_up for IPv4 sets ipv4 = true, ipv6 = false for that pass, so an
    # expired IPv6 entry waits for the next timer pass (both families).
    config = small_config(conntrack_gc_interval=1000.0, snat_signal_thres=0)
    dp = ModelDatapath(config, random.Random(1), engine=engine)
    six = FiveTuple(Proto.TCP, Endpoint(ipaddress.ip_address("2001:db8::5"), 65500),
                    Endpoint(ipaddress.ip_address("2001:db8:1::5"), 443))
    assert dp.connect(six, ipaddress.ip_address("2001:db8::10")).ok  # SYN only: 60 s
    assert dp.connect(tcp(1, sport=65500), EGRESS).ok  # SYN only: 60 s
    dp.advance(100.0)
    probe = tcp(2, sport=65500)
    assert dp.connect(probe, EGRESS).tries >= 1  # collides with tcp(1): an IPv4 signal
    assert dp.counters.gc_runs == 2  # the initial scan and the signalled pass
    outs = {e.tuple for e in dp.nat_entries() if e.direction is Direction.OUT}
    assert outs == {six, probe}  # tcp(1) expired and went; the expired IPv6 SYN stays
