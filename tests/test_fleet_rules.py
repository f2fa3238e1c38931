"""The fleet rules (deploy/prometheus/egressgw-fleet-rules.yaml) with the real promtool, and
the node label every agent series must carry for them.

The rules are `egressgw alerts --fleet`: their warning threshold comes from the refusal
curve. The shipped unit tests (egressgw-fleet-rules.test.yaml) are written by hand for
Cilium 1.16 defaults; here the same contract is also generated from the curve itself, for
1.16 and for the rules rendered for 1.18, and run through promtool: the warning fires a
tuple that is 5 points below the curve's first refusals, not one 6 points below.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml

from agent_support import GATEWAY, MemoryDatapath, copy_examples, endpoint, scrape
from cli_support import run_cli
from egressgw.agent import Agent, AgentConfig, AgentHTTPServer, ListenAddress
from egressgw.cli.alerts import FLEET_RULES_FILE, RULES_FILE
from egressgw.config import NodePortRange
from egressgw.sim.refusal import PortSearch, RefusalCurve, SourcePorts, planning_curve
from test_alerts import run_promtool

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = PROMETHEUS / "egressgw-fleet-rules.yaml"
RULES_TEST = PROMETHEUS / "egressgw-fleet-rules.test.yaml"
NODE_RULES = PROMETHEUS / "egressgw-rules.yaml"
PROMETHEUS_RULE = PROMETHEUS.parent / "kubernetes" / "prometheusrule.yaml"


run = run_cli


def curve_for(version: str, node_ports: NodePortRange | None = None) -> RefusalCurve:
    """The curve the rules should follow, built here from the refusal model directly."""
    node_ports = node_ports or NodePortRange()
    return planning_curve(PortSearch.for_version(version, node_ports),
                          SourcePorts(clients=400), node_ports.cilium_saturation_divisor)


@pytest.fixture(scope="module")
def curve_116() -> RefusalCurve:
    return curve_for("1.16")


def alert(text: str, name: str) -> dict[str, object]:
    [rule] = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]
              if r.get("alert") == name]
    return dict(rule)


def warning_of(text: str) -> float:
    expr = str(alert(text, "EgressgwTupleRefusalsExpected")["expr"])
    match = re.fullmatch(r"egressgw:nat_endpoint_saturation:ratio > ([0-9.]+)", expr)
    assert match, expr
    return float(match[1])


def test_fleet_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = run_promtool("check", "rules", RULES, cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout
    tested = run_promtool("test", "rules", RULES_TEST.name, cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_shipped_fleet_rules_are_the_alerts_commands_output(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """deploy/'s fleet rules are `egressgw alerts --fleet` for Cilium 1.16 defaults."""
    code, out, err = run(capsys, "alerts", "--fleet")
    assert code == 0, err
    assert RULES.read_text() == out, "run: egressgw alerts --fleet --out " + str(RULES)


def test_shipped_prometheus_rule_is_the_alerts_commands_output(
        capsys: pytest.CaptureFixture[str]) -> None:
    """deploy/kubernetes/prometheusrule.yaml is `egressgw alerts --kubernetes`: the fleet
    file's groups and the per-instance file's agent group, nothing else."""
    code, out, err = run(capsys, "alerts", "--kubernetes")
    assert code == 0, err
    assert PROMETHEUS_RULE.read_text() == out, "run: egressgw alerts --kubernetes --out " + str(
        PROMETHEUS_RULE)
    groups = yaml.safe_load(out)["spec"]["groups"]
    fleet = yaml.safe_load(RULES.read_text())["groups"]
    per_instance = {g["name"]: g for g in yaml.safe_load(NODE_RULES.read_text())["groups"]}
    assert groups == [*fleet, per_instance["egressgw-agent"]]


