"""Reports: output paths checked before the run, simulate --report, what the plots mark,
and the notice that the model is being compiled."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from egressgw.cli import main
from egressgw.config import NodePortRange
from egressgw.datapath.model import kernel
from egressgw.datapath.model.warmup import COMPILE_NOTICE, model_needs_compiling
from egressgw.sim.plot import _tuple_colours
from egressgw.sim.report import first_refusal
from egressgw.sim.simulate import SimSettings, simulate
from egressgw.sim.workload import parse_workload

# NAT ports 65526..65535: 9 allocatable; 2 connections a second that never end.
WORKLOAD = (
    "egress_ips: [10.1.0.0]\n"
    "destinations: [{address: '10.2.0.0:8080'}]\n"
    "clients: [{count: 5, cidr: 10.244.0.0/24, arrivals: {process: constant, rate: 2},"
    " duration: forever}]\n"
)
SMALL = ["--duration", "10s", "--node-port-range", "30000,65525",
         "--nat-map-stats-interval", "5s"]


@pytest.fixture
def workload_file(tmp_path: Path) -> Path:
    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD)
    return path


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--plot", "sat.txt", "--plot: sat.txt: expected a .png file"),
        ("--plot", "missing/sat.png", "directory missing does not exist"),
        ("--report", "missing/deeper", "directory missing does not exist"),
        ("--report", "w.yaml", "not a directory"),
    ],
)
def test_bad_output_paths_fail_at_once_in_one_line(
    *, workload_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    flag: str, value: str, message: str,
) -> None:
    monkeypatch.chdir(workload_file.parent)
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", str(workload_file), *SMALL, flag, value])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err
    assert "Traceback" not in captured.err
    # Nothing ran: no summary was printed, nothing was written.
    assert captured.out == ""
    assert sorted(p.name for p in workload_file.parent.iterdir()) == ["w.yaml"]


def test_an_unwritable_directory_fails_at_once(workload_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Root writes through permission bits; /proc/self takes no new files even from root.
    locked = Path("/proc/self")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit):
        main(["simulate", str(workload_file), *SMALL, "--plot", str(locked / "s.png")])
    assert "not writable" in capsys.readouterr().err


def test_report_dir_gets_the_markdown_and_the_plot(workload_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "incident" / "sim"  # created, one level deep
    (tmp_path / "incident").mkdir()
    main(["simulate", str(workload_file), *SMALL, "--report", str(out)])
    assert f"Report: {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "![saturation over time](saturation.png)" in report
    # 20 attempts, 9 ports: 11 refused, in the counters and the per-pass table.
    assert "| first packet dropped | 11 (55.00%) |" in report
    assert "## Per nat-stats pass" in report
    # 9 ports taken in the first 5 s pass (2 a second from t=0.25 s), the 10th connection
    # at 4.75 s is refused: the interval ending at 5s, the tuple full.
    assert ("First refused connections: 1 in the nat-stats interval ending at 5s, when the "
            "busiest tuple held 100.0% of its ports.") in report
    assert (out / "saturation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(egress: list[str], rate: float) -> object:
    doc = {
        "egress_ips": egress,
        "destinations": [{"address": "10.2.0.0:8080"}, {"address": "10.2.0.9:443"}],
        "clients": [{"count": 20, "cidr": "10.244.0.0/24",
                     "arrivals": {"process": "constant", "rate": rate},
                     "duration": "forever"}],
    }
    settings = SimSettings(duration=10.0, stats_interval=2.0,
                           node_port_range=NodePortRange(30000, 65525))
    return simulate(parse_workload(doc, source="w"), settings, progress=False)


def test_first_refusal_is_the_first_pass_with_refused_connections() -> None:
    result = _run(["10.1.0.0"], 2.0)
    # 20 connections over two tuples of 9 ports each, none ending: some are refused, and
    # the mark is the first pass whose counters grew, with the busiest tuple full then.
    time, saturation, refused = first_refusal(result)  # type: ignore[misc]
    assert result.totals.refused >= 2
    first = [r.totals.refused > 0 for r in result.intervals].index(True)
    before = result.intervals[first - 1].totals.refused if first else 0
    assert refused == result.intervals[first].totals.refused - before
    assert time == result.intervals[[r.totals.refused > 0 for r in
                                     result.intervals].index(True)].time
    assert saturation == pytest.approx(1.0)


def test_a_tuple_keeps_its_colour_in_every_panel() -> None:
    one, two = _run(["10.1.0.0"], 2.0), _run(["10.1.0.0", "10.1.0.1"], 2.0)
    colours = _tuple_colours([one, two], top=5)
    shared = set(one.series) & set(two.series)
    assert shared  # 10.1.0.0's tuples appear in both runs
    assert len(set(colours.values())) == len(colours)  # distinct per tuple
    assert "C3" not in colours.values()  # red is the limit's and the refusals'


def test_compile_notice_when_numba_has_no_cache(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy of kernel.py with no __pycache__ next to it: compiling is due.
    copy = tmp_path / "kernel.py"
    shutil.copy(kernel.__file__, copy)
    monkeypatch.setattr(kernel, "__file__", str(copy))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert model_needs_compiling()
    # An index for its entry point, newer than the source: cached.
    line = kernel.run.py_func.__code__.co_firstlineno
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    index = cache / f"kernel.run-{line}.py{sys.version_info.major}{sys.version_info.minor}.nbi"
    index.write_bytes(b"")
    os.utime(copy, (1_000_000, 1_000_000))
    assert not model_needs_compiling()
    # The source changed after the cache was written: compiling is due again.
    os.utime(copy, None)
    os.utime(index, (1_000_000, 1_000_000))
    assert model_needs_compiling()
    assert "about 20 s" in COMPILE_NOTICE


def test_demo_checks_its_output_directory_before_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "missing" / "demo"), "--quiet"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # neither act ran
    assert captured.err.count("\n") == 1 and "does not exist" in captured.err
