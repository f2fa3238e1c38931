"""forecast's first refusal does not hang on the refusal curve's sampling seed.

The capacity example (docs/capacity.md: the top tuple at 70% of Cilium's 32767 ports,
growing 698 a day, connections holding their port 10 minutes) sits where the steady
curve refuses about 1 in 100,000 new connections: a level that counting single tries
(50,000 per level) measured as 0 or 1 refusal, so the forecast moved from 0.1 h to 14.5 h
with the seed. With each state's refusal probability computed exactly over every walk,
the answers of independent curves must each lie inside every other's stated band.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egressgw.config import NodePortRange
from egressgw.sim.expected_refusals import curve_band, first_refusal
from egressgw.sim.refusal import PortSearch, SourcePorts, steady_curve

pytestmark = pytest.mark.slow  # three curves of 32767 ports

EXAMPLES = Path(__file__).parents[1] / "src" / "egressgw" / "examples" / "capacity"


def _top_tuple() -> tuple[list[float], list[float]]:
    """The agent's snapshots of the top tuple: (updatedAt, count) of each, 3.5 days apart."""
    times, counts = [], []
    for path in sorted(EXAMPLES.glob("nat-stats-*.json")):
        doc = json.loads(path.read_text())
        (row,) = [r for r in doc["rows"] if r["remoteAddr"] == "10.2.0.0:8080"]
        times.append(float(doc["updatedAt"]))
        counts.append(float(row["count"]))
    return times, counts


def test_answers_from_different_curve_seeds_lie_in_each_others_bands() -> None:
    times, counts = _top_tuple()
    assert counts[0] == 13107 and counts[-1] == 22937
    search = PortSearch.for_version("1.16", NodePortRange())
    sources = SourcePorts().with_clients(400)
    answers = []
    for seed in (0, 1, 2):
        # 50,000 new connections per level: what forecast computes.
        curve = steady_curve(search, sources, 32767, steps=50_000, seed=seed)
        first = first_refusal(times, counts, hold=600, probability=curve_band(curve))
        assert first.eta is not None and first.earliest is not None
        assert first.latest is not None
        answers.append(first)
    print("\n" + "; ".join(f"{a.eta / 3600:.2f} h [{(a.earliest or 0) / 3600:.2f} .. "
                           f"{(a.latest or 0) / 3600:.2f}]" for a in answers))
    for a in answers:
        for b in answers:
            assert b.earliest is not None and b.latest is not None and a.eta is not None
            assert b.earliest <= a.eta <= b.latest
    # The band is the first refusal's own chance and more: at least from where Λ is
    # -ln 0.9 to where it is -ln 0.1, a factor 21.9 in Λ, so wider than that in time
    # on a tuple that barely grows in hours (0.008 connections a second).
    for a in answers:
        assert a.latest is not None and a.earliest is not None
        assert a.latest / a.earliest > 21.9
