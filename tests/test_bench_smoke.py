"""Every benchmark in bench/ runs in its quick mode and prints its ratio line.

A smoke run, not a measurement: each benchmark runs as a subprocess with small sizes,
must exit 0 and print the line its figures are read from (the structure is checked, never
a timing: speed is measured only in bench/). Benchmarks that need root, network
namespaces or BPF run in CI (root) and skip elsewhere, saying why.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from benchutil import egressgw_command  # noqa: E402
from egressgw.datapath.model import ConnectionBatch, ModelConfig, ModelDatapath  # noqa: E402
from egressgw.net import Endpoint, FiveTuple, Proto  # noqa: E402
from egressgw.sim.demo import demo_settings, demo_workload  # noqa: E402
from egressgw.sim.simulate import simulate  # noqa: E402
from simtiming import TIMED, Breakdown  # noqa: E402

# Modules in bench/ that are imported by the benchmarks, not run.
HELPERS = {"benchutil.py", "simtiming.py"}
NUMBER = r"[\d,]+(?:\.\d+)?"


@dataclass(frozen=True)
class Smoke:
    script: str
    args: tuple[str, ...]
    lines: tuple[str, ...]  # regexes, each must match a line of the output
    needs: tuple[str, ...] = ()  # "root", or tools that must be on PATH
    # Benchmarks sharing a global setting (nf_conntrack_max, which they raise and
    # restore) never run at the same time.
    shares: str | None = None


SMOKES = (
    Smoke("bench_model.py", ("--quick",), (
        rf"successful hot opens/s: +median {NUMBER}",
        rf"failed hot searches: +median {NUMBER}%",
        rf"compiled, last run: gc_passes: {NUMBER}",
        rf"ratio compiled / reference, steps/s \(medians\): {NUMBER}x",
        rf"B1\. typical .*\n.*compiled: +median {NUMBER}/s",
    )),
    Smoke("bench_sim.py", ("--quick",), (
        rf"simulate: +{NUMBER} connections, median {NUMBER}/s",
        rf"kernel run\(\) calls alone +{NUMBER} s +{NUMBER}%",
        rf"driver rest \(simulate's loop\) +-?{NUMBER} s",
        rf"ratio simulate / per-connection API \(medians\): {NUMBER}x",
    )),
    Smoke("bench_memory.py", ("--quick",), (
        rf"held +N= *20,000: .*\n +tracemalloc +{NUMBER} MB: per open connection median "
        rf"{NUMBER} B",
        r"churn +N= *20,000: .*\n +tracemalloc",
        rf"ratio churn / held, bytes per open connection \(tracemalloc\): N=20,000 {NUMBER}",
    )),
    Smoke("sim_cpu.py", ("--quick",), (
        rf"cpu {NUMBER}s wall {NUMBER}s connections \d+ cpu-rate {NUMBER}/s",
    )),
    Smoke("model_effects.py", ("--quick",), (
        r"gc_pass_seconds +seed +refused",
        r"CT entries at most \(connections attempted\): \d+ of --bpf-ct-global-tcp-max \d+",
    )),
    Smoke("bench_forecast_coverage.py", ("--quick",), (
        rf"coverage: \d+ of \d+ runs inside the 80% band \(binomial 95% range for 80%: "
        rf"\d+\.\.\d+\); ratio inside / expected {NUMBER}",
        r"load average \(1, 5, 15 min\): before",
    )),
    Smoke("bench_netfilter.py", ("--quick",), (
        rf"^netfilter +{NUMBER} connections, {NUMBER} refused; CPU median {NUMBER} s",
        rf"netfilter / cilium CPU time: {NUMBER}x",
    )),
    Smoke("bench_egress_scale.py", ("--quick",), (
        rf"total: time per CIDR at {NUMBER} / at {NUMBER} = {NUMBER} \(medians\)",
        rf"{NUMBER} CIDRs, total: median {NUMBER} s \(range {NUMBER}-{NUMBER} s, n=1\)",
    )),
    Smoke("bench_install.py", ("--quick",), (
        rf"size core/full: {NUMBER}; start-up core/full: {NUMBER}",
    )),
    Smoke("bench_natstats_dump.py", ("--quick",), (
        r"same counts: \d+ endpoints",
        rf"^ +cpu +median {NUMBER} s \(range {NUMBER}-{NUMBER} s, n=3\)",
        rf"minor page faults median {NUMBER}",
        rf"egressgw/awk: wall median {NUMBER} \(pairs {NUMBER}-{NUMBER}\), cpu median {NUMBER}",
        rf"start-up \(nat-stats on a 10-line dump\): cpu median {NUMBER} s",
    )),
    Smoke("bench_agent_http.py", ("--quick",), (
        rf"p99 loaded / idle: {NUMBER}x",
        rf"/healthz p99 with slow clients / idle p99: {NUMBER}x",
    )),
    Smoke("bench_agent_recount.py", ("--quick",), (
        rf"one pass in the bench process \(no agent running\): {NUMBER} s",
        rf"reconcile latency during a pass, all edits: before median {NUMBER} s, after "
        rf"median {NUMBER} s: {NUMBER}x",
    ), needs=("root", "ip", "conntrack", "nft"), shares="nf_conntrack_max"),
    Smoke("bench_conntrack.py", ("--quick",), (
        rf"^nat-stats pass +wall median {NUMBER} s \(range",
        rf"^ +cpu +median {NUMBER} s \(range",
        rf"ratio nat-stats pass / conntrack -L \(medians\): {NUMBER}",
    ), needs=("root", "ip", "conntrack"), shares="nf_conntrack_max"),
    Smoke("bench_bpf_natstats.py", ("--quick",), (
        r"nat-stats counts \d+ connections",
        rf"ratio nat-stats / bpftool: {NUMBER}",
    ), needs=("root", "bpftool")),
    Smoke("bench_bpf_snat.py", ("--quick",), (
        rf"ratio bpf / nftables: {NUMBER}",
    ), needs=("root", "ip", "nft", "conntrack", "clang", "bpftool")),
    Smoke("bench_agent_kill9.py", ("--quick",), (
        r"2 kill -9 rounds: \d+ old ruleset, \d+ new, 0 neither",
    ), needs=("root", "ip", "nft")),
)


# The line every benchmark prints around its run (benchutil.format_load; the recount
# bench words it without the colon).
LOAD_LINE = r"load average \(1, 5, 15 min\):? before [\d. ]+, after [\d. ]+"


def test_every_benchmark_has_a_smoke_run() -> None:
    scripts = {path.name for path in BENCH.glob("*.py")} - HELPERS
    assert scripts == {smoke.script for smoke in SMOKES}
    # Each one's quick mode is its own --quick, not a set of small arguments here.
    assert {smoke.script: smoke.args for smoke in SMOKES} == {
        smoke.script: ("--quick",) for smoke in SMOKES}


def _missing(needs: tuple[str, ...]) -> str | None:
    if "root" in needs and os.geteuid() != 0:
        return "needs root (network namespaces, BPF maps)"
    tools = [tool for tool in needs if tool != "root" and shutil.which(tool) is None]
    return f"needs {', '.join(tools)} on PATH" if tools else None


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


class SmokeRunner:
    """Runs the smoke runs as subprocesses, up to ``parallel`` at a time, all started from
    this (the main) thread: many of them wait (on pip, a network namespace, the agent), so
    the module takes about half the time it would one after the other. Output goes to
    files, so no pipe needs a reader thread; runs that share a global setting never
    overlap."""

    TIMEOUT = 240.0

    def __init__(self, smokes: list[Smoke], directory: Path, parallel: int = 3) -> None:
        self.pending = list(smokes)
        self.running: dict[str, tuple[subprocess.Popen[bytes], Smoke, float]] = {}
        self.finished: dict[str, Finished] = {}
        self.directory = directory
        self.parallel = parallel

    def _start_more(self) -> None:
        busy = {smoke.shares for _p, smoke, _t in self.running.values() if smoke.shares}
        for smoke in list(self.pending):
            if len(self.running) >= self.parallel:
                return
            if smoke.shares and smoke.shares in busy:
                continue
            self.pending.remove(smoke)
            busy.add(smoke.shares)
            with (self.directory / f"{smoke.script}.out").open("wb") as out, \
                    (self.directory / f"{smoke.script}.err").open("wb") as err:
                process = subprocess.Popen(
                    [sys.executable, str(BENCH / smoke.script), *smoke.args],
                    stdout=out, stderr=err, cwd=BENCH.parent,
                )
            self.running[smoke.script] = (process, smoke, time.monotonic())

    def _reap(self) -> None:
        for script, (process, _smoke, started) in list(self.running.items()):
            if process.poll() is None and time.monotonic() - started > self.TIMEOUT:
                process.kill()
                process.wait()
            if process.returncode is None:
                continue
            del self.running[script]
            self.finished[script] = Finished(
                process.returncode,
                (self.directory / f"{script}.out").read_text(errors="replace"),
                (self.directory / f"{script}.err").read_text(errors="replace"),
            )

    def result(self, script: str) -> Finished:
        while script not in self.finished:
            self._start_more()
            self._reap()
            if script not in self.finished:
                time.sleep(0.1)
        return self.finished[script]

    def stop(self) -> None:
        for process, _smoke, _started in self.running.values():
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmokeRunner]:
    # Compile the model kernel into numba's on-disk cache once (a fresh clone has none), so
    # the parallel runs load it instead of each compiling it at the same time.
    warm = ModelDatapath(ModelConfig(), random.Random(0))
    warm.run(ConnectionBatch.empty(), 1.0)
    warm.connect(FiveTuple(Proto.TCP, Endpoint(ip_address("192.0.2.1"), 1000),
                           Endpoint(ip_address("198.51.100.1"), 443)),
                 ip_address("203.0.113.1"))
    runner = SmokeRunner([smoke for smoke in SMOKES if _missing(smoke.needs) is None],
                         tmp_path_factory.mktemp("bench-smoke"))
    try:
        yield runner
    finally:
        runner.stop()


@pytest.mark.slow
@pytest.mark.parametrize("smoke", SMOKES, ids=lambda smoke: smoke.script)
def test_benchmark_quick_run(smoke: Smoke, smoke_runs: SmokeRunner) -> None:
    reason = _missing(smoke.needs)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must smoke-run {smoke.script}, but it {reason}")
        pytest.skip(f"{smoke.script} {reason}; CI runs it")
    done = smoke_runs.result(smoke.script)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{smoke.script} exited {done.returncode}:\n{output[-3000:]}"
    for pattern in (*smoke.lines, LOAD_LINE):
        assert re.search(pattern, done.stdout, re.MULTILINE), (
            f"{smoke.script}: no line matching {pattern!r} in:\n{done.stdout[-3000:]}"
        )


def test_egressgw_command_falls_back_to_the_package_main(tmp_path: Path) -> None:
    """Without the console script next to the interpreter the benches run
    ``python -m egressgw``, which must work (``-m egressgw.cli`` cannot: a package)."""
    command = egressgw_command(tmp_path)
    assert command == [sys.executable, "-m", "egressgw"]
    done = subprocess.run([*command, "--help"], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "nat-stats" in done.stdout
    broken = subprocess.run([sys.executable, "-m", "egressgw.cli", "--help"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0  # the old fallback, as a check that this test can fail


def test_simulate_breakdown_adds_up_and_leaves_the_model_as_it_was() -> None:
    """bench_sim's breakdown: its parts add up to the run, each timed call was seen, and
    the wrapped attributes are the originals again afterwards."""
    originals = [getattr(owner, name) for _label, owner, name in TIMED]
    settings = demo_settings(0.05)
    with Breakdown() as breakdown:
        result = simulate(demo_workload(0.05), settings, progress=False)
    assert [getattr(owner, name) for _label, owner, name in TIMED] == originals
    assert breakdown.missing == []
    passes = len(result.intervals)
    assert passes > 1
    assert breakdown.calls["nat-stats pass"] == passes
    assert breakdown.calls["kernel count"] == passes  # one gateway
    assert breakdown.calls["kernel run"] >= breakdown.calls["datapath run"] > 0
    parts = breakdown.parts()
    assert sum(wall for _what, wall, _cpu, _calls in parts) == pytest.approx(breakdown.total)
    assert all(wall >= 0 for _what, wall, _cpu, _calls in parts[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", [(), ("--conntrack",)], ids=["bpf-nat-list", "conntrack"])
def test_dump_bench_stages_run_and_add_up(kind: tuple[str, ...]) -> None:
    """``--stages`` (not part of --quick) still runs the scan's steps as the reader does:
    the conntrack stages check their count against count_conntrack and exit 1 if not."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_natstats_dump.py"), *kind, "--lines", "3000",
         "--repeat", "1", "--stages"],
        check=False, capture_output=True, text=True, timeout=240, cwd=BENCH.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stages = done.stdout.split("\nstages, one process, whole file (")[1]
    times = dict(re.findall(rf"^  (\S.*?) +median ({NUMBER}) s", stages, re.MULTILINE))
    assert "scan total" in times and len(times) >= 6
    parts = [float(v) for k, v in times.items() if k not in ("scan total",)
             and not k.startswith("imports")]
    assert sum(parts) == pytest.approx(float(times["scan total"]), abs=0.01)
