"""docs/capacity.md's worked example and the README tour's forecast and plan, run as
written: every line quoted after a ``$ egressgw ...`` command is a line of its output
(``...`` skips lines), and the figures the prose works out by hand are the ones the
commands print."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
CAPACITY = ROOT / "docs" / "capacity.md"
README = ROOT / "README.md"
SNAPSHOTS = "src/egressgw/examples/capacity/nat-stats-*.json"

pytestmark = pytest.mark.slow  # the plan simulates 46 minutes four times


def quoted_runs(text: str) -> list[tuple[str, list[str]]]:
    """Each ``$ egressgw ...`` command in the fenced blocks of ``text`` (continuations
    joined) with the lines quoted after it, up to the next command or the block's end."""
    runs: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ egressgw "):
                i += 1
                continue
            command = lines[i][2:]
            while command.endswith("\\"):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            quoted = []
            while i < len(lines) and not lines[i].startswith("$ "):
                quoted.append(lines[i])
                i += 1
            runs.append((command, quoted))
    return runs


@functools.cache
def run(command: str) -> str:
    """The command's output, run by the shell (globs expand) with this venv's egressgw."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "200"}
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{command}: exit {done.returncode}: {done.stderr}"
    return done.stdout


def check_quote(output: str, quoted: list[str], command: str) -> None:
    """The quoted lines, in runs separated by ``...``, appear in order in ``output``; a
    quote that does not start (end) with ``...`` starts (ends) where the output does."""
    lines = [line.rstrip() for line in output.splitlines()]
    while quoted and not quoted[-1].strip():
        quoted = quoted[:-1]
    segments: list[list[str]] = [[]]
    for line in quoted:
        if line.strip() == "...":
            segments.append([])
        else:
            segments[-1].append(line.rstrip())
    at = 0
    for index, segment in enumerate(segments):
        if not segment:
            continue
        anchored = index == 0
        found = next((i for i in range(at, len(lines) - len(segment) + 1)
                      if lines[i:i + len(segment)] == segment), None)
        assert found is not None, f"{command}: not in the output, in order:\n" + "\n".join(
            segment) + "\n--- output:\n" + output
        if anchored:
            assert found == 0, f"{command}: the output does not start with the quote"
        at = found + len(segment)
    if segments[-1]:
        assert at == len(lines), f"{command}: the output goes on after the quote"


def _runs_of(path: Path) -> list[tuple[str, list[str]]]:
    runs = quoted_runs(path.read_text())
    assert runs, f"{path.name}: no quoted commands"
    return runs


@pytest.mark.parametrize("path", [CAPACITY, README], ids=["capacity.md", "README.md"])
def test_quoted_forecast_and_plan_output_is_what_the_commands_print(path):
    runs = [(c, q) for c, q in _runs_of(path)
            if path is CAPACITY or c.startswith(("egressgw forecast", "egressgw plan"))]
    commands = [c for c, _ in runs]
    assert any("--hold" in c and c.startswith("egressgw forecast") for c in commands)
    assert any("--policy" in c and c.startswith("egressgw plan") for c in commands)
    for command, quoted in runs:
        check_quote(run(command), quoted, command)


def _counts() -> list[int]:
    counts = []
    for path in sorted(ROOT.glob(SNAPSHOTS)):
        doc = json.loads(path.read_text())
        (row,) = [r for r in doc["rows"] if r["remoteAddr"] == "10.2.0.0:8080"]
        counts.append(row["count"])
    return counts


def test_the_figures_worked_by_hand_are_the_printed_ones():
    text = " ".join(CAPACITY.read_text().split())  # prose with its line breaks undone
    counts = _counts()
    assert counts[0] == 13107 and counts[-1] == 22937
    # The slope from two points, and the least squares over five (3.5 days apart).
    assert f"({counts[-1]} - {counts[0]}) / 14 = {(counts[-1] - counts[0]) / 14:.1f}" in text
    days = [0, 3.5, 7, 10.5, 14]
    mean = sum(counts) / 5
    sxy = sum((d - 7) * (c - mean) for d, c in zip(days, counts, strict=True))
    assert f"mean count {sum(counts)} / 5 = {mean:.1f}" in text
    assert f"= {sxy:.0f}, so the slope is {sxy:.0f} / 122.5 = {sxy / 122.5:.1f} a day" in text
    assert f"18034.8 + 7 x 698.3 = {mean + 7 * sxy / 122.5:.1f}" in text
    table = run(f"egressgw forecast {SNAPSHOTS} --hold 10m")
    assert "+698.3" in table and "the trend is at 22922.8 now and grows 0.008082/s" in table
    # The limit and the share.
    assert "65535 - (32767 + 1) = 32767 ports" in text and "22937 / 32767 = 70.0%" in text
    # Λ by hand: over the half hour that matters p stays at the curve's value at 70.0%
    # (the why-line prints it and its band), so Λ(T) = 38.2 x p x T.
    (p, low, high) = [float(v) for v in re.findall(
        r"the curve refuses ([\d.e-]+) \[([\d.e-]+) \.\. ([\d.e-]+)\] at 22937 \(70\.0%\)",
        table)[0]]
    per_second = 38.2 * p
    assert f"Λ(T) ≈ 38.2 x {p:.2g} x T = {per_second:.3g} T" in text
    assert f"T = 0.693 / {per_second:.3g} = {0.693 / per_second:.0f} s" in text
    (when,) = re.findall(r"reach ln 2 at [\d.]+ \([\d.]+%\): in (\S+)\.", table)
    assert f"(the output: {when}," in text
    # The band's ends: Λ = -ln 0.9 at the curve's high side, -ln 0.1 at its low side.
    assert f"0.105 / (38.2 x {high:.2g}) = {0.105 / (38.2 * high):.0f} s" in text
    assert f"2.303 / (38.2 x {low:.2g}) = {2.303 / (38.2 * low):,.0f} s" in text
    # The hand figure is the printed one within 2% (p climbs a little on the way).
    doc = json.loads(run(f"egressgw forecast {SNAPSHOTS} --hold 10m -o json"))
    eta = doc["tuples"][0]["firstRefusal"]["seconds"]
    assert 0.693 / per_second == pytest.approx(eta, rel=0.02)
    assert 0.105 / (38.2 * high) == pytest.approx(doc["tuples"][0]["firstRefusal"]["earliest"],
                                                  rel=0.02)
    # The 0.1% mark's count and the days to it and to the limit.
    marks = doc["marks"]
    mark = marks["refusalRate"]["count"]
    assert f"({mark:.1f} connections;" in text
    assert f"({mark:.1f} - 22922.8) / 698.3 = {(mark - 22922.8) / 698.3:.1f} days" in text
    assert f"(32767 - 22922.8) / 698.3 = {(32767 - 22922.8) / 698.3:.1f} days" in text
    # The longer hold the prose quotes.
    longer = run(f"egressgw forecast {SNAPSHOTS} --hold 14m")
    assert "840s = 27.3 new connections/s" in longer and "27.3 new connections a second" in text
    (when,) = re.findall(r"reach ln 2 at [\d.]+ \([\d.]+%\): in (\S+)\.", longer)
    assert f"the first refusal in {when}." in text
