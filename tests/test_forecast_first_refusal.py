"""forecast --hold: the time a first refusal becomes more likely than not (Λ = ln 2).

Hand-computed Λ for a linear trend and a step curve, the CLI's figures checked by an
independent integration of the curve's own rates, and the prediction checked against
the model datapath: a growing tuple simulated over several seeds, its first refused
connection compared with the forecast from snapshots of that same run.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from egressgw.cli import main
from egressgw.config import NodePortRange
from egressgw.sim.expected_refusals import (
    LN2,
    CurveBand,
    expected_refused,
    first_refusal,
    probability_of,
)
from egressgw.sim.forecast import Outlook
from egressgw.sim.refusal import PortSearch, RefusalCurve, SourcePorts, named_curve

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from bench_forecast_coverage import binomial_range, coverage_runs

LIMIT = 32767
CAPACITY = Path(__file__).parents[1] / "docs" / "capacity.md"


def _step(at: float, q: float):
    def p(counts: np.ndarray) -> np.ndarray:
        return np.where(counts >= at, q, 0.0)

    return p


# A linear trend: 1000 connections +50 a minute, 10 snapshots a minute apart; the last
# fitted count is 1450, the slope b = 5/6 per second. Step curve: p = 1e-3 from 2000 on.
MINUTES = np.arange(10.0)
TIMES = MINUTES * 60
COUNTS = 1000 + 50 * MINUTES
HOLD = 120.0
Q = 1e-3
STEP = 2000.0


def _hand_time(expected: float = LN2) -> float:
    """Solve Λ(T) = expected by hand: with c(u) = c0 + b u and p = Q from t_k (c = STEP),
    Λ(T) = Q/H [c0 (T - t_k) + b (T^2 - t_k^2) / 2], a quadratic in T."""
    c0, b = 1450.0, 50.0 / 60
    t_k = (STEP - c0) / b  # 660 s
    constant = c0 * t_k + b * t_k**2 / 2 + expected * HOLD / Q  # 957000 + 181500 + ...
    return (-c0 + math.sqrt(c0**2 + 2 * b * constant)) / b  # about 701.2 s for ln 2


def test_linear_trend_and_step_curve_match_the_hand_computed_time():
    expected = _hand_time()
    assert expected == pytest.approx(701.2, abs=0.1)
    first = first_refusal(TIMES, COUNTS, hold=HOLD, probability=_step(STEP, Q))
    assert first.outlook is Outlook.GROWING
    # The grid's steps are 0.18%: a step in p moves the answer by at most one.
    assert first.eta == pytest.approx(expected, rel=2e-3)
    # Exact points and an exact curve: the band is the first refusal's own chance
    # alone, 80% of it: from P(a refusal by T) = 1 - exp(-Λ) = 10%, Λ = -ln 0.9, to
    # 90%, Λ = -ln 0.1 (Λ = 0.1054 at 666.3 s, 2.3026 at 794.4 s by the quadratic).
    assert first.coverage == 0.8
    assert _hand_time(0.10536) == pytest.approx(666.3, abs=0.1)
    assert _hand_time(2.30259) == pytest.approx(794.4, abs=0.1)
    assert first.earliest == pytest.approx(_hand_time(-math.log(0.9)), rel=2e-3)
    assert first.latest == pytest.approx(_hand_time(-math.log(0.1)), rel=2e-3)
    assert first.count == pytest.approx(1450 + 50 / 60 * expected, rel=1e-3)
    assert first.refused_per_day == 0.0  # 1450 is below the step


def test_lambda_of_a_linear_trend_is_the_closed_form_integral():
    # Λ(T) for c(u) = 1450 + 5/6 u through the step, at three times past t_k = 660 s.
    u = np.concatenate(([0.0], np.geomspace(1e-3, 2000.0, 20000)))
    lam = expected_refused(lambda x: 1450 + 5 / 6 * x, u, hold=HOLD,
                           probability=_step(STEP, Q))
    for t in (700.0, 1000.0, 2000.0):
        hand = Q / HOLD * (1450 * (t - 660) + 5 / 6 * (t**2 - 660**2) / 2)
        assert float(np.interp(t, u, lam)) == pytest.approx(hand, rel=5e-3)


def test_a_step_curve_object_goes_through_the_curves_own_rate_at():
    # The same step as a RefusalCurve: 0 up to 1999 connections, 1e-3 from 2000
    # (rate_at ramps linearly over the one connection between, moving the answer < 1 s).
    search = PortSearch.for_version("1.16", NodePortRange())
    curve = RefusalCurve("step", search, SourcePorts(), LIMIT, LIMIT,
                         np.array([0, 1999, 2000, 5000]), np.array([0.0, 0.0, Q, Q]),
                         np.zeros(4), np.zeros(4))
    first = first_refusal(TIMES, COUNTS, hold=HOLD, probability=probability_of(curve))
    assert first.eta == pytest.approx(_hand_time(), abs=2.0)


def test_a_flat_tuple_already_refusing_has_a_first_refusal_and_a_shrinking_one_none():
    # 3000 held, 600 s hold: 5 new a second, each refused with 1e-4: 5e-4 a second, so
    # ln 2 / 5e-4 = 1386.3 s; 43.2 refusals a day.
    flat = first_refusal([0, 60, 120], [3000, 3000, 3000], hold=600,
                         probability=_step(2500, 1e-4))
    assert flat.outlook is Outlook.NOT_GROWING
    assert flat.eta == pytest.approx(LN2 / 5e-4, rel=2e-3)
    assert flat.refused_per_day == pytest.approx(43.2)
    shrinking = first_refusal([0, 60, 120], [2400, 2300, 2200], hold=600,
                              probability=_step(2500, 1e-4))
    assert shrinking.eta is None
    too_few = first_refusal([0], [3000], hold=600, probability=_step(2500, 1e-4))
    assert too_few.outlook is Outlook.TOO_FEW and too_few.eta is None


def test_the_curves_band_widens_the_first_refusals_band():
    # A flat tuple of 3000 held for 600 s: 5 new connections a second. p = 1e-4 with a
    # band from 5e-5 to 2e-4: the earliest time is where 5 x 2e-4 x T = -ln 0.9
    # (105.4 s), the latest where 5 x 5e-5 x T = -ln 0.1 (9210.3 s); the answer where
    # 5 x 1e-4 x T = ln 2 (1386.3 s).
    band = CurveBand(_step(0, 1e-4), _step(0, 5e-5), _step(0, 2e-4))
    first = first_refusal([0, 60, 120], [3000, 3000, 3000], hold=600, probability=band)
    assert first.eta == pytest.approx(1386.3, rel=2e-3)
    assert first.earliest == pytest.approx(105.4, rel=2e-3)
    assert first.latest == pytest.approx(9210.3, rel=2e-3)
    # A wider coverage asks for a wider band: 98% from Λ = -ln 0.99 to -ln 0.01.
    wide = first_refusal([0, 60, 120], [3000, 3000, 3000], hold=600, probability=band,
                         coverage=0.98)
    assert wide.earliest == pytest.approx(-math.log(0.99) / 1e-3, rel=2e-3)
    assert wide.latest == pytest.approx(-math.log(0.01) / 2.5e-4, rel=2e-3)


def test_noisy_growth_has_a_band_around_the_estimate():
    rng = np.random.default_rng(3)
    t = np.arange(12.0) * 300
    counts = 20000 + 2.0 * t + rng.normal(0, 150, len(t))
    first = first_refusal(t, counts, hold=600, probability=_step(25000, 1e-4))
    assert first.has_band
    assert first.earliest is not None and first.latest is not None
    assert first.earliest < first.eta < first.latest


def _agent_pass(updated_at: float, count: int) -> dict[str, object]:
    return {"updatedAt": updated_at, "entries": 30, "divisor": LIMIT, "rows": [
        {"family": "ipv4", "proto": "TCP", "egressIP": "10.1.0.0", "remoteIP": "10.2.0.0",
         "remotePort": 8080, "remoteAddr": "10.2.0.0:8080", "count": count, "rank": 1}]}


def test_cli_reports_the_time_the_curves_own_rates_integrate_to_ln2(tmp_path, capsys):
    # 40% to 70% in two weeks, one snapshot a week.
    week = 7 * 86400
    specs = []
    for i, share in enumerate([0.40, 0.55, 0.70]):
        path = tmp_path / f"w{i}.json"
        path.write_text(json.dumps(_agent_pass(i * week, round(share * LIMIT))))
        specs.append(str(path))
    main(["forecast", *specs, "--hold", "10m", "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assumptions = doc["firstRefusal"]
    assert assumptions["holdSeconds"] == 600 and assumptions["limit"] == LIMIT
    assert assumptions["expectedRefused"] == pytest.approx(math.log(2))
    assert assumptions["curve"]["name"] == "steady"
    assert assumptions["curve"]["ciliumVersion"] == "1.16"
    (row,) = doc["tuples"]
    assert "oneIn10000Refused" not in row  # replaced by the first refusal
    eta = row["firstRefusal"]["seconds"]
    assert 0 < eta < row["refusalRate"]["seconds"] < row["secondsToLimit"]
    # Independently: the same curve's rate_at, integrated by the midpoint rule along
    # the line through the points (exact here: 40%, 55%, 70% lie on it).
    search = PortSearch.for_version("1.16", NodePortRange(30000, 32767))
    curve = named_curve("steady", search, SourcePorts().with_clients(400), LIMIT)
    slope = 0.15 * LIMIT / week
    n = 4000
    mids = (np.arange(n) + 0.5) * eta / n
    total = sum(curve.rate_at(c) * c / 600 for c in round(0.70 * LIMIT) + slope * mids)
    assert total * eta / n == pytest.approx(LN2, rel=0.02)
    # Without --hold the 0.01% column stays, named for what it is.
    main(["forecast", *specs])
    table = capsys.readouterr().out
    assert "0.01% refused" in table and "First refusal" not in table


def test_bad_hold_is_one_line_and_exit_2(tmp_path, capsys):
    specs = []
    for i in range(2):
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps(_agent_pass(i * 60, 100 + i)))
        specs.append(str(path))
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", *specs, "--hold", "0s"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "egressgw: error: --hold: 0: must be a positive duration")


# -- the prediction against the model datapath ------------------------------------------

# The first 12 seeds of bench/bench_forecast_coverage.py (which runs 24): a tuple of
# 1024 ports grown through the model datapath, each run's forecast made from its own
# snapshots, 5 to 15 minutes in.
SEEDS = range(12)


def test_the_band_holds_the_simulated_first_refusals():
    runs = coverage_runs(SEEDS)
    firsts = [r.first for r in runs]
    predicted = [r.predicted for r in runs]
    inside = sum(r.inside for r in runs)
    print(f"\nfirst refusal, simulated: median {statistics.median(firsts):.0f} s "
          f"({min(firsts):.0f}-{max(firsts):.0f}); predicted (Λ = ln 2): median "
          f"{statistics.median(predicted):.0f} s ({min(predicted):.0f}-{max(predicted):.0f}); "
          f"{inside} of {len(runs)} inside the 80% band; full: median "
          f"{statistics.median(r.full for r in runs):.0f} s")
    # An 80% band holds each run with probability 0.8: of 12, 5 or fewer inside has
    # probability 0.4% (binomial), the lower end of the central 99% range, 6..12; the
    # bench's 24 seeds measure the coverage itself (docs/capacity.md).
    low, high = binomial_range(len(SEEDS), 0.8, 0.99)
    assert (low, high) == (6, 12)
    assert low <= inside <= high
    # Λ = ln 2 is the median of the first refusal's time: the predictions' median lies
    # among the simulated times and near their median, and run by run the first refusal
    # comes sometimes before its own run's prediction and sometimes after.
    assert min(firsts) <= statistics.median(predicted) <= max(firsts)
    early = sum(f < p for f, p in zip(firsts, predicted, strict=True))
    assert 1 <= early <= len(SEEDS) - 1
    assert statistics.median(predicted) == pytest.approx(statistics.median(firsts), rel=0.2)
    # The time to 100% would not have passed: it lies after every simulated refusal.
    full = [r.full for r in runs]
    assert statistics.median(full) > max(firsts)
    # docs/capacity.md quotes these figures.
    text = " ".join(CAPACITY.read_text().split())
    assert (f"first refused a connection after {min(firsts):.0f} to {max(firsts):.0f} s "
            f"(median {statistics.median(firsts):.0f} s)") in text
    assert (f"predicted {min(predicted):.0f} to {max(predicted):.0f} s (median "
            f"{statistics.median(predicted):.0f} s); the time to 100% (median "
            f"{statistics.median(full):.0f} s)") in text
    assert f"{inside} of {len(SEEDS)} of these runs fell inside their forecast's band" in text


def test_binomial_range_by_hand():
    # Binomial(24, 0.8): P(X <= 14) = 0.0126, P(X <= 15) = 0.0362; P(X = 24) = 0.0047,
    # P(X >= 23) = 0.0331: the central 95% range is 15..23.
    low, high = binomial_range(24, 0.8)
    assert (low, high) == (15, 23)
    pmf = [math.comb(24, k) * 0.8**k * 0.2 ** (24 - k) for k in range(25)]
    assert sum(pmf[:low]) <= 0.025 < sum(pmf[: low + 1])
    assert sum(pmf[high + 1:]) <= 0.025 < sum(pmf[high:])
