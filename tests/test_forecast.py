"""Forecast: known linear growth gives a known time, and the band contains it."""

from __future__ import annotations

import http.server
import json
import threading
from typing import ClassVar

import numpy as np
import pytest

from egressgw.cli import main
from egressgw.config import NodePortRange
from egressgw.errors import InputError
from egressgw.limits import cilium_limit
from egressgw.net import Family, NatEndpoint, Proto, parse_ip
from egressgw.sim.forecast import (
    Outlook,
    fit_trend,
    forecast_snapshots,
    t_quantile,
)
from egressgw.sim.snapshots import load_snapshots

LIMIT = 32767


def test_t_quantiles_match_published_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=1e-3)
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=1e-3)


def test_exact_linear_growth_reaches_the_limit_when_arithmetic_says():
    # 1000 connections, +50 per minute: 31767 more take 635.34 minutes after the start.
    minutes = np.arange(10.0)
    trend = fit_trend(minutes * 60, 1000 + 50 * minutes, LIMIT)
    assert trend.outlook is Outlook.GROWING
    expected = (LIMIT - 1000) / 50 * 60 - 9 * 60
    assert trend.eta == pytest.approx(expected)
    assert trend.earliest == pytest.approx(expected) and trend.latest == pytest.approx(expected)


def test_band_contains_the_true_time_for_noisy_growth():
    rng = np.random.default_rng(5)
    t = np.arange(12.0) * 300
    true_slope = 2.0
    truth = (LIMIT - 5000) / true_slope - t[-1]
    covered = 0
    for _ in range(40):
        counts = 5000 + true_slope * t + rng.normal(0, 200, len(t))
        trend = fit_trend(t, counts, LIMIT, confidence=0.9)
        assert trend.earliest is not None and trend.earliest <= trend.eta
        assert trend.latest is None or trend.eta <= trend.latest
        covered += trend.earliest <= truth <= (trend.latest or np.inf)
    # The prediction band is wider than the line's own uncertainty: nearly always covers.
    assert covered >= 36


def test_shrinking_flat_and_full_tuples_say_so():
    t = [0.0, 60.0, 120.0]
    assert fit_trend(t, [900, 800, 700], LIMIT).outlook is Outlook.NOT_GROWING
    assert fit_trend(t, [800, 800, 800], LIMIT).outlook is Outlook.NOT_GROWING
    full = fit_trend(t, [30000, 32000, 32767], LIMIT)
    assert full.outlook is Outlook.AT_LIMIT and full.eta == 0
    assert fit_trend([0.0], [10], LIMIT).outlook is Outlook.TOO_FEW
    two = fit_trend([0.0, 100.0], [0, 100], 1000)
    assert two.eta == pytest.approx(900.0) and not two.has_band


TABLE = """# IPFamily   Proto   EgressIP   RemoteAddr      Count
ipv4         TCP     10.1.0.0   10.2.0.0:8080   {a}
ipv4         UDP     10.1.0.0   10.96.0.10:53   {b}
"""


def test_snapshots_from_tables_and_json_forecast_each_tuple(tmp_path):
    specs = []
    for i, (a, b) in enumerate([(1000, 500), (2000, 400), (3000, 300)]):
        path = tmp_path / f"s{i}.txt"
        path.write_text(TABLE.format(a=a, b=b))
        specs.append(f"{path}@{i * 60}")
    doc = {"updated_at": "1970-01-01T00:03:00Z", "rows": [
        {"family": "ipv4", "proto": "TCP", "egress_ip": "10.1.0.0", "remote_ip": "10.2.0.0",
         "remote_port": 8080, "count": 4000, "rank": 1}]}
    (tmp_path / "s3.json").write_text(json.dumps(doc))
    specs.append(str(tmp_path / "s3.json"))
    snapshots = load_snapshots(specs)
    assert [s.time for s in snapshots] == [0, 60, 120, 180]
    results = forecast_snapshots(snapshots, limit=LIMIT)
    tcp = NatEndpoint(Family.IPV4, Proto.TCP, parse_ip("10.1.0.0"), parse_ip("10.2.0.0"), 8080)
    assert results[0].endpoint == tcp
    assert results[0].trend.eta == pytest.approx((LIMIT - 4000) / 1000 * 60)
    assert results[1].trend.outlook is Outlook.NOT_GROWING


