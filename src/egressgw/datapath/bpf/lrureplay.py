"""Replay the model's NAT map operations on a real BPF LRU hash map and compare.

The reference engine's NAT tables are wrapped so every map operation nat.h and the agent
perform (BPF lookups, BPF_NOEXIST creates, deletes) is recorded with the CPU it ran on and
the model's answer. :func:`replay` performs the same operations on a real
``BPF_MAP_TYPE_LRU_HASH`` (bpf(2); BPF lookups through an XDP program run with
BPF_PROG_TEST_RUN on the same CPU) and counts the answers that differ and the keys that
survive in each. Needs root. ``python -m egressgw.datapath.bpf.lrureplay`` prints the
figures docs/model.md quotes.
"""

from __future__ import annotations

import os
import random
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from egressgw.datapath.bpf.progrun import XDP_PASS, xdp_lookup_program
from egressgw.datapath.bpf.syscall import (
    BPF_F_NO_COMMON_LRU,
    BPF_NOEXIST,
    MAP_TYPE_LRU_HASH,
    BpfMap,
    possible_cpus,
)
from egressgw.datapath.model import ConnectionBatch, EndKind, ModelConfig, ModelDatapath
from egressgw.datapath.model.reference import ReferenceModel

LOOKUP, CREATE, DELETE = "lookup", "create", "delete"


@dataclass(frozen=True, slots=True)
class Op:
    kind: str
    family: int
    key: Any
    cpu: int
    answer: bool  # found / created / deleted


class RecordingTable:
    """A NatTable that records each operation and the inner table's answer."""

    def __init__(self, inner: Any, family: int, log: list[Op]) -> None:
        self.inner = inner
        self.family = family
        self.log = log

    def lookup(self, key: Any, cpu: int) -> Any:
        value = self.inner.lookup(key, cpu)
        self.log.append(Op(LOOKUP, self.family, key, cpu, value is not None))
        return value

    def create(self, key: Any, value: Any, cpu: int) -> bool:
        ok: bool = self.inner.create(key, value, cpu)
        self.log.append(Op(CREATE, self.family, key, cpu, ok))
        return ok

    def delete(self, key: Any) -> Any:
        value = self.inner.delete(key)
        self.log.append(Op(DELETE, self.family, key, 0, value is not None))
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.inner

    def __len__(self) -> int:
        return len(self.inner)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.inner.items())


def record(dp: ModelDatapath) -> list[Op]:
    """Start recording the NAT map operations of ``dp`` (a reference-engine datapath)."""
    engine = dp.engine
    if not isinstance(engine, ReferenceModel):
        raise TypeError("recording needs the reference engine")
    log: list[Op] = []
    engine.nat = tuple(  # type: ignore[assignment]
        RecordingTable(table, family, log) for family, table in enumerate(engine.nat)
    )
    return log


@dataclass
class ReplayResult:
    operations: int = 0
    differing: int = 0  # answers of the real map that differ from the recorded ones
    first_difference: int = -1
    real_keys: dict[int, set[Any]] = field(default_factory=dict)  # per family


def replay(ops: list[Op], max_entries: int, *, per_cpu: bool = False) -> ReplayResult:
    """Perform ``ops`` on real LRU hash maps (one per family), pinned to each op's CPU."""
    ids: dict[Any, int] = {}
    names: dict[int, Any] = {}

    def key_bytes(key: Any) -> bytes:
        if key not in ids:
            ids[key] = len(ids)
            names[ids[key]] = key
        return struct.pack("<Q", ids[key])

    saved = os.sched_getaffinity(0)
    flags = BPF_F_NO_COMMON_LRU if per_cpu else 0
    maps = [BpfMap.create(f"replay_v{4 + 2 * family}", MAP_TYPE_LRU_HASH, 8, 8,
                          max_entries=max_entries, flags=flags) for family in range(2)]
    programs = [xdp_lookup_program(m) for m in maps]
    result = ReplayResult()
    try:
        cpu = -1
        for i, op in enumerate(ops):
            if op.kind != DELETE and op.cpu != cpu:
                os.sched_setaffinity(0, {op.cpu})
                cpu = op.cpu
            key = key_bytes(op.key)
            if op.kind == LOOKUP:
                answer = programs[op.family].run(key + bytes(56))[0] == XDP_PASS
            elif op.kind == CREATE:
                answer = maps[op.family].update_errno(key, key, BPF_NOEXIST) == 0
            else:
                answer = maps[op.family].delete(key)
            if answer != op.answer:
                result.differing += 1
                if result.first_difference < 0:
                    result.first_difference = i
        result.operations = len(ops)
        for family, bpf_map in enumerate(maps):
            result.real_keys[family] = {
                names[struct.unpack("<Q", k)[0]] for k in bpf_map.all_keys()
            }
    finally:
        for program in programs:
            program.close()
        for bpf_map in maps:
            bpf_map.close()
        os.sched_setaffinity(0, saved)
    return result