def test_out_dir_writes_both_files_from_one_curve(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "alerts", "--out-dir", str(tmp_path / "rules"))
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "rules").iterdir())
    assert written == sorted([RULES_FILE, FLEET_RULES_FILE])
    assert (tmp_path / "rules" / FLEET_RULES_FILE).read_text() == RULES.read_text()
    assert (tmp_path / "rules" / RULES_FILE).read_text() == NODE_RULES.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out-dir", "DIR", "--fleet"], "--out-dir writes both rules files"),
        (["--fleet", "--kubernetes"], "give one"),
        (["--out-dir", "FILE"], "not a directory"),
        (["--out-dir", "missing/deeper"], "does not exist"),
    ],
)
def test_out_dir_errors_are_one_line_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "FILE").write_text("kept\n")
    argv = [str(tmp_path / a) if a in ("DIR", "FILE", "missing/deeper") else a for a in args]
    code, out, err = run(capsys, "alerts", *argv)
    assert code == 2 and not out
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]
    assert (tmp_path / "FILE").read_text() == "kept\n"


def test_fleet_and_per_instance_rules_warn_at_the_same_threshold() -> None:
    per_instance = yaml.safe_load(NODE_RULES.read_text())["groups"][0]["rules"][0]["expr"]
    assert float(per_instance.split(">")[-1]) == warning_of(RULES.read_text())
    # The fleet count of gateways past the warning uses it too.
    recorded = {r.get("record"): r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"]}
    assert recorded["fleet:egressgw_nodes_refusals_expected:count"] == (
        f"count(node:egressgw_nat_endpoint_saturation:max > {warning_of(RULES.read_text()):.2f})"
        " or vector(0)")


def contract_tests(curve: RefusalCurve, rules_name: str, flags: str) -> dict[str, object]:
    """promtool tests of the warning's contract, from the curve alone: a
    tuple 5 points below the 0.01% mark warns after a minute (naming the mark), one 6
    points below stays quiet; neither pages while the failure counter is flat."""
    first = curve.saturation_at(1e-4)
    assert first is not None
    ports = curve.divisor
    near = math.ceil((first - 0.05) * ports)
    far = math.floor((first - 0.06) * ports)
    held = f"{near / ports * 100:.4g}%"  # Prometheus' humanizePercentage
    tuple_ = "203.0.113.10 -> 198.51.100.1:443 (TCP)"
    annotations = {
        "summary": f"gw-a: {tuple_} holds {held} of its SNAT ports",
        "description": (
            f"On gateway gw-a, the tuple {tuple_} holds {held} of the NAT source ports it"
            f" may use; new connections to it are expected to be refused from"
            f" {math.floor(first * 100)}% on (egressgw limits{flags}). Against that node's"
            " agent, `egressgw forecast --server` says when at the current growth and"
            " `egressgw plan --stats` how many egress IPs its clients need; or reuse"
            " connections, or add remote endpoints."),
    }
    labels = 'node="gw-a",family="ipv4",proto="TCP",egress_ip="203.0.113.10"'
    return {
        "rule_files": [rules_name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'egressgw_nat_endpoint_connections{{{labels},'
                           f'remote_addr="198.51.100.1:443"}}', "values": f"{near}x5"},
                {"series": f'egressgw_nat_endpoint_connections{{{labels},'
                           f'remote_addr="198.51.100.2:443"}}', "values": f"{far}x5"},
                {"series": 'egressgw_nat_endpoint_port_capacity{node="gw-a"}',
                 "values": f"{ports}x5"},
                {"series": 'egressgw_nat_allocation_failures_total{node="gw-a",'
                           'reason="insert_failed"}', "values": "0x5"},
            ],
            "alert_rule_test": [
                {"eval_time": "0m", "alertname": "EgressgwTupleRefusalsExpected",
                 "exp_alerts": []},
                {"eval_time": "2m", "alertname": "EgressgwTupleRefusalsExpected",
                 "exp_alerts": [{"exp_labels": {
                     "severity": "warning", "node": "gw-a", "family": "ipv4", "proto": "TCP",
                     "egress_ip": "203.0.113.10", "remote_addr": "198.51.100.1:443"},
                     "exp_annotations": annotations}]},
                {"eval_time": "4m", "alertname": "EgressgwNodeNatAllocationFailures",
                 "exp_alerts": []},
            ],
        }],
    }


