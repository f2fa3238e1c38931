"""The fleet rules (deploy/prometheus/egressgw-fleet-rules.yaml) with the real promtool, and
the node label every agent series must carry for them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from agent_support import GATEWAY, MemoryDatapath, copy_examples, endpoint, scrape
from egressgw.agent import Agent, AgentConfig, AgentHTTPServer, ListenAddress
from test_alerts import run_promtool

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = PROMETHEUS / "egressgw-fleet-rules.yaml"
RULES_TEST = PROMETHEUS / "egressgw-fleet-rules.test.yaml"


def test_fleet_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = run_promtool("check", "rules", RULES, cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = run_promtool("test", "rules", RULES_TEST.name, cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize(
    ("original", "changed"),
    [
        ("topk by (node) (1,", "topk by (family) (1,"),
        ("topk(1, egressgw:", "bottomk(1, egressgw:"),
        ("ratio > 0.8\n", "ratio > 0.95\n"),
        ("/ on (node) group_left ()", "/ on (node) group_left () 2 *"),
        ("sum by (node) (increase", "sum by (reason) (increase"),
    ],
    ids=["per-node", "fleet-worst", "threshold", "ratio", "failures-by-node"],
)
def test_fleet_unit_tests_catch_a_changed_rule(tmp_path: Path, original: str, changed: str) -> None:
    text = RULES.read_text()
    assert text.count(original) == 1, original
    (tmp_path / RULES.name).write_text(text.replace(original, changed))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = run_promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout


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
            "fleet:egressgw_nat_endpoint_connections:top10"} <= used
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard_query_{i}", "expr": e.replace("$node", ".*")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    checked = run_promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    picker = {v["name"]: v for v in dashboard["templating"]["list"]}["node"]
    assert picker["definition"] == "label_values(egressgw_agent_info, node)"