def test_snapshot_without_time_is_rejected(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text(TABLE.format(a=1, b=2))
    with pytest.raises(InputError, match="no time for this snapshot"):
        load_snapshots([str(path)])
    with pytest.raises(InputError, match="expected seconds or an ISO 8601 time"):
        load_snapshots([f"{path}@yesterday"])
    path.write_text("# IPFamily Proto EgressIP RemoteAddr Count\nipv4 TCP 10.1.0.0 x:1 2\n")
    with pytest.raises(InputError, match=r"s.txt:2: bad row"):
        load_snapshots([f"{path}@0"])


NAT_LIST_LINE = (
    "TCP IN 10.2.0.0:8080 -> 10.1.0.0:{port} XLATE_DST 10.244.0.5:{port} "
    "Created=12sec ago NeedsCT=1\n"
)


def test_dumps_are_counted_and_the_cli_prints_each_outlook(tmp_path, capsys):
    # Dumps of cilium-dbg bpf nat list with 100, 200, 300 connections to one tuple.
    specs = []
    for i, n in enumerate([100, 200, 300]):
        path = tmp_path / f"nat-{i}.txt"
        path.write_text("".join(NAT_LIST_LINE.format(port=40000 + p) for p in range(n)))
        specs.append(str(path))
    main(["forecast", *specs, "--at", "0", "--at", "60", "--at", "120"])
    out = capsys.readouterr().out
    # +100 a minute from 300: 32467 more take 324.67 minutes = 5h24m40s.
    line = next(line for line in out.splitlines() if line.startswith("10.1.0.0"))
    assert line.split()[:6] == ["10.1.0.0", "10.2.0.0:8080", "TCP", "300", "0.9%", "+100.0"]
    assert line.endswith("in 5h24m40s [5h24m40s .. 5h24m40s]")
    # The forecast says which limit it used (a Cilium dump: Cilium's divisor).
    assert out.startswith("Limit 32767 ports (cilium: --node-port-range 30000,32767)")
    main(["forecast", *specs, "--at", "0", "--at", "60", "--at", "120", "-o", "json"])
    (tuple_doc,) = json.loads(capsys.readouterr().out)["tuples"]
    assert tuple_doc["secondsToLimit"] == pytest.approx((LIMIT - 300) / 100 * 60)
    assert tuple_doc["outlook"] == "growing"


def test_cli_rejects_mismatched_at_in_one_line(tmp_path, capsys):
    path = tmp_path / "s.txt"
    path.write_text(TABLE.format(a=1, b=2))
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", str(path), "--at", "0", "--at", "1"])
    assert exit_info.value.code == 2
    assert "--at given 2 times for 1 snapshots" in capsys.readouterr().err


class _Passes(http.server.BaseHTTPRequestHandler):
    """An agent stand-in over real HTTP: each GET returns the next nat-stats pass."""

    documents: ClassVar[list[dict]] = []
    served: ClassVar[int] = 0

    def do_GET(self):
        cls = type(self)
        doc = cls.documents[min(cls.served, len(cls.documents) - 1)]
        cls.served += 1
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _pass(updated_at, count):
    return {"updatedAt": updated_at, "entries": 30, "divisor": LIMIT, "rows": [
        {"family": "ipv4", "proto": "TCP", "egressIP": "10.1.0.0", "remoteIP": "10.2.0.0",
         "remotePort": 8080, "remoteAddr": "10.2.0.0:8080", "count": count, "rank": 1}]}


def test_cli_polls_the_agent_and_skips_repeated_passes(capsys):
    # Passes at 0, 30, 30 (polled twice), 60 and 90 s: +1000 connections every 30 s.
    _Passes.documents = [_pass(0, 1000), _pass(30, 2000), _pass(30, 2000), _pass(60, 3000),
                         _pass(90, 4000)]
    _Passes.served = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Passes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        main(["forecast", "--server", url, "--samples", "4", "--every", "0.01s",
              "-o", "json"])
    finally:
        server.shutdown()
        server.server_close()
    assert _Passes.served == 5
    (doc,) = json.loads(capsys.readouterr().out)["tuples"]
    assert doc["samples"] == 4 and doc["count"] == 4000
    assert doc["secondsToLimit"] == pytest.approx((LIMIT - 4000) / 1000 * 30)


def test_forecast_uses_the_divisor_the_source_reports(tmp_path, capsys):
    # An agent with --node-port-range 30000,65471 reports 63 ports per tuple.
    specs = []
    for i, count in enumerate([10, 20, 30]):
        doc = _pass(i * 60, count)
        doc["divisor"] = 63
        doc["limit"] = cilium_limit(NodePortRange(30000, 65471)).document()
        path = tmp_path / f"a{i}.json"
        path.write_text(json.dumps(doc))
        specs.append(str(path))
    main(["forecast", *specs, "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["limit"] == 63 and doc["portLimit"]["ports"] == 63
    (t,) = doc["tuples"]
    # +10 a minute from 30: 33 more to 63 take 3.3 minutes.
    assert t["secondsToLimit"] == pytest.approx(33 / 10 * 60)


def test_scale_multiplies_counts_and_growth(tmp_path, capsys):
    # 40% to 70% of 32767 in two weeks, linearly (one snapshot a week).
    counts = [0.40 * LIMIT, 0.55 * LIMIT, 0.70 * LIMIT]
    specs = []
    for i, count in enumerate(counts):
        doc = _pass(i * 7 * 86400, round(count))
        path = tmp_path / f"w{i}.json"
        path.write_text(json.dumps(doc))
        specs.append(str(path))
    main(["forecast", *specs, "-o", "json"])
    (now,) = json.loads(capsys.readouterr().out)["tuples"]
    week = 7 * 86400
    # 30% more to 100% at 15% a week: two weeks.
    assert now["secondsToLimit"] == pytest.approx(2 * week, rel=1e-3)
    main(["forecast", *specs, "--scale", "3", "-o", "json"])
    (tripled,) = json.loads(capsys.readouterr().out)["tuples"]
    assert tripled["count"] == pytest.approx(3 * round(0.70 * LIMIT))
    assert tripled["outlook"] == "at limit" and tripled["secondsToLimit"] == 0
    # The refusal marks lie below the limit and are reached no later than it.
    assert (now["oneIn10000Refused"]["seconds"] <= now["refusalRate"]["seconds"]
            <= now["secondsToLimit"])
