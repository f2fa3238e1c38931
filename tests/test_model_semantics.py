"""Semantics of the model datapath: nat.h port search, LRU NAT map, CT and GC.

Every test runs against both engines (the reference implementation and the compiled
kernel), so each also checks that they agree.
"""

from __future__ import annotations

import ipaddress
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.config import NodePortRange
from egressgw.datapath.model import (
    ConnectionBatch,
    DropReason,
    EndKind,
    ModelConfig,
    ModelDatapath,
)
from egressgw.datapath.model.ports import clamp, walk
from egressgw.datapath.model.types import BATCH_DTYPES
from egressgw.errors import ConfigError
from egressgw.net import Direction, Endpoint, Family, FiveTuple, NatEndpoint, Proto
from model_helpers import (
    EGRESS,
    EGRESS6,
    REMOTE,
    REMOTE6,
    SMALL_RANGE,
    SMALL_REACHABLE,
    assert_consistent,
    pod,
    small_config,
    tcp,
)

ENGINES = ["reference", "compiled"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_clamp_never_reaches_65535_and_steps_by_two_in_the_default_range():
    outputs = {clamp(32768, 65535, v) for v in range(65536)}
    assert min(outputs) == 32768
    assert max(outputs) == 65534
    assert len(outputs) == 32767
    assert clamp(32768, 65535, 65533 + 1) == 32768
    assert clamp(32768, 65535, 65534 + 1) == 32769
    assert clamp(32768, 65535, 40000 + 1) == 40002
    # u16 wrap: a kept port of 65535 plus one is 0.
    assert clamp(32768, 65535, 65535 + 1) == 32768


def test_config_errors_name_the_cilium_flag():
    with pytest.raises(ConfigError, match="--bpf-nat-global-max"):
        ModelConfig(bpf_nat_global_max=10)
    with pytest.raises(ConfigError, match="--conntrack-gc-interval"):
        ModelConfig(conntrack_gc_interval=0)
    with pytest.raises(ConfigError, match="--bpf-ct-timeout-regular-tcp"):
        ModelConfig(ct_timeout_tcp=-1)
    with pytest.raises(ConfigError, match="--node-port-range"):
        ModelConfig(node_port_range=NodePortRange(30000, 65534))
    assert ModelConfig(cilium_version="1.18").retries == 32
    assert ModelConfig(cilium_version="1.18").signal_thres == 16
    assert ModelConfig().retries == 128
    assert ModelConfig(snat_collision_retries=7).retries == 7


def test_original_port_is_kept_when_in_range(engine):
    dp = ModelDatapath(ModelConfig(), random.Random(1), engine=engine)
    result = dp.connect(tcp(1, sport=50000), EGRESS)
    assert result.port == 50000
    assert result.tries == 0
    # Same remote, same port wanted by another pod: collision, then a random port.
    second = dp.connect(tcp(2, sport=50000), EGRESS)
    assert second.port != 50000
    assert 32768 <= (second.port or 0) <= 65534
    assert second.tries == 1


def test_equal_seeds_give_equal_ports(engine):
    def ports(seed: int) -> list[int | None]:
        dp = ModelDatapath(ModelConfig(), random.Random(seed), engine=engine)
        return [dp.connect(tcp(i, sport=1000 + i), EGRESS).port for i in range(50)]

    assert ports(7) == ports(7)
    assert ports(7) != ports(8)


def test_out_of_range_port_takes_the_clamped_random_draw(engine):
    rng = random.Random(3)
    expected = clamp(32768, 65535, random.Random(3).getrandbits(16))
    dp = ModelDatapath(ModelConfig(), rng, engine=engine)
    assert dp.connect(tcp(1, sport=1234), EGRESS).port == expected


def test_existing_out_entry_is_reused(engine):
    dp = ModelDatapath(ModelConfig(), random.Random(1), engine=engine)
    first = dp.connect(tcp(1, sport=1234), EGRESS)
    again = dp.connect(tcp(1, sport=1234), EGRESS)
    assert again.port == first.port
    assert again.tries == 0
    assert dp.counters.allocations == 1
    assert dp.counters.established == 2


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    occupied=st.sets(st.integers(65472, 65535), max_size=64),
    sport=st.sampled_from([1234, 65472, 65500, 65535]),
    retries=st.integers(1, 70),
)
def test_allocation_matches_a_brute_force_walk_over_the_same_draws(seed, occupied, sport, retries):
    """The allocator fails only when its bounded walk finds nothing free."""
    config = small_config(snat_collision_retries=retries)
    for engine_name in ENGINES:
        dp = ModelDatapath(config, random.Random(seed), engine=engine_name)
        # Occupy exactly the ports in `occupied`: kept original ports never collide here.
        for i, port in enumerate(sorted(occupied)):
            assert dp.connect(tcp(i, sport=port), EGRESS).port == port
        draws = random.Random(seed)
        tried = walk(SMALL_RANGE.nat_min, 65535, sport, retries, lambda r=draws: r.getrandbits(16))
        result = dp.connect(tcp(999, sport=sport), EGRESS)
        free = [p for p in tried if p not in occupied]
        if free:
            assert result.port == free[0]
            assert result.tries == tried.index(free[0])
        else:
            assert result.drop is DropReason.NAT_NO_MAPPING
            assert result.tries == retries
        ports = [e.tuple.dst.port for e in dp.nat_entries() if e.direction is Direction.IN]
        assert len(ports) == len(set(ports))
        assert all(SMALL_RANGE.nat_min <= p <= 65535 for p in ports)


