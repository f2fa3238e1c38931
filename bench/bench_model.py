"""Benchmark the model datapath: the compiled kernel against the reference, side by side.

A. Allocation under pressure: one {egress IP, remote IP, remote port} tuple 95% full and
   the NAT map (default 524288 entries) at capacity, so every new connection's inserts
   evict. Each step opens a connection to the hot tuple (random source port: a random
   draw, then the nat.h walk over a 95%-full range), retires the oldest hot connection
   (its CT entry and NAT mapping deleted, as the GC does for an expired one) to keep the
   tuple at 95%, and opens a connection to a fresh filler tuple to bring the map back to
   capacity. Reported: hot connections opened per second (each step = 2 opens, 1 retire).
B. Simulation throughput: a 10,000,000-connection workload run through ``run()`` in 30 s
   slices, as the simulator drives it (closes, keepalives, CT expiry and GC inside).

Usage: .venv/bin/python bench/bench_model.py [--quick]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time

import numpy as np
from numba import njit

from egressgw.datapath.model import ConnectionBatch, ModelConfig, ModelDatapath
from egressgw.datapath.model import kernel as k
from egressgw.datapath.model.compiled import CompiledModel
from egressgw.datapath.model.reference import ReferenceModel

HOT_FILL = 0.95


def _ids(dp: ModelDatapath, base: str, count: int) -> np.ndarray:
    first = int(ipaddress.ip_address(base))
    return np.array([dp.intern(ipaddress.ip_address(first + i)) for i in range(count)], np.uint32)


class Pressure:
    """Scenario A's fixture: ids and the prefill batch, identical for both engines."""

    def __init__(self, dp: ModelDatapath, config: ModelConfig, steps: int) -> None:
        gen = np.random.default_rng(1)
        reachable = config.port_max - config.port_min  # ports the clamp can produce
        self.hot_count = int(HOT_FILL * reachable)
        conns = config.bpf_nat_global_max // 2
        fillers = conns - self.hot_count
        per_tuple = reachable
        filler_tuples = (fillers + steps) // per_tuple + 2
        self.egress = int(_ids(dp, "192.0.2.10", 1)[0])
        self.hot_dst = int(_ids(dp, "203.0.113.1", 1)[0])
        self.filler_dst = _ids(dp, "203.0.113.100", filler_tuples)
        self.pods = _ids(dp, "198.51.100.1", steps // 28000 + 2)
        self.filler_pod = int(self.pods[0])
        hot_ports = config.port_min + np.sort(gen.choice(reachable, self.hot_count, False))
        filler_ports = config.port_min + np.arange(fillers) % per_tuple
        filler_dst = self.filler_dst[np.arange(fillers) // per_tuple]
        n = conns
        self.prefill = ConnectionBatch(
            start=np.zeros(n),
            duration=np.full(n, np.inf),
            end=np.full(n, 2, np.uint8),
            src=np.full(n, self.filler_pod, np.uint32),
            sport=np.concatenate([filler_ports, hot_ports]).astype(np.uint16),
            dst=np.concatenate([filler_dst, np.full(self.hot_count, self.hot_dst)]).astype(
                np.uint32
            ),
            dport=np.full(n, 443, np.uint16),
            proto=np.full(n, 6, np.uint8),
            egress=np.full(n, self.egress, np.uint32),
            keepalive=np.zeros(n, np.float32),
        )
        self.fillers = fillers
        # New hot connections: distinct (pod, sport) with sports below the NAT range.
        i = np.arange(steps)
        self.new_src = self.pods[1 + i // 28000]
        self.new_sport = (1024 + i % 28000).astype(np.uint16)
        self.next_filler = fillers + i  # filler tuple index of step i
        self.next_filler_dst = self.filler_dst[self.next_filler // per_tuple]
        self.next_filler_sport = (config.port_min + self.next_filler % per_tuple).astype(np.uint16)


# Not cached: numba's cache of a caller is keyed by its own file only, so a cached _churn
# would keep running the kernel functions it was compiled against after kernel.py changes.
@njit(cache=False, _nrt=False)
def _churn(S, src, sport, hot_dst, f_dst, f_sport, f_src, egress, fifo, oldest, pos):  # noqa: PLR0917
    """Scenario A's loop in the kernel from step pos[0]; returns (opened, dropped).

    Stops early (pos[0] < steps) when the NAT entry pool needs to grow.
    """
    st = S.st
    opened = 0
    dropped = 0
    head = pos[1]
    tail = pos[2]
    while tail < fifo.shape[0] and fifo[tail] >= 0:
        tail += 1
    for i in range(pos[0], src.shape[0]):
        if st[k.S_NAT_NFREE] < 2:
            pos[0], pos[1], pos[2] = i, head, tail
            return opened, dropped
        o, _p, drop, _b, _r = k.forward(S, src[i], sport[i], hot_dst, 443, 6, egress, 0)
        if drop:
            dropped += 1
            continue
        opened += 1
        if oldest:
            fifo[tail] = o
            tail += 1
            o = fifo[head]
            head += 1
        k.ct_delete(S, o)
        k.forward(S, f_src, f_sport[i], f_dst[i], 443, 6, egress, 0)
    pos[0] = src.shape[0]
    return opened, dropped


def pressure_compiled(
    config: ModelConfig, steps: int, oldest: bool
) -> tuple[float, dict[str, float]]:
    dp = ModelDatapath(config, random.Random(7))
    fx = Pressure(dp, config, steps)
    dp.run(fx.prefill, 1.0)
    model = dp._engine
    assert isinstance(model, CompiledModel)
    conns = len(fx.prefill) + 2 * steps + 16
    model._grow_conns(1 << (conns - 1).bit_length())
    fifo = np.full(fx.hot_count + steps, -1, np.int64)
    hot = np.flatnonzero(
        (model.cr[:, k.R_DST] == fx.hot_dst) & (model.cr[:, k.R_MISC] & k.CF_CT != 0)
    )
    fifo[: len(hot)] = hot
    evictions_before = model.cnt[k.K_EVICT_IN] + model.cnt[k.K_EVICT_OUT]
    empty = np.zeros(0, np.uint32)
    _churn(
        model.state,
        empty,
        empty.astype(np.uint16),
        fx.hot_dst,
        empty,
        empty.astype(np.uint16),
        fx.filler_pod,
        fx.egress,
        fifo,
        oldest,
        np.zeros(3, np.int64),
    )  # compile
    pos = np.zeros(3, np.int64)
    opened = dropped = 0
    t0 = time.perf_counter()
    while pos[0] < steps:  # growing the NAT entry pool when it runs short, as run() does
        if model.st[k.S_NAT_NFREE] < 2:
            model._make_room(k.NEED_NAT)
        more_opened, more_dropped = _churn(
            model.state, fx.new_src, fx.new_sport, fx.hot_dst,
            fx.next_filler_dst, fx.next_filler_sport, fx.filler_pod, fx.egress, fifo, oldest,
            pos,
        )  # fmt: skip
        opened += more_opened
        dropped += more_dropped
    elapsed = time.perf_counter() - t0
    evictions = int(model.cnt[k.K_EVICT_IN] + model.cnt[k.K_EVICT_OUT] - evictions_before)
    hot_in = sum(n for key, n in model.in_endpoint_counts().items() if key[3] == fx.hot_dst)
    tries = model.tries
    mean_tries = float((tries * np.arange(len(tries))).sum() / max(1, tries.sum()))
    return steps / elapsed, {
        "opened": opened,
        "dropped": dropped,
        "evictions_per_open": evictions / max(1, opened),
        "hot_occupancy": hot_in / (config.port_max - config.port_min),
        "map_entries": int(model.st[k.S_COUNT]),
        "mean_retries": mean_tries,
        # Arrays held (with doubling headroom) per connection with a CT entry.
        "bytes_per_tracked_conn": model.memory_bytes() / model.tracked_connections,
        # The same when the arrays are full: a record, an IN row, and a slot in each index.
        "bytes_per_conn_full_arrays": model.bytes_per_connection_full(),
        "tracked": model.tracked_connections,
    }


def pressure_reference(config: ModelConfig, steps: int, oldest: bool) -> float:
    dp = ModelDatapath(config, random.Random(7), engine="reference")
    fx = Pressure(dp, config, steps)
    dp.run(fx.prefill, 1.0)
    ref = dp._engine
    assert isinstance(ref, ReferenceModel)
    fifo = [key for key in ref.conns if key[2] == fx.hot_dst]
    head = 0
    src, sport = fx.new_src.tolist(), fx.new_sport.tolist()
    f_dst, f_sport = fx.next_filler_dst.tolist(), fx.next_filler_sport.tolist()
    opened = 0
    t0 = time.perf_counter()
    for i in range(steps):
        key = (src[i], sport[i], fx.hot_dst, 443, 6)
        _port, drop, _broken, _retries = ref._forward(key, fx.egress, 0)
        if drop:
            continue
        opened += 1
        if oldest:
            fifo.append(key)
            key = fifo[head]
            head += 1
        ref.ct_delete(key)
        ref._forward((fx.filler_pod, f_sport[i], f_dst[i], 443, 6), fx.egress, 0)
    return steps / (time.perf_counter() - t0)


def workload_slices(dp: ModelDatapath, total: int, rate: float, seed: int, stress: bool):
    """Scenario B: ``total`` connections at ``rate``/s, yielded as 30 s slices.

    Typical: 200 remotes, FIN 90% / RST 10%, the NAT map never fills. Stress: 30% of the
    connections go to one remote and 5% are left idle (CT times out after 8000 s), so the
    map overflows, every insert evicts and the hot tuples run nearly full.
    """
    gen = np.random.default_rng(seed)
    pods = _ids(dp, "198.51.100.1", 2000)
    remotes = _ids(dp, "203.0.113.1", 200)
    egress = _ids(dp, "192.0.2.10", 4)
    produced = 0
    t = 0.0
    while produced < total:
        n = min(total - produced, int(rate * 30))
        start = np.sort(gen.uniform(t, t + 30.0, n))
        hot = gen.random(n) < (0.3 if stress else 0.0)
        long_lived = gen.random(n) < 0.02
        kinds = np.array([0] * 17 + [1, 1, 2] if stress else [0] * 9 + [1], np.uint8)
        end = gen.choice(kinds, n)
        batch = ConnectionBatch(
            start=start,
            duration=np.where(long_lived, 600.0, gen.exponential(2.0, n)),
            end=end,
            src=gen.choice(pods, n),
            sport=gen.integers(1024, 61000, n).astype(np.uint16),
            dst=np.where(hot, remotes[0], gen.choice(remotes, n)).astype(np.uint32),
            dport=np.full(n, 443, np.uint16),
            proto=np.where(gen.random(n) < 0.9, 6, 17).astype(np.uint8),
            egress=gen.choice(egress, n),
            keepalive=np.where(long_lived, 30.0, 0.0).astype(np.float32),
        )
        produced += n
        yield batch, t + 30.0
        t += 30.0


def simulate(engine: str, total: int, rate: float, stress: bool) -> tuple[float, ModelDatapath]:
    dp = ModelDatapath(ModelConfig(), random.Random(11), engine=engine)  # type: ignore[arg-type]
    busy = 0.0
    done = 0
    for batch, until in workload_slices(dp, total, rate, 5, stress):
        t0 = time.perf_counter()
        dp.run(batch, until)
        busy += time.perf_counter() - t0
        done += len(batch)
    return done / busy, dp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    steps, ref_steps = (50_000, 5_000) if args.quick else (200_000, 20_000)
    total, ref_total = (1_000_000, 30_000) if args.quick else (10_000_000, 120_000)

    t0 = time.perf_counter()
    tiny = ModelDatapath(ModelConfig(), random.Random(1))
    tiny.run(ConnectionBatch.empty(), 1.0)
    _churn_ready = time.perf_counter() - t0
    print(f"kernel load (compile on first run, then from cache): {_churn_ready:.1f} s")

    config = ModelConfig()
    for oldest, title in (
        (False, "A1. one tuple 95% full (uniform), NAT map at capacity, retire the newest"),
        (True, "A2. the same, retire the oldest (occupancy clusters along the walk)"),
    ):
        rate, info = pressure_compiled(config, steps, oldest)
        base = pressure_reference(config, ref_steps, oldest)
        print(title)
        print(f"   compiled:  {rate:12,.0f} hot connection opens/s  ({steps:,} steps)")
        print(f"   reference: {base:12,.0f} hot connection opens/s  ({ref_steps:,} steps)")
        print(f"   ratio:     {rate / base:12.1f}x")
        for key, value in info.items():
            text = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
            print(f"   {key}: {text}")

    for stress, sim_rate in ((False, 10_000.0), (True, 20_000.0)):
        fast, dp = simulate("compiled", total, sim_rate, stress)
        fast_prefix, _ = simulate("compiled", ref_total, sim_rate, stress)
        slow, _ = simulate("reference", ref_total, sim_rate, stress)
        counters = dp.counters
        model = dp._engine
        assert isinstance(model, CompiledModel)
        name = "B2. stress" if stress else "B1. typical"
        print(f"{name} workload through run(), {sim_rate:,.0f} connections per virtual second")
        print(f"   compiled:  {fast:12,.0f} simulated connections/s ({total:,} connections)")
        print(f"   compiled:  {fast_prefix:12,.0f} simulated connections/s (first {ref_total:,})")
        print(f"   reference: {slow:12,.0f} simulated connections/s (first {ref_total:,})")
        print(f"   ratio on the same prefix: {fast_prefix / slow:.1f}x")
        tracked = max(1, model.tracked_connections)
        evictions = counters.evictions_in + counters.evictions_out
        print(
            f"   drops={counters.drops} evictions={evictions:,}"
            f" broken={counters.broken:,} signals={counters.signals:,}"
            f" gc_runs={counters.gc_runs} tracked={tracked:,}"
            f" bytes/tracked={model.memory_bytes() / tracked:.0f}"
        )


if __name__ == "__main__":
    main()