def run_contract(rules_text: str, curve: RefusalCurve, directory: Path, flags: str = "") -> None:
    (directory / "rules.yaml").write_text(rules_text)
    (directory / "contract.test.yaml").write_text(
        yaml.safe_dump(contract_tests(curve, "rules.yaml", flags)))
    result = run_promtool("test", "rules", "contract.test.yaml", cwd=directory)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_fleet_warning_follows_the_116_curve(tmp_path: Path,
                                                     curve_116: RefusalCurve) -> None:
    run_contract(RULES.read_text(), curve_116, tmp_path)
    first = curve_116.saturation_at(1e-4)
    assert first is not None
    assert f"refused from {math.floor(first * 100)}% on" in " ".join(RULES.read_text().split())


@pytest.mark.parametrize(
    "setup",
    [
        # 32 tries of a 16-port cycle (cilium-snat.md 11): refusals start lower.
        ("--cilium-version 1.18", "1.18", NodePortRange(), "Cilium 1.18 port search"),
        # A narrower NAT range, 40001-65535, and its own divisor (25534).
        ("--node-port-range 30000,40000", "1.16", NodePortRange(30000, 40000),
         "NAT ports 40001-65535"),
    ],
    ids=["cilium-1.18", "node-port-range"],
)
def test_fleet_rules_rendered_for_another_setup_move_their_thresholds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], curve_116: RefusalCurve,
        setup: tuple[str, str, NodePortRange, str]) -> None:
    """Rendered for another version or range, the rules' warning moves with that setup's
    curve: promtool runs the contract generated from the curve on the rendered file."""
    flags, version, node_ports, described = setup
    out = tmp_path / "fleet.yaml"
    code, _, err = run(capsys, "alerts", "--fleet", *flags.split(), "--out", str(out))
    assert code == 0, err
    text = out.read_text()
    assert f"egressgw alerts --fleet {flags}" in text and described in text
    checked = run_promtool("check", "rules", out, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    curve = curve_for(version, node_ports)
    run_contract(text, curve, tmp_path, f" {flags}")
    first, first_116 = curve.saturation_at(1e-4), curve_116.saturation_at(1e-4)
    assert first is not None and first_116 is not None
    assert abs(first - first_116) > 0.1
    assert abs(warning_of(text) - warning_of(RULES.read_text())) > 0.1
    assert f"refused from {math.floor(first * 100)}% on" in " ".join(text.split())


@pytest.mark.parametrize(
    ("original", "changed"),
    [
        ("topk by (node) (1,", "topk by (family) (1,"),
        ("topk(1, egressgw:", "bottomk(1, egressgw:"),
        ("ratio > 0.50\n", "ratio > 0.53\n"),
        ("ratio > 0.50\n", "ratio > 0.49\n"),
        ("> 0.50\n        for: 1m\n", "> 0.50\n        for: 0m\n"),
        (":max > 0.50)", ":max > 0.40)"),
        (":max > 0.50)", ":max > 0.70)"),
        ("group_left ()\n          egressgw_nat_endpoint_port_capacity",
         "group_left ()\n          (2 * egressgw_nat_endpoint_port_capacity)"),
        ("sum by (node) (increase", "sum by (reason) (increase"),
        ("increase5m > 0)", "increase5m >= 0)"),
        ("group_left (family, proto, egress_ip, remote_addr)", "group_left ()"),
        ("or on (node)\n          node:egressgw_nat_allocation_failures:increase5m > 0\n", "\n"),
    ],
    ids=["per-node", "fleet-worst", "warning-higher", "warning-lower", "warning-duration",
         "nodes-near-lower", "nodes-near-higher", "ratio", "failures-by-node",
         "critical-without-failures", "critical-without-tuple", "critical-without-tuples-lost"],
)
def test_fleet_unit_tests_catch_a_changed_rule(tmp_path: Path, original: str, changed: str) -> None:
    text = RULES.read_text()
    assert text.count(original) == 1, original
    (tmp_path / RULES.name).write_text(text.replace(original, changed))
    # Still valid rules: it is the unit tests that must notice, not the parser.
    checked = run_promtool("check", "rules", RULES.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = run_promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr


def test_every_agent_series_carries_its_node(tmp_path: Path) -> None:
    policies, inventory = copy_examples(tmp_path)
    datapath = MemoryDatapath()
    datapath.counts = {endpoint("203.0.113.10", "198.51.100.10", 443): 7}
    datapath.failures = {"insert_failed": 2}
    agent = Agent(AgentConfig(policies, inventory, GATEWAY, datapath="model",
                              listen=ListenAddress("127.0.0.1", 0)), datapath)
    agent.start()
    server = AgentHTTPServer(ListenAddress("127.0.0.1", 0), agent.api)
    server.start()
    try:
        samples = scrape(server.address.url())
    finally:
        server.stop()
    names = set(samples)
    assert {"egressgw_agent_info", "egressgw_nat_endpoint_connections",
            "egressgw_nat_allocation_failures_total", "egressgw_rules"} <= names
    for name, found in samples.items():
        for labels, _ in found:
            assert labels.get("node") == GATEWAY, (name, labels)
    [(info, _)] = samples["egressgw_agent_info"]
    assert info["node"] == GATEWAY and info["datapath"] == "model"


DASHBOARD = PROMETHEUS.parent / "grafana" / "egressgw-fleet-dashboard.json"


@pytest.mark.parametrize(("dashboard", "panels"), [
    ("egressgw-fleet-dashboard.json", 2), ("egressgw-dashboard.json", 2)])
def test_dashboard_threshold_lines_are_the_rules_and_the_curves(
        dashboard: str, panels: int, curve_116: RefusalCurve) -> None:
    """Every saturation panel draws the rules' warning (orange) and the occupancy where the
    Cilium 1.16 curve refuses 1% of new connections (red), rounded down to whole percent."""
    refusing = curve_116.saturation_at(1e-2)
    assert refusing is not None
    expected = [warning_of(RULES.read_text()), math.floor(refusing * 100) / 100]
    found = []
    for panel in json.loads((DASHBOARD.parent / dashboard).read_text())["panels"]:
        steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {})
        values = [step["value"] for step in steps.get("steps", [])[1:]]
        if any(0 < v < 1 for v in values):
            assert values == expected, (panel["title"], values)
            assert [step["color"] for step in steps["steps"]] == ["green", "orange", "red"]
            found.append(panel["title"])
    assert len(found) == panels, found


def test_fleet_dashboard_queries_parse_and_use_only_known_series(tmp_path: Path) -> None:
    """Each query is valid PromQL (promtool parses it as a rule) and reads only series the
    fleet rules record or every agent exports with its node label."""
    dashboard = json.loads(DASHBOARD.read_text())
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    exported = {"egressgw_agent_info", "egressgw_nat_allocation_failures_total"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\b(?:fleet|node|egressgw)[:a-z_0-9]*", expr)) - {"node"}
        assert names and names <= recorded | exported, (expr, names)
        used |= names
    assert {"fleet:egressgw_nat_endpoint_saturation:max",
            "node:egressgw_nat_endpoint_saturation:max",
            "fleet:egressgw_nodes_refusals_expected:count",
            "fleet:egressgw_nat_endpoint_connections:top10"} <= used
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard_query_{i}", "expr": e.replace("$node", ".*")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    checked = run_promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    picker = {v["name"]: v for v in dashboard["templating"]["list"]}["node"]
    assert picker["definition"] == "label_values(egressgw_agent_info, node)"