def test_tuple_with_r_ports_and_r_plus_d_connections_gives_d_drops(engine):
    d = 5
    dp = ModelDatapath(small_config(), random.Random(11), engine=engine)
    results = [dp.connect(tcp(i, sport=2000 + i), EGRESS) for i in range(SMALL_REACHABLE + d)]
    assert sum(r.ok for r in results) == SMALL_REACHABLE
    assert dp.counters.drops == {167: d}
    assert DropReason.NAT_NO_MAPPING.text == "No mapping for NAT masquerade"
    assert dp.counters.reason_text(167) == "No mapping for NAT masquerade"
    assert sorted(r.port for r in results if r.port) == list(range(65472, 65535))
    # More than SNAT_SIGNAL_THRES attempts: every failure signalled nat_fill_up.
    assert dp.counters.signals >= d
    assert dp.counters.tries[128] == d
    # Another remote port is another tuple with its own ports.
    assert dp.connect(tcp(500, sport=2000, dport=80), EGRESS).ok


def test_stalled_walk_when_the_step_is_zero(engine):
    """(min + 1) % (max - min) == 0 makes clamp(port + 1) == port: one port retried."""
    config = ModelConfig(node_port_range=NodePortRange(30000, 65470), bpf_nat_global_max=1024)
    dp = ModelDatapath(config, random.Random(5), engine=engine)
    ok = sum(dp.connect(tcp(i, sport=2000 + i), EGRESS).ok for i in range(64))
    assert ok < 64  # the bounded search gives up although ports remain free
    assert dp.counters.drops[167] == 64 - ok


def test_lru_evicts_least_recently_used_and_breaks_those_connections(engine):
    dp = ModelDatapath(small_config(), random.Random(2), engine=engine)
    remotes = [Endpoint(ipaddress.ip_address("203.0.113.7"), 1000 + i) for i in range(512)]
    tuples = [FiveTuple(Proto.TCP, Endpoint(pod(i), 3000), remotes[i]) for i in range(512)]
    for t in tuples:
        assert dp.connect(t, EGRESS).ok
    # The map (1024 entries) is full. Touch all but the first 3 connections.
    for t in tuples[3:]:
        assert dp.send(t, EGRESS).ok
        assert dp.reply(t, EGRESS).ok
    for i in range(3):
        newcomer = FiveTuple(Proto.TCP, Endpoint(pod(600 + i), 3000), remotes[0])
        assert dp.connect(newcomer, EGRESS).ok
    assert dp.counters.evictions_in + dp.counters.evictions_out == 6
    for t in tuples[3:]:
        assert dp.reply(t, EGRESS).ok
    for t in tuples[:3]:
        assert not dp.reply(t, EGRESS).ok  # the IN entry is gone: replies are dropped
        again = dp.send(t, EGRESS)
        assert again.broken
    assert dp.counters.broken == 3
    assert dp.counters.reply_drops == 3


