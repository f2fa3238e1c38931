"""A fleet for real: two gateways (two labs, each with its own gateway namespace and
agent on the kernel datapath, real connections) scraped by Debian's Prometheus, whose
HTTP API must give the fleet figures of deploy/prometheus/egressgw-fleet-rules.yaml and
fire its alerts for the right node and tuple.

Prometheus runs in a namespace of its own, linked to each gateway namespace by a veth pair
(2001:db8:ff0N::/64), so nothing listens or routes in the host's namespace. The expected
figures come from the connections the test holds: 64 on gateway A (its tuple has 64 NAT
ports, --node-port-range 30000,65471), 20 on gateway B.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_support import AgentProcess, poll_until
from egressgw.datapath.kernel.netns import call_in
from egressgw.lab import Lab
from gateway_files import gateway_files
from netns import bare_netns, built_lab, run_in, unique_name

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
FLEET_RULES = REPO / "deploy" / "prometheus" / "egressgw-fleet-rules.yaml"
SERVER4 = "198.51.100.10"
NODE_PORTS = "30000,65471"  # 64 NAT ports per tuple
PROMETHEUS_PORT = 9090  # inside the monitoring namespace only
HELD_A, HELD_B = 64, 20
WARNING = next(float(rule["expr"].split(">")[-1])
               for group in yaml.safe_load(FLEET_RULES.read_text())["groups"]
               for rule in group["rules"] if rule.get("alert") == "EgressgwTupleRefusalsExpected")


def prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        reason = "the prometheus binary is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the fleet test, but {reason}")
        pytest.skip(f"{reason}; CI installs it")
    return path


def write_lab_files(directory: Path, lab: Lab) -> tuple[Path, Path]:
    """The gateway's files (gateway_files.py): the lab's first pod leaves as its first
    egress IP, on the lab's gateway node."""
    t = lab.topology
    directory.mkdir()
    egress = str(t.egress4[0])
    return gateway_files(directory, node=t.gateway_node, egress_ip=egress,
                         egress_addresses=[egress], pod_ip=str(t.pods4[0]))


@contextmanager
def linked(monitor_ns: str, gateway_ns: str, index: int) -> Iterator[str]:
    """A veth pair monitor <-> gateway; yields the gateway side's address."""
    mine, theirs = unique_name("m")[:15], unique_name("g")[:15]
    subprocess.run(["ip", "link", "add", mine, "netns", monitor_ns, "type", "veth",
                    "peer", "name", theirs, "netns", gateway_ns], check=True)
    try:
        for ns, dev, host in ((monitor_ns, mine, 1), (gateway_ns, theirs, 2)):
            run_in(ns, ["ip", "addr", "add", f"2001:db8:ff0{index}::{host}/64", "dev", dev,
                        "nodad"])
            run_in(ns, ["ip", "link", "set", dev, "up"])
        yield f"2001:db8:ff0{index}::2"
    finally:
        run_in(monitor_ns, ["ip", "link", "del", mine], check=False)


def start_agent(lab: Lab, files: tuple[Path, Path], address: str) -> AgentProcess:
    policy, inventory = files
    agent = AgentProcess(
        ["--policies", str(policy), "--inventory", str(inventory),
         "--node", lab.topology.gateway_node, "--node-port-range", NODE_PORTS,
         "--nat-map-stats-interval", "1s", "--poll-interval", "0.2s",
         "--listen", f"[{address}]:0"],
        argv_prefix=["ip", "netns", "exec", lab.topology.gateway_ns],
    )
    agent.wait_for_log("applied ")
    return agent


def prometheus_config(directory: Path, targets: list[str]) -> Path:
    """Scrape every second; the fleet rules with their `for:` cut to 0s so alerts fire
    within the test (promtool's unit tests check the real durations)."""
    rules = yaml.safe_load(FLEET_RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules))
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{
            "job_name": "egressgw-agent",
            "honor_labels": True,
            "static_configs": [{"targets": targets}],
        }],
    }))
    return config


class PrometheusAPI:
    """Queries to a Prometheus listening inside ``netns``."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.base = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/"

    def get(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")

        def fetch() -> Any:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)

        body = call_in(self.netns, fetch)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("query", query=expr)["result"])

    def ready(self) -> bool:
        try:
            targets = self.get("targets")["activeTargets"]
        except OSError:
            return False
        return len(targets) == 2 and all(t["health"] == "up" for t in targets)


@contextmanager
def running_prometheus(netns: str, config: Path) -> Iterator[PrometheusAPI]:
    data = config.parent / "data"
    log = (config.parent / "prometheus.log").open("w")
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, prometheus(), f"--config.file={config}",
         f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=config.parent,
    )
    try:
        api = PrometheusAPI(netns)
        poll_until(lambda: True if api.ready() else None, timeout=60,
                   what="Prometheus to scrape both agents")
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def series(api: PrometheusAPI, expr: str) -> dict[str, tuple[dict[str, str], float]]:
    """``expr``'s instant vector by node."""
    return {s["metric"]["node"]: (s["metric"], float(s["value"][1])) for s in api.query(expr)}


