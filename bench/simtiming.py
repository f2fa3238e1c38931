"""Where ``simulate``'s time goes, timed from outside around its public calls.

``Breakdown`` wraps, for the duration of a ``with`` block, the calls ``simulate`` makes
through module and class attributes, and adds up the wall time spent in each:

- ``MergedFlows.window``: generating the connections of a window (numpy);
- ``simulate._batch``: a window's columns turned into the datapath's address ids;
- ``ModelDatapath.run``: the datapath, of which ``kernel.run`` (the compiled event loop:
  starts, pending events, CT GC passes) and ``CompiledModel._make_room`` (array growth);
  the rest of it is the engine's Python (the random state copied in and out, arguments);
- ``simulate._stats_pass``: a nat-stats pass, of which ``kernel.count_endpoints`` (the
  compiled count) and ``compute_nat_stats`` (top K); the rest is Python (the counts as
  dicts, the series and threshold crossings);
- everything else of the run is the driver (windows, the loop, the progress bookkeeping).

Nothing in the model is changed: each wrapper calls the original and times it. A name
that is gone (the model was restructured) is reported, not guessed at.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Any

from egressgw.datapath.model import compiled, datapath, kernel
from egressgw.sim import generate
from egressgw.sim import simulate as simulate_module


@contextmanager
def timed_attribute(
    owner: Any, name: str, add: Callable[[float, float], None]
) -> Iterator[bool]:
    """Replace ``owner.name`` by a wrapper that passes each call's wall and CPU time (of
    this process) to ``add``; yields False (and changes nothing) when ``owner`` has no
    such attribute."""
    original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if original is None:
        yield False
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cpu = time.process_time()
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            add(time.perf_counter() - start, time.process_time() - cpu)

    setattr(owner, name, wrapper)
    try:
        yield True
    finally:
        setattr(owner, name, original)


# (label, owner, attribute): the calls timed, in report order.
TIMED = (
    ("generation", generate.MergedFlows, "window"),
    ("batch columns", simulate_module, "_batch"),
    ("datapath run", datapath.ModelDatapath, "run"),
    ("kernel run", kernel, "run"),
    ("array growth", compiled.CompiledModel, "_make_room"),
    ("nat-stats pass", simulate_module, "_stats_pass"),
    ("kernel count", kernel, "count_endpoints"),
    ("top K", simulate_module, "compute_nat_stats"),
)


class Breakdown:
    """Wall and CPU seconds and calls per timed attribute over one ``with`` block, and
    the block's own wall and CPU time."""

    def __init__(self) -> None:
        self.seconds = {label: 0.0 for label, _owner, _name in TIMED}
        self.cpu = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.seconds, 0)
        self.missing: list[str] = []
        self.total = 0.0
        self.total_cpu = 0.0
        self._stack = ExitStack()
        self._start = 0.0
        self._start_cpu = 0.0

    def _adder(self, label: str) -> Callable[[float, float], None]:
        def add(seconds: float, cpu: float) -> None:
            self.seconds[label] += seconds
            self.cpu[label] += cpu
            self.calls[label] += 1
        return add

    def __enter__(self) -> Breakdown:
        for label, owner, name in TIMED:
            if not self._stack.enter_context(timed_attribute(owner, name, self._adder(label))):
                self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
        self._start_cpu = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.total = time.perf_counter() - self._start
        self.total_cpu = time.process_time() - self._start_cpu
        self._stack.close()

    @staticmethod
    def _split(s: dict[str, float], total: float) -> list[float]:
        engine = s["datapath run"] - s["kernel run"] - s["array growth"]
        stats_python = s["nat-stats pass"] - s["kernel count"] - s["top K"]
        accounted = s["generation"] + s["batch columns"] + s["datapath run"] + s["nat-stats pass"]
        return [s["generation"], s["batch columns"], s["kernel run"], engine, s["array growth"],
                s["kernel count"], s["top K"], stats_python, total - accounted]

    def parts(self) -> list[tuple[str, float, float, int]]:
        """(what, wall seconds, CPU seconds, calls), disjoint and adding up to the totals."""
        c = self.calls
        names = [
            ("generation (MergedFlows.window)", c["generation"]),
            ("batch columns (simulate._batch)", c["batch columns"]),
            ("kernel run() calls alone", c["kernel run"]),
            ("engine Python around them", c["datapath run"]),
            ("array growth (_make_room)", c["array growth"]),
            ("nat-stats: kernel count_endpoints", c["kernel count"]),
            ("nat-stats: compute_nat_stats", c["top K"]),
            ("nat-stats: Python rest", c["nat-stats pass"]),
            ("driver rest (simulate's loop)", 1),
        ]
        walls = self._split(self.seconds, self.total)
        cpus = self._split(self.cpu, self.total_cpu)
        return [(what, wall, cpu, calls)
                for (what, calls), wall, cpu in zip(names, walls, cpus, strict=True)]

    def report(self, connections: int) -> list[str]:
        lines = [f"{'':36s} {'wall':>9s} {'share':>6s} {'CPU':>9s} {'share':>6s}"]
        lines += [
            f"{what:36s} {wall:7.3f} s {wall / self.total:6.1%} {cpu:7.3f} s "
            f"{cpu / max(self.total_cpu, 1e-9):6.1%}  ({calls:,} calls)"
            for what, wall, cpu, calls in self.parts()
        ]
        lines.append(f"{'total':36s} {self.total:7.3f} s {'':6s} {self.total_cpu:7.3f} s")
        for label, what in (("kernel run", "the kernel's run() alone"),
                            ("generation", "generation alone in this run")):
            wall, cpu = self.seconds[label], self.cpu[label]
            if wall > 0 and cpu > 0:
                lines.append(f"{what}: {connections / wall:,.0f} connections/s wall, "
                             f"{connections / cpu:,.0f} per CPU second")
        lines.append("(the kernel's rate is the bound on simulate if everything else took no "
                     "time)")
        if self.missing:
            lines.append(f"not timed (not found): {', '.join(self.missing)}")
        return lines


class RandomStateTimer:
    """Time spent in ``CompiledModel._load_rng`` and ``_store_rng``: the per-call API copies
    the Python random state into the compiled engine and back on every call."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._stack = ExitStack()

    def _add(self, seconds: float, _cpu: float) -> None:
        self.seconds += seconds

    def __enter__(self) -> RandomStateTimer:
        for name in ("_load_rng", "_store_rng"):
            self._stack.enter_context(timed_attribute(compiled.CompiledModel, name, self._add))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stack.close()