def test_collision_probe_does_not_refresh_the_entry_it_hits(engine):
    # nat.h tries to insert the IN entry with BPF_NOEXIST; the kernel's failed insert
    # does not mark the existing entry as used, so the entry a probe hits stays the
    # least recently used and is the next one evicted.
    dp = ModelDatapath(small_config(), random.Random(4), engine=engine)
    first = tcp(0, sport=65500)
    assert dp.connect(first, EGRESS).port == 65500
    fillers = [tcp(i, sport=65500, dport=1000 + i) for i in range(1, 512)]
    for t in fillers:  # distinct remote ports: no collisions; the map is now full
        assert dp.connect(t, EGRESS).port == 65500
    probe = dp.connect(tcp(600, sport=65500), EGRESS)  # its first port hits first's IN
    assert probe.ok and probe.tries == 1
    assert (dp.counters.evictions_in, dp.counters.evictions_out) == (1, 1)
    assert not dp.reply(first, EGRESS).ok  # first's IN entry went, not a filler's
    assert all(dp.reply(t, EGRESS).ok for t in fillers)


def test_orphan_in_entry_is_purged_only_by_a_pass_a_signal_woke(engine):
    # gc.go runGC: PurgeOrphanNATEntries runs only when triggeredBySignal. A broken
    # connection leaves its old IN entry behind; timer passes keep it, the pass that a
    # nat_fill_up wakes removes it. (SNAT_SIGNAL_THRES 0: any collision signals.)
    config = small_config(conntrack_gc_interval=5.0, snat_signal_thres=0)
    dp = ModelDatapath(config, random.Random(6), engine=engine)
    first = tcp(0, sport=65500)
    assert dp.open(first, EGRESS).port == 65500
    fillers = [tcp(i, sport=65500, dport=1000 + i) for i in range(1, 512)]
    for t in fillers[:-1]:
        assert dp.connect(t, EGRESS).ok
    assert dp.reply(first, EGRESS).ok  # its IN entry is now newer than its OUT entry
    assert dp.connect(fillers[-1], EGRESS).ok  # the map is full
    assert dp.connect(tcp(600, sport=65500, dport=900), EGRESS).ok  # evicts first's OUT
    assert dp.counters.evictions_out == 1
    again = dp.send(first, EGRESS)  # a new mapping; the old IN entry stays behind
    assert again.broken and again.port != 65500
    mine = [e for e in dp.nat_entries() if pod(0) in (e.tuple.src.ip, e.xlate.ip)]
    assert sorted(e.direction.name for e in mine) == ["IN", "IN", "OUT"]
    assert dp.close(first, EndKind.FIN).ok  # both FINs: the close timeout, 10 s
    runs = dp.counters.gc_runs
    dp.advance(20.0)  # the CT entry expires at 10; the timer pass at 15 deletes it
    assert dp.counters.gc_runs == runs + 3  # 5, 10, 15
    left = [e for e in dp.nat_entries() if pod(0) in (e.tuple.src.ip, e.xlate.ip)]
    assert [(e.direction.name, e.tuple.dst.port) for e in left] == [("IN", 65500)]
    # A new connection's search collides with that orphan: the signal's pass purges it.
    probe = dp.connect(tcp(700, sport=65500), EGRESS)
    assert probe.ok and probe.tries == 1
    assert dp.counters.gc_runs == runs + 4
    assert [e for e in dp.nat_entries() if pod(0) in (e.tuple.src.ip, e.xlate.ip)] == []


def test_fin_close_frees_the_port_after_ct_timeout_and_gc(engine):
    config = small_config(conntrack_gc_interval=5.0)
    dp = ModelDatapath(config, random.Random(1), engine=engine)
    t = tcp(1, sport=65500)
    assert dp.open(t, EGRESS).port == 65500
    dp.advance(100)
    dp.close(t, EndKind.FIN)  # the pod's FIN, the remote's FIN, the last ACK
    dp.advance(105)  # GC at 105 is not run yet (events before `until` only)
    assert len(list(dp.nat_entries())) == 2
    dp.advance(115.1)  # CT expires at 110, GC at 110 sees it alive, GC at 115 deletes
    assert list(dp.nat_entries()) == []
    # The agent's initial pass at 0, then every 5 s up to 115: 24 passes.
    assert dp.counters.gc_runs == 24
    assert dp.counters.closed == 1


