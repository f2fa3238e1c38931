"""The compiled kernel against the reference implementation and against random.Random."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.datapath.model import ConnectionBatch, ModelConfig, ModelDatapath, kernel_api
from egressgw.datapath.model.compiled import CompiledModel
from egressgw.datapath.model.reference import ReferenceModel
from model_helpers import SMALL_RANGE, assert_consistent


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), skip=st.integers(0, 1500), n=st.integers(1, 2000))
def test_kernel_mt19937_is_the_stream_of_random_random(seed, skip, n):
    rng = random.Random(seed)
    for _ in range(skip):
        rng.getrandbits(16)
    expected_rng = random.Random()
    expected_rng.setstate(rng.getstate())
    expected = [expected_rng.getrandbits(16) for _ in range(n)]
    model = CompiledModel(ModelConfig(), rng)
    out = np.zeros(n, np.int64)
    kernel_api.random16(model.state, out)
    assert out.tolist() == expected
    # Synced back, the random.Random continues exactly where the kernel stopped.
    model.sync_rng()
    assert rng.getrandbits(32) == expected_rng.getrandbits(32)


def _ids(dp: ModelDatapath, count: int, base: str) -> list[int]:
    first = int(ipaddress.ip_address(base))
    return [dp.intern(ipaddress.ip_address(first + i)) for i in range(count)]


def random_batch(dps: list[ModelDatapath], seed: int, n: int, t0: float, t1: float):
    """The same random workload for every datapath (ids are interned in the same order)."""
    gen = np.random.default_rng(seed)
    ids = []
    for dp in dps:
        pods = _ids(dp, 20, "198.51.100.1") + _ids(dp, 5, "2001:db8::100")
        remotes = _ids(dp, 3, "203.0.113.1") + _ids(dp, 2, "2001:db8:1::1")
        egress = _ids(dp, 2, "192.0.2.10") + _ids(dp, 1, "2001:db8::10")
        ids.append((pods, remotes, egress))
    pods, remotes, egress = ids[0]
    six = gen.random(n) < 0.2
    src = np.where(six, gen.choice(pods[20:], n), gen.choice(pods[:20], n))
    dst = np.where(six, gen.choice(remotes[3:], n), gen.choice(remotes[:3], n))
    eg = np.where(six, egress[2], gen.choice(egress[:2], n))
    start = np.sort(gen.uniform(t0, t1, n))
    duration = np.where(gen.random(n) < 0.1, np.inf, gen.exponential(40.0, n))
    return ConnectionBatch(
        start=start,
        duration=duration,
        end=gen.integers(0, 4, n).astype(np.uint8),
        src=src.astype(np.uint32),
        sport=np.where(gen.random(n) < 0.3, gen.integers(65472, 65536, n),
                       gen.integers(1024, 30000, n)).astype(np.uint16),
        dst=dst.astype(np.uint32),
        dport=gen.choice([443, 80], n).astype(np.uint16),
        proto=gen.choice([6, 6, 17, 1], n).astype(np.uint8),
        egress=eg.astype(np.uint32),
        keepalive=np.where(gen.random(n) < 0.3, gen.uniform(1, 30, n), 0).astype(np.float32),
        retries=np.where(gen.random(n) < 0.5, gen.integers(1, 7, n), 0).astype(np.uint8),
        rto=gen.choice([1.0, 0.75, 5.0], n).astype(np.float32),
    )  # fmt: skip


def _rows(dp: ModelDatapath):
    return dp.engine.nat_rows()  # created is in whole seconds in both engines


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(50, 1500),
    version=st.sampled_from(["1.16", "1.17", "1.18"]),
    gc_interval=st.sampled_from([None, 7.0]),
    # gc_pass_seconds; --bpf-ct-global-tcp-max (1024: passes delete large shares, the GC
    # speeds up and signalled passes scale their ratio)
    gc_knobs=st.tuples(st.sampled_from([0.0, 1.0]), st.sampled_from([1024, 524288])),
)
def test_compiled_kernel_equals_reference(seed, n, version, gc_interval, gc_knobs):
    gc_pass, ct_max = gc_knobs
    config = ModelConfig(
        node_port_range=SMALL_RANGE,
        bpf_nat_global_max=1024,
        cilium_version=version,
        conntrack_gc_interval=gc_interval,
        gc_pass_seconds=gc_pass,
        bpf_ct_global_tcp_max=ct_max,
        ct_timeout_tcp=120.0,
    )
    dps = [
        ModelDatapath(config, random.Random(seed), engine="reference"),
        ModelDatapath(config, random.Random(seed), engine="compiled"),
    ]
    for step in range(4):
        batch = random_batch(dps, seed + step, n, 30.0 * step, 30.0 * step + 29.9)
        for dp in dps:
            dp.run(batch, 30.0 * (step + 1))
        ref, comp = dps
        assert comp.counters.as_dict() == ref.counters.as_dict()
        assert _rows(comp) == _rows(ref)
        assert comp.endpoint_counts() == ref.endpoint_counts()
        assert_consistent(comp)
    # Both drew the same random numbers: the compiled engine's copy, synced back, equals
    # the reference engine's random.Random (fresh ones, seeded alike, as the control).
    assert isinstance(dps[0].engine, ReferenceModel)
    assert isinstance(dps[1].engine, CompiledModel)
    dps[1].sync_rng()
    assert dps[0].engine.rng.getstate() == dps[1].engine.rng.getstate()
    assert dps[0].engine.rng.getstate() != random.Random(seed).getstate()
    dps[0].advance(2000.0)
    dps[1].advance(2000.0)
    assert dps[1].counters.as_dict() == dps[0].counters.as_dict()
    assert _rows(dps[1]) == _rows(dps[0])
    assert_consistent(dps[1])


def test_kernel_grows_its_arrays_and_keeps_the_same_result():
    """More live connections than the initial 1024 rows: growth must not change anything."""
    config = ModelConfig(bpf_nat_global_max=4096, conntrack_gc_interval=10.0)
    dps = [
        ModelDatapath(config, random.Random(3), engine="reference"),
        ModelDatapath(config, random.Random(3), engine="compiled"),
    ]
    batch = random_batch(dps, 5, 6000, 0.0, 29.0)
    for dp in dps:
        dp.run(batch, 30.0)
        assert_consistent(dp)
        dp.advance(100.0)
        assert_consistent(dp)
    assert dps[1].counters.as_dict() == dps[0].counters.as_dict()
    assert _rows(dps[1]) == _rows(dps[0])
    assert dps[0].counters.evictions_in + dps[0].counters.evictions_out > 0
