"""The Prometheus alert rules and the Grafana dashboard shipped in deploy/.

The rules are checked and unit-tested with the real promtool; the dashboard's queries are
checked against the metric names a real agent serves on /metrics.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent_support import GATEWAY, break_policy, copy_examples, scrape, settled
from egressgw.agent import Agent, AgentConfig, AgentHTTPServer, ListenAddress
from egressgw.agent.modeldp import ModelAgentDatapath
from egressgw.cli import main
from egressgw.cli.alerts import rules_text
from egressgw.config import NodePortRange
from egressgw.net import Endpoint, FiveTuple, Proto
from egressgw.sim.alerts import thresholds
from egressgw.sim.refusal import PortSearch, SourcePorts, planning_curve, steady_curve
from egressgw.sim.simulate import SimSettings, simulate
from egressgw.sim.workload import load_workload

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "egressgw" / "examples"
RULES = DEPLOY / "prometheus" / "egressgw-rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "egressgw-rules.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "egressgw-dashboard.json"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the alert rules, but {reason}")
        pytest.skip(f"{reason}; CI installs it")
    return path


def run_promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rules_are_valid() -> None:
    result = run_promtool("check", "rules", RULES, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("original", "weakened"),
    [
        ("port_capacity > 0.50\n", "port_capacity > 0.53\n"),
        ("[5m])) > 0", "[5m])) > 5"),
        ("> 0.50\n        for: 1m\n", "> 0.50\n        for: 0m\n"),
        ("max by (node) (egressgw_reconcile_failing)",
         "max by (instance) (egressgw_reconcile_failing)"),
        ("max by (node) (egressgw_nat_stats_last_recount_timestamp_seconds)",
         "max by (instance) (egressgw_nat_stats_last_recount_timestamp_seconds)"),
    ],
    ids=["warning-threshold", "failure-threshold", "warning-duration",
         "reconcile-failing-by-instance", "stale-by-instance"],
)
def test_rule_unit_tests_catch_a_changed_rule(tmp_path: Path, original: str, weakened: str) -> None:
    """The unit tests are sharp: changing a threshold or a duration makes them fail."""
    text = RULES.read_text()
    assert text.count(original) == 1, original
    (tmp_path / RULES.name).write_text(text.replace(original, weakened))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = run_promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_shipped_rules_are_the_alerts_commands_output() -> None:
    """deploy/'s rules are `egressgw alerts` for Cilium 1.16 defaults, regenerated."""
    assert RULES.read_text() == rules_text(), "run: egressgw alerts --out " + str(RULES)


def test_warning_comes_before_the_first_refusals_the_curve_expects() -> None:
    search = PortSearch.for_version("1.16", NodePortRange())
    sources = SourcePorts(clients=400)
    growth = planning_curve(search, sources, 32767)
    t = thresholds(growth)
    steady = steady_curve(search, sources, 32767, steps=50_000)
    # Below the first refusals of both measured curves.
    assert t.warning < (growth.saturation_at(1e-4) or 1.0)
    assert t.warning < (steady.saturation_at(1e-4) or 1.0)
    assert growth.rate_at(t.warning * 32767) < 1e-4


def test_shipped_warning_fires_before_the_seed_scenarios_first_refusals() -> None:
    """The seed workload on the model datapath: the busiest tuple is above the shipped
    warning threshold at a nat-stats pass before the first one that saw a refusal."""
    workload = load_workload(EXAMPLES / "workloads" / "seed-scenario.yaml")
    result = simulate(workload, SimSettings(duration=12 * 60.0), progress=False)
    warning = float(yaml.safe_load(RULES.read_text())["groups"][0]["rules"][0]["expr"]
                    .split(">")[-1])
    refused = [r.totals.refused for r in result.intervals]
    first = next(i for i, n in enumerate(refused) if n > 0)
    top = [max(row.count for row in r.stats.rows) / r.stats.divisor for r in result.intervals]
    warned = next(i for i, sat in enumerate(top) if sat > warning)
    # Above the threshold for the rule's minute by the last pass without refusals.
    assert result.intervals[first - 1].time - result.intervals[warned].time >= 60


def test_alerts_command_writes_rules_for_another_version(tmp_path: Path) -> None:
    out = tmp_path / "rules.yaml"
    main(["alerts", "--cilium-version", "1.18", "--clients", "0", "--out", str(out)])
    text = out.read_text()
    assert "egressgw alerts --cilium-version 1.18 --clients 0" in text
    result = run_promtool("check", "rules", out, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # 32 tries of a 16-port cycle: with clients drawing random ports, refusals start
    # far lower than with 1.16's 127-port walk (cilium-snat.md 11: first drop at 44-47%
    # against 64-73% for 32 tries).
    v116 = yaml.safe_load(rules_text(clients=0))["groups"][0]["rules"][0]["expr"]
    v118 = yaml.safe_load(text)["groups"][0]["rules"][0]["expr"]
    assert float(v118.split(">")[-1]) + 0.1 < float(v116.split(">")[-1])


# -- what the rules and the dashboard query must exist ------------------------------------

# A metric name, not part of a recorded series' name (level:metric:operations).
METRIC_NAME = re.compile(r"(?<![:\w])egressgw_[a-z0-9_]+\b(?!:)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a real agent serves on /metrics after real (model) traffic:
    rules applied, a pass counted, ports run out, a policy edit rejected."""
    policies, inventory = copy_examples(tmp_path_factory.mktemp("files"))
    ports = NodePortRange(30000, 65471)
    datapath = ModelAgentDatapath.for_node_ports(ports)
    clock = [0.0]
    config = AgentConfig(policies, inventory, GATEWAY, datapath="model", node_port_range=ports,
                         stats_interval=1.0)
    agent = Agent(config, datapath, clock=lambda: clock[0], wall=lambda: clock[0])
    server = AgentHTTPServer(ListenAddress("127.0.0.1", 0), agent.api)
    server.start()
    try:
        agent.start()
        client = ipaddress.ip_address("192.0.2.10")
        for port in range(100):
            datapath.connect(FiveTuple(Proto.TCP, Endpoint(client, 20000 + port),
                                       Endpoint(ipaddress.ip_address("198.51.100.5"), 443)))
        break_policy(policies)
        clock[0] += 1
        agent.tick()
        settled(agent, 2)
        samples = scrape(server.address.url())
    finally:
        server.stop()
        agent.close()
    assert samples["egressgw_nat_allocation_failures_total"][0][1] > 0
    return set(samples)


def queried_metrics(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


@pytest.mark.parametrize("rules_file", [RULES, DEPLOY / "prometheus" / "egressgw-fleet-rules.yaml"],
                         ids=["per-instance", "fleet"])
def test_alert_rules_query_metrics_the_agent_exports(exported: set[str], rules_file: Path) -> None:
    rules = yaml.safe_load(rules_file.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = set().union(*map(queried_metrics, exprs))
    assert used, exprs
    assert used <= exported, used - exported


def test_dashboard_queries_metrics_the_agent_exports(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = queried_metrics(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= exported, (panel["title"], names - exported)
            used |= names
    # The panels the dashboard is for: saturation, top tuples, drops, allocation failures.
    assert {
        "egressgw_nat_endpoint_max_connection",
        "egressgw_nat_endpoint_connections",
        "egressgw_drop_count_total",
        "egressgw_nat_allocation_failures_total",
    } <= used
    # The instance picker lists the agents by a metric they all export.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert queried_metrics(variables["instance"]["definition"]) <= exported