def test_established_tcp_lives_8000_seconds_and_syn_only_60(engine):
    config = small_config(conntrack_gc_interval=10.0)
    dp = ModelDatapath(config, random.Random(1), engine=engine)
    answered, unanswered = tcp(1, sport=65500), tcp(2, sport=65501)
    dp.open(answered, EGRESS)  # SYN, SYN-ACK, ACK
    dp.connect(unanswered, EGRESS)  # a SYN only
    dp.advance(75)
    ports = {e.xlate.port for e in dp.nat_entries() if e.direction is Direction.OUT}
    assert ports == {65500}
    dp.advance(7995)
    assert len(list(dp.nat_entries())) == 2
    dp.advance(8015)
    assert list(dp.nat_entries()) == []


def test_nat_entries_and_endpoint_counts(engine):
    dp = ModelDatapath(ModelConfig(), random.Random(1), engine=engine)
    dp.connect(tcp(1, sport=40000), EGRESS)
    dp.connect(tcp(2, sport=40000), EGRESS)
    dp.connect(tcp(3, sport=40000, dport=80), EGRESS)
    six = FiveTuple(
        Proto.UDP, Endpoint(ipaddress.ip_address("2001:db8::5"), 5353), Endpoint(REMOTE6, 53)
    )
    dp.connect(six, EGRESS6)
    echo = FiveTuple(Proto.ICMP, Endpoint(pod(4), 7), Endpoint(REMOTE, 0))
    dp.connect(echo, EGRESS)
    counts = dp.endpoint_counts()
    assert counts == {
        NatEndpoint(Family.IPV4, Proto.TCP, EGRESS, REMOTE, 443): 2,
        NatEndpoint(Family.IPV4, Proto.TCP, EGRESS, REMOTE, 80): 1,
        NatEndpoint(Family.IPV6, Proto.UDP, EGRESS6, REMOTE6, 53): 1,
        NatEndpoint(Family.IPV4, Proto.ICMP, EGRESS, REMOTE, 0): 1,
    }
    entries = list(dp.nat_entries())
    outs = [e for e in entries if e.direction is Direction.OUT]
    ins = [e for e in entries if e.direction is Direction.IN]
    assert len(outs) == len(ins) == 5
    first_out = next(e for e in outs if e.tuple == tcp(1, sport=40000))
    assert first_out.xlate == Endpoint(EGRESS, 40000)
    mirror = next(e for e in ins if e.xlate == first_out.tuple.src)
    assert mirror.tuple == FiveTuple(Proto.TCP, Endpoint(REMOTE, 443), Endpoint(EGRESS, 40000))
    assert all(e.needs_ct for e in entries)


def batch_of(rows):
    return ConnectionBatch.from_rows(rows)


def test_run_processes_closes_keepalives_and_idle_expiry(engine):
    config = small_config(conntrack_gc_interval=30.0)
    dp = ModelDatapath(config, random.Random(4), engine=engine)
    src = [dp.intern(pod(i)) for i in range(3)]
    remote, egress = dp.intern(REMOTE), dp.intern(EGRESS)
    rows = [
        # start, duration, end, src, sport, dst, dport, proto, egress, keepalive
        (0.0, 5.0, EndKind.FIN, src[0], 1000, remote, 443, 6, egress, 0.0),
        (1.0, math.inf, EndKind.IDLE, src[1], 1000, remote, 443, 6, egress, 0.0),
        (2.0, math.inf, EndKind.FIN, src[2], 1000, remote, 443, 6, egress, 5000.0),
    ]
    dp.run(batch_of(rows), 30.0)
    assert dp.counters.attempted == 3
    assert dp.counters.established == 3
    assert dp.counters.closed == 1
    assert sum(dp.endpoint_counts().values()) == 3
    dp.run(ConnectionBatch.empty(), 60.0)  # GC at 30 and 60: the FIN one is gone
    assert sum(dp.endpoint_counts().values()) == 2
    dp.run(ConnectionBatch.empty(), 9000.0)  # idle one expired after 8000 s; keepalive lives
    assert sum(dp.endpoint_counts().values()) == 1
    assert dp.counters.broken == 0
    assert dp.now == 9000.0


def test_run_rejects_starts_outside_the_window(engine):
    dp = ModelDatapath(small_config(), random.Random(1), engine=engine)
    rows = [(40.0, 1.0, 0, 1, 1000, 2, 443, 6, 3, 0.0)]
    with pytest.raises(Exception, match="batch starts"):
        dp.run(batch_of(rows), 30.0)