def test_prometheus_sees_the_fleet_by_node_and_tuple() -> None:
    with ExitStack() as stack:
        lab_a = stack.enter_context(built_lab())
        lab_b = stack.enter_context(built_lab())
        monitor = stack.enter_context(bare_netns())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="egw-fleet-")))
        agents = []
        for index, lab in enumerate((lab_a, lab_b), start=1):
            address = stack.enter_context(linked(monitor, lab.topology.gateway_ns, index))
            stack.callback(AgentProcess.run_cleanup, ["ip", "netns", "exec",
                                                      lab.topology.gateway_ns])
            agent = start_agent(lab, write_lab_files(work / f"lab{index}", lab), address)
            stack.callback(agent.kill)
            agents.append(agent)
        targets = [agent.url.removeprefix("http://") for agent in agents]
        api = stack.enter_context(running_prometheus(monitor, prometheus_config(work, targets)))

        node_a, node_b = lab_a.topology.gateway_node, lab_b.topology.gateway_node
        egress_a, egress_b = lab_a.topology.egress4[0], lab_b.topology.egress4[0]
        held_a = stack.enter_context(
            lab_a.start_load(f"{SERVER4}:443", HELD_A, parallel=1, timeout=2))
        held_b = stack.enter_context(
            lab_b.start_load(f"{SERVER4}:443", HELD_B, parallel=1, timeout=2))
        assert held_a.result.succeeded == HELD_A and held_b.result.succeeded == HELD_B
        # Gateway A is full: more connections fail there (allocation failures on node A).
        # 2 s: each client retransmits its SYN once, which is how the kernel datapath
        # sees a failed attempt (docs/kernel-datapath.md, "Counting failures").
        assert lab_a.load(f"{SERVER4}:443", 3, parallel=3, timeout=2).succeeded == 0

        def worst_per_node() -> dict[str, tuple[dict[str, str], float]] | None:
            found = series(api, "node:egressgw_nat_endpoint_saturation:max")
            expected = {node_a: HELD_A / 64, node_b: HELD_B / 64}
            return found if {n: v for n, (_, v) in found.items()} == expected else None

        worst = poll_until(worst_per_node, timeout=60, what="the worst tuple per gateway")
        tuple_labels = {"family": "ipv4", "proto": "TCP", "remote_addr": f"{SERVER4}:443"}
        assert worst[node_a][0] | tuple_labels == worst[node_a][0]
        assert worst[node_a][0]["egress_ip"] == egress_a
        assert worst[node_b][0]["egress_ip"] == egress_b

        fleet = series(api, "fleet:egressgw_nat_endpoint_saturation:max")
        assert list(fleet) == [node_a] and fleet[node_a][1] == 1.0
        assert fleet[node_a][0]["egress_ip"] == egress_a

        top = series(api, "fleet:egressgw_nat_endpoint_connections:top10")
        assert {n: v for n, (_, v) in top.items()} == {node_a: HELD_A, node_b: HELD_B}

        # The shipped warning is 50% (Cilium 1.16 defaults): A's 64/64 is past it, B's
        # 20/64 (31%) is not.
        assert WARNING == 0.5
        [near] = api.query("fleet:egressgw_nodes_refusals_expected:count")
        assert float(near["value"][1]) == 1.0

        def alerts() -> list[dict[str, Any]] | None:
            firing = [a for a in api.get("alerts")["alerts"] if a["state"] == "firing"]
            names = {a["labels"]["alertname"] for a in firing}
            wanted = {"EgressgwTupleRefusalsExpected", "EgressgwNodeNatAllocationFailures"}
            return firing if wanted <= names else None

        firing = poll_until(alerts, timeout=60, what="the fleet alerts to fire")
        by_name: dict[str, list[dict[str, Any]]] = {}
        for alert in firing:
            by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
        tuple_a = {"node": node_a, "egress_ip": egress_a, "remote_addr": f"{SERVER4}:443",
                   "proto": "TCP", "family": "ipv4"}
        [warning] = by_name["EgressgwTupleRefusalsExpected"]
        assert warning["labels"].items() >= tuple_a.items()
        # The page for the failures counted on A names A and its full tuple, and how many
        # attempts failed (the 3 clients', each once however often it retransmitted).
        [critical] = by_name["EgressgwNodeNatAllocationFailures"]
        assert critical["labels"].items() >= tuple_a.items()
        assert critical["labels"]["severity"] == "critical"
        assert float(critical["value"]) >= 1
        assert f"through gateway {node_a} got no NAT source port" in (
            critical["annotations"]["description"])
        assert f"is {egress_a} -> {SERVER4}:443 (TCP)" in critical["annotations"]["description"]
        time.sleep(0)  # the held connections close when the stack unwinds
