"""Benchmark the model datapath: the compiled kernel against the reference, side by side.

A. Allocation under pressure: one {egress IP, remote IP, remote port} tuple 95% full and
   the NAT map (default 524288 entries) at capacity, so every new connection's inserts
   evict. Each step, at ``--rate`` steps per second of virtual time, searches a port for
   a new connection to the hot tuple (a random draw, then the nat.h walk over a 95%-full
   range). When the search succeeds, the step retires a hot connection (its CT entry and
   NAT mapping deleted, as the GC does for an expired one: A1 the one just opened, A2 the
   oldest) to keep the tuple at 95%, and opens a connection to a fresh filler tuple to
   bring the map back to capacity. GC runs as in the kernel's own run(): the periodic
   pass when due, and the pass a nat_fill_up signal wakes (muted while a pass runs).
   Reported separately: steps/s (one search each), successful hot opens/s, successful
   opens/s (hot + filler) and the fraction of failed searches, median and range.
B. Simulation throughput: a 10,000,000-connection workload run through ``run()`` in 30 s
   slices, as the simulator drives it (closes, keepalives, CT expiry and GC inside).

Memory per connection is measured by bench/bench_memory.py.

Usage: .venv/bin/python bench/bench_model.py [--repeat 3] [--rate 10000] [--quick]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import time

import numpy as np
from numba import njit

from benchutil import format_load, load_average, spread
from egressgw.config import NodePortRange
from egressgw.datapath.model import ConnectionBatch, ModelConfig, ModelDatapath, kernel
from egressgw.datapath.model import kernel_layout as k
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
# would keep running the kernel functions it was compiled against after a kernel source changes.
@njit(cache=False, _nrt=False)
def _churn(S, src, sport, hot_dst, f_dst, f_sport, f_src, egress, fifo, oldest, pos,  # noqa: PLR0917
           now0, dt, out):
    """Scenario A's loop in the kernel from step pos[0], step i at virtual time now0 + i*dt.

    As the kernel's own run() does between operations: a periodic CT GC pass when one is
    due, and after each packet ``after_operation``, which runs the pass a nat_fill_up
    signal woke (gc.go, muted while a pass runs). Adds to ``out``: [hot opens, failed
    searches, filler opens]. Stops early (pos[0] < steps) when the NAT entry pool needs
    to grow.
    """
    st, fs = S.st, S.fs
    head = pos[1]
    tail = pos[2]
    while tail < fifo.shape[0] and fifo[tail] >= 0:
        tail += 1
    for i in range(pos[0], src.shape[0]):
        if st[k.S_NAT_NFREE] < 2:
            pos[0], pos[1], pos[2] = i, head, tail
            return
        now = now0 + i * dt
        fs[k.F_NOW] = now
        if fs[k.F_NEXT_GC] <= now:
            kernel.gc(S, 3, False)
            kernel.after_operation(S)
        o, _p, drop, _b, _r = kernel.forward(S, src[i], sport[i], hot_dst, 443, 6, egress, 0)
        kernel.after_operation(S)
        if drop:
            out[1] += 1
            continue
        out[0] += 1
        if oldest:
            fifo[tail] = o
            tail += 1
            o = fifo[head]
            head += 1
        kernel.ct_delete(S, o)
        _o, _p, drop, _b, _r = kernel.forward(S, f_src, f_sport[i], f_dst[i], 443, 6, egress, 0)
        kernel.after_operation(S)
        if not drop:
            out[2] += 1
    pos[0] = src.shape[0]


def _summary(steps: int, elapsed: float, cpu: float, opened: int, failed: int,  # noqa: PLR0917
             filler: int) -> dict[str, float]:
    """Steps and successful opens per second (wall, and per CPU second of this process),
    kept apart: a step whose hot search fails opens nothing (and retires nothing)."""
    return {
        "steps_per_s": steps / elapsed,
        "steps_per_cpu_s": steps / cpu,
        "hot_opens_per_s": opened / elapsed,
        "hot_opens_per_cpu_s": opened / cpu,
        "all_opens_per_s": (opened + filler) / elapsed,
        "all_opens_per_cpu_s": (opened + filler) / cpu,
        "failed_fraction": failed / steps,
    }


def pressure_compiled(
    config: ModelConfig, steps: int, oldest: bool, rate: float
) -> dict[str, float]:
    dp = ModelDatapath(config, random.Random(7))
    fx = Pressure(dp, config, steps)
    dp.run(fx.prefill, 1.0)
    model = dp.engine
    assert isinstance(model, CompiledModel)
    conns = len(fx.prefill) + 2 * steps + 16
    model._grow_conns(1 << (conns - 1).bit_length())
    fifo = np.full(fx.hot_count + steps, -1, np.int64)
    hot = np.flatnonzero(
        (model.cr[:, k.R_DST] == fx.hot_dst) & (model.cr[:, k.R_MISC] & k.CF_CT != 0)
    )
    fifo[: len(hot)] = hot
    before = dp.counters
    empty = np.zeros(0, np.uint32)
    out = np.zeros(3, np.int64)
    _churn(
        model.state, empty, empty.astype(np.uint16), fx.hot_dst, empty,
        empty.astype(np.uint16), fx.filler_pod, fx.egress, fifo, oldest, np.zeros(3, np.int64),
        1.0, 1.0 / rate, out,
    )  # compile
    pos = np.zeros(3, np.int64)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    while pos[0] < steps:  # growing the NAT entry pool when it runs short, as run() does
        if model.st[k.S_NAT_NFREE] < 2:
            model._make_room(k.NEED_NAT)
        _churn(
            model.state, fx.new_src, fx.new_sport, fx.hot_dst,
            fx.next_filler_dst, fx.next_filler_sport, fx.filler_pod, fx.egress, fifo, oldest,
            pos, 1.0, 1.0 / rate, out,
        )  # fmt: skip
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    after = dp.counters
    opened, failed, filler = (int(x) for x in out)
    evictions = (after.evictions_in + after.evictions_out
                 - before.evictions_in - before.evictions_out)
    hot_in = sum(n for key, n in model.in_endpoint_counts().items() if key[3] == fx.hot_dst)
    tries = after.tries - before.tries
    mean_tries = float((tries * np.arange(len(tries))).sum() / max(1, tries.sum()))
    return {
        **_summary(steps, elapsed, cpu, opened, failed, filler),
        "hot_opened": opened,
        "failed_searches": failed,
        "signals": after.signals - before.signals,
        "gc_passes": after.gc_runs - before.gc_runs,
        "evictions_per_open": evictions / max(1, opened + filler),
        "hot_occupancy": hot_in / (config.port_max - config.port_min),
        "map_entries": int(model.st[k.S_COUNT]),
        "mean_retries": mean_tries,
    }


def pressure_reference(
    config: ModelConfig, steps: int, oldest: bool, rate: float
) -> dict[str, float]:
    """Scenario A in the reference engine, step for step as ``_churn`` (GC included)."""
    dp = ModelDatapath(config, random.Random(7), engine="reference")
    fx = Pressure(dp, config, steps)
    dp.run(fx.prefill, 1.0)
    ref = dp.engine
    assert isinstance(ref, ReferenceModel)
    fifo = [key for key in ref.conns if key[2] == fx.hot_dst]
    head = 0
    src, sport = fx.new_src.tolist(), fx.new_sport.tolist()
    f_dst, f_sport = fx.next_filler_dst.tolist(), fx.next_filler_sport.tolist()
    opened = failed = filler = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(steps):
        ref.now = 1.0 + i / rate
        if ref.next_gc <= ref.now:
            ref.gc()
            ref._after_operation()
        key = (src[i], sport[i], fx.hot_dst, 443, 6)
        _port, drop, _broken, _retries = ref._forward(key, fx.egress, 0)
        ref._after_operation()
        if drop:
            failed += 1
            continue
        opened += 1
        if oldest:
            fifo.append(key)
            key = fifo[head]
            head += 1
        ref.ct_delete(key)
        _port, drop, _broken, _retries = ref._forward(
            (fx.filler_pod, f_sport[i], f_dst[i], 443, 6), fx.egress, 0
        )
        ref._after_operation()
        filler += not drop
    return _summary(steps, time.perf_counter() - t0, time.process_time() - cpu0, opened,
                    failed, filler)


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


def simulate(
    engine: str, total: int, rate: float, stress: bool
) -> tuple[float, float, ModelDatapath]:
    """Connections per second in run(): wall, per CPU second, and the datapath."""
    dp = ModelDatapath(ModelConfig(), random.Random(11), engine=engine)  # type: ignore[arg-type]
    busy = busy_cpu = 0.0
    done = 0
    for batch, until in workload_slices(dp, total, rate, 5, stress):
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        dp.run(batch, until)
        busy += time.perf_counter() - t0
        busy_cpu += time.process_time() - cpu0
        done += len(batch)
    return done / busy, done / busy_cpu, dp


def _print_pressure(title: str, runs: dict[str, list[dict[str, float]]], steps: int,
                    ref_steps: int) -> None:
    print(title)
    for engine, n in (("compiled", steps), ("reference", ref_steps)):
        rows = runs[engine]
        print(f"   {engine:9}  {n:,} steps; wall, then per CPU second of the process")
        for key, what in (("steps", "steps/s (one hot search each):     "),
                          ("hot_opens", "successful hot opens/s:            "),
                          ("all_opens", "successful opens/s (hot + filler): ")):
            print(f"      {what} {spread([r[f'{key}_per_s'] for r in rows])}")
            print(f"      {what} {spread([r[f'{key}_per_cpu_s'] for r in rows])} per CPU s")
        print(f"      failed hot searches:                  "
              f"{spread([r['failed_fraction'] for r in rows], '.2%')}")
    last = runs["compiled"][-1]
    for key in ("signals", "gc_passes", "evictions_per_open", "hot_occupancy", "map_entries",
                "mean_retries"):
        value = last[key]
        text = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
        print(f"   compiled, last run: {key}: {text}")
    ratio = (statistics.median(r["steps_per_cpu_s"] for r in runs["compiled"])
             / statistics.median(r["steps_per_cpu_s"] for r in runs["reference"]))
    print(f"   ratio compiled / reference, steps/s (medians): {ratio:.1f}x (per CPU second)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small NAT map and port range, few steps, one round (a smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, engines alternating")
    parser.add_argument("--rate", type=float, default=10_000.0,
                        help="scenario A's steps per second of virtual time (paces the GC)")
    args = parser.parse_args()
    if args.quick:  # a 4,535-port NAT range, so the fillers outnumber the hot tuple
        config = ModelConfig(node_port_range=NodePortRange(30000, 61000),
                             bpf_nat_global_max=65536)
        steps, ref_steps, total, ref_total, repeat = 10_000, 1_000, 50_000, 5_000, 1
    else:
        config = ModelConfig()
        steps, ref_steps, total, ref_total = 200_000, 20_000, 10_000_000, 120_000
        repeat = args.repeat
    if steps / args.rate >= config.ct_timeout_syn:
        # Hot connections opened in the loop would expire and be collected while the FIFO
        # of scenario A2 still holds their records.
        sys.exit(f"--rate {args.rate:g}: {steps:,} steps must take less than "
                 f"{config.ct_timeout_syn:g} s of virtual time")
    load_before = load_average()

    t0 = time.perf_counter()
    tiny = ModelDatapath(ModelConfig(), random.Random(1))
    tiny.run(ConnectionBatch.empty(), 1.0)
    print(f"kernel load (compile on first run, then from cache): {time.perf_counter() - t0:.1f} s")
    print(f"scenario A: NAT map {config.bpf_nat_global_max:,} entries, {args.rate:,.0f} steps "
          "per virtual second; GC passes as the kernel's run() makes them (periodic, and "
          "woken by nat_fill_up)")

    for oldest, title in (
        (False, "A1. one tuple 95% full (uniform), NAT map at capacity, retire the newest"),
        (True, "A2. the same, retire the oldest (occupancy clusters along the walk)"),
    ):
        runs: dict[str, list[dict[str, float]]] = {"compiled": [], "reference": []}
        for round_ in range(repeat):
            engines = ["compiled", "reference"] if round_ % 2 == 0 else ["reference", "compiled"]
            for engine in engines:
                if engine == "compiled":
                    runs[engine].append(pressure_compiled(config, steps, oldest, args.rate))
                else:
                    runs[engine].append(pressure_reference(config, ref_steps, oldest, args.rate))
        _print_pressure(title, runs, steps, ref_steps)

    for stress, sim_rate in ((False, 10_000.0), (True, 20_000.0)):
        fast: list[float] = []
        fast_cpu: list[float] = []
        fast_prefix: list[float] = []
        slow: list[float] = []
        for _ in range(repeat):
            rate, rate_cpu, dp = simulate("compiled", total, sim_rate, stress)
            fast.append(rate)
            fast_cpu.append(rate_cpu)
            fast_prefix.append(simulate("compiled", ref_total, sim_rate, stress)[1])
            slow.append(simulate("reference", ref_total, sim_rate, stress)[1])
        counters = dp.counters
        model = dp.engine
        assert isinstance(model, CompiledModel)
        name = "B2. stress" if stress else "B1. typical"
        print(f"{name} workload through run(), {sim_rate:,.0f} connections per virtual second "
              "(time in run() only)")
        print(f"   compiled:  {spread(fast, unit='/s')} wall ({total:,} connections)")
        print(f"   compiled:  {spread(fast_cpu, unit='/s')} per CPU s ({total:,} connections)")
        print(f"   compiled:  {spread(fast_prefix, unit='/s')} per CPU s (first {ref_total:,})")
        print(f"   reference: {spread(slow, unit='/s')} per CPU s (first {ref_total:,})")
        print(f"   ratio on the same prefix (medians, per CPU second): "
              f"{statistics.median(fast_prefix) / statistics.median(slow):.1f}x")
        evictions = counters.evictions_in + counters.evictions_out
        print(
            f"   last run: drops={sum(counters.drops.values()):,} evictions={evictions:,}"
            f" broken={counters.broken:,} signals={counters.signals:,}"
            f" gc_runs={counters.gc_runs} tracked={model.tracked_connections:,}"
        )
    print("memory per connection: bench/bench_memory.py (measured, not summed from row sizes)")
    print(format_load(load_before, load_average()))


if __name__ == "__main__":
    main()