def test_counters_tries_histogram_counts_every_allocation(engine):
    dp = ModelDatapath(small_config(), random.Random(9), engine=engine)
    for i in range(40):
        dp.connect(tcp(i, sport=2000 + i), EGRESS)
    tries = dp.counters.tries
    assert isinstance(tries, np.ndarray)
    assert len(tries) == 129
    assert int(tries.sum()) == 40 == dp.counters.allocations


def test_connection_batch_validates_and_normalises_columns():
    rows = [(0.0, 1.0, 0, 1, 1000, 2, 443, 6, 3, 0.0), (1.0, np.inf, 2, 1, 1001, 2, 443, 6, 3, 5)]
    batch = ConnectionBatch.from_rows(rows)
    assert len(batch) == 2
    assert batch.sport.dtype == np.uint16
    assert batch.keepalive.dtype == np.float32
    names = tuple(BATCH_DTYPES)
    doubled = ConnectionBatch.from_rows([rows[0], rows[0], rows[1], rows[1]])
    strided = ConnectionBatch(**{name: getattr(doubled, name)[::2] for name in names})
    assert not doubled.src[::2].flags.c_contiguous
    assert strided.src.flags.c_contiguous
    with pytest.raises(ValueError, match="sorted by start"):
        ConnectionBatch.from_rows(rows[::-1])
    with pytest.raises(ValueError, match="end"):
        ConnectionBatch.from_rows([(0.0, 1.0, 7, 1, 1000, 2, 443, 6, 3, 0.0)])
    with pytest.raises(ValueError, match="duration"):
        ConnectionBatch.from_rows([(0.0, -1.0, 0, 1, 1000, 2, 443, 6, 3, 0.0)])
    with pytest.raises(ValueError, match="rows"):
        ConnectionBatch(
            **{
                **{n: getattr(batch, n) for n in names},
                "src": np.zeros(5, np.uint32),
            }
        )


def test_unknown_cilium_version_is_a_config_error():
    with pytest.raises(ConfigError, match="cilium-version"):
        ModelConfig(cilium_version="1.99")


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["connect", "send", "reply"]),
                              # the oldest entries and the connections that overflow
                              st.one_of(st.integers(0, 40), st.integers(512, 611))),
                    min_size=1, max_size=400))
def test_lru_property_evicts_exactly_the_least_recently_used_entry(ops):
    """Against an independent LRU: connects insert IN then OUT, sends touch OUT, replies
    touch IN; whenever the 1024-entry map is full, the entry used longest ago goes."""
    for engine_name in ENGINES:
        dp = ModelDatapath(small_config(), random.Random(0), engine=engine_name)
        # Each connection its own tuple (own remote port), so no port search collides.
        conns = [tcp(i, sport=65500, dport=1000 + i) for i in range(612)]
        recency: dict[tuple[str, int], None] = {}  # insertion order = least recent first
        connected: set[int] = set()

        def use(key: tuple[str, int], recency: dict[tuple[str, int], None] = recency) -> None:
            if key not in recency and len(recency) == 1024:
                del recency[next(iter(recency))]
            recency.pop(key, None)
            recency[key] = None

        # 512 connections first fill the map: every new connection in the ops evicts.
        for step, (op, i) in enumerate([("connect", i) for i in range(512)] + ops):
            if op == "connect" and i not in connected:
                connected.add(i)
                assert dp.connect(conns[i], EGRESS).ok
                use(("IN", i))
                use(("OUT", i))
            elif op == "send" and ("OUT", i) in recency:
                assert not dp.send(conns[i], EGRESS).broken
                use(("OUT", i))
            elif op == "reply" and i in connected:
                assert dp.reply(conns[i], EGRESS).ok == (("IN", i) in recency)
                if ("IN", i) in recency:
                    use(("IN", i))
            if step % 50 == 0:
                assert_consistent(dp)
        assert_consistent(dp)
        present = {
            (e.direction.name, int(e.tuple.src.ip if e.direction is Direction.OUT
                                   else e.xlate.ip) - int(pod(0)))
            for e in dp.nat_entries()
        }
        assert present == set(recency)
        if len(connected) > 512:
            assert dp.counters.evictions_in + dp.counters.evictions_out > 0