def workload(dp: ModelDatapath, seed: int, rate: float, duration: float) -> ConnectionBatch:
    """Clients of a few remote endpoints: exponential lifetimes (mean 120 s), 60% with a
    keepalive every 15 s, FIN at the end; client ports 32768-60999 (Linux's range)."""
    gen = np.random.default_rng(seed)
    n = int(rate * duration)
    pods = [dp.intern(_ip(f"198.51.100.{i}")) for i in range(1, 101)]
    remotes = [dp.intern(_ip(f"203.0.113.{i}")) for i in range(1, 4)]
    egress = dp.intern(_ip("192.0.2.10"))
    return ConnectionBatch(
        start=np.sort(gen.uniform(0.0, duration, n)),
        duration=gen.exponential(120.0, n),
        end=np.full(n, EndKind.FIN, np.uint8),
        src=gen.choice(pods, n).astype(np.uint32),
        sport=gen.integers(32768, 61000, n).astype(np.uint16),
        dst=gen.choice(remotes, n).astype(np.uint32),
        dport=np.full(n, 443, np.uint16),
        proto=np.full(n, 6, np.uint8),
        egress=np.full(n, egress, np.uint32),
        keepalive=np.where(gen.random(n) < 0.6, 15.0, 0.0).astype(np.float32),
    )


def _ip(text: str) -> Any:
    import ipaddress  # noqa: PLC0415

    return ipaddress.ip_address(text)


def run_model(config: ModelConfig, seed: int, rate: float, duration: float,
              hook: Callable[[ModelDatapath], Any] | None = None) -> tuple[ModelDatapath, Any]:
    dp = ModelDatapath(config, random.Random(seed), engine="reference")
    hooked = hook(dp) if hook else None
    dp.run(workload(dp, seed, rate, duration), duration + 1.0)
    return dp, hooked


def main(argv: list[str] | None = None) -> None:
    """``[SEEDS [ENTRIES...]]``: per map size and seed, the model's counters with an exact
    and with the kernel LRU, and the replay of the kernel LRU's operations on a real map."""
    args = argv if argv is not None else sys.argv[1:]
    seeds = range(int(args[0]) if args else 3)
    cpus = possible_cpus()
    rate, duration = 8.0, 900.0
    print(f"workload: {rate:g} connections/s for {duration:g} s, mean lifetime 120 s, "
          f"60% keepalive 15 s; {cpus} possible CPUs, flows hashed to CPUs")
    print("entries seed | exact LRU: evicted broken reply-drops | kernel LRU: evicted broken "
          "reply-drops | replay: ops differing real-keys model-keys same")
    for entries in [int(a) for a in args[1:]] or [1024, 2048]:
        for seed in seeds:
            base = dict(bpf_nat_global_max=entries, conntrack_gc_interval=30.0,
                        possible_cpus=cpus)
            exact, _ = run_model(ModelConfig(**base), seed, rate, duration)  # type: ignore[arg-type]
            kernel, log = run_model(ModelConfig(**base, nat_lru="kernel"),  # type: ignore[arg-type]
                                    seed, rate, duration, record)
            result = replay(log, entries)
            engine = kernel.engine
            assert isinstance(engine, ReferenceModel)
            model_keys = {k for k, _ in engine.nat[0].items()}
            e, c = exact.counters, kernel.counters
            print(f"{entries:7} {seed:4} | {e.evictions_out + e.evictions_in:17} {e.broken:6} "
                  f"{e.reply_drops:11} | {c.evictions_out + c.evictions_in:18} {c.broken:6} "
                  f"{c.reply_drops:11} | {result.operations:11} {result.differing:9} "
                  f"{len(result.real_keys[0]):9} {len(model_keys):10} "
                  f"{result.real_keys[0] == model_keys}")


if __name__ == "__main__":
    main()
