"""deploy/kubernetes: every manifest validated against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), the PrometheusRule's rules with
promtool, the ServiceMonitor turned into the scrape config the Prometheus Operator would
generate and checked with promtool, and what ties the objects together."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from egressgw.agent.endpoints import DEFAULT_PORT
from egressgw.policy import load_policies
from egressgw.policy.kubernetes import load_inventories
from test_alerts import run_promtool

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.31.0"


def objects() -> list[dict]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return found


def by_kind(kind: str) -> dict:
    [found] = [o for o in objects() if o["kind"] == kind]
    return found


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("kind", ["Namespace", "ServiceAccount", "DaemonSet", "Service"])
def test_core_objects_follow_the_kubernetes_schema(kind):
    kubernetes_validate.validate(by_kind(kind), KUBERNETES_VERSION, strict=True)


def test_configmaps_follow_the_schema_and_hold_loadable_inputs(tmp_path):
    maps = {o["metadata"]["name"]: o for o in objects() if o["kind"] == "ConfigMap"}
    for config_map in maps.values():
        kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    (tmp_path / "policies.yaml").write_text(maps["egressgw-policies"]["data"]["policies.yaml"])
    (tmp_path / "inventory.yaml").write_text(
        maps["egressgw-inventory"]["data"]["inventory.yaml"])
    assert load_policies(tmp_path / "policies.yaml") == []
    assert list(load_inventories([tmp_path / "inventory.yaml"]).nodes()) == []


def test_the_schema_check_is_sharp():
    daemonset = by_kind("DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def test_daemonset_runs_the_agent_on_gateway_nodes_with_only_net_admin():
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["nodeSelector"]["egress-gateway"] == "true"
    [container] = pod["containers"]
    capabilities = container["securityContext"]["capabilities"]
    assert capabilities == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["ports"][0]["containerPort"] == DEFAULT_PORT
    assert f"--listen=$(NODE_IP):{DEFAULT_PORT}" in container["args"]
    assert "--node=$(NODE_NAME)" in container["args"]
    # The agent reads files only: no API access, so no token and no RBAC objects.
    assert pod["automountServiceAccountToken"] is False
    assert not [o for o in objects() if o["kind"] in ("Role", "ClusterRole")]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert "--policies=" + mounts["policies"] in container["args"]
    assert f"--inventory={mounts['inventory']}/inventory.yaml" in container["args"]


def test_no_cilium_port_is_used():
    # Cilium's Helm chart (values.yaml, v1.16-v1.18): agent 9962, operator 9963,
    # cilium-envoy 9964, Hubble 9965, hubble-relay 9966, Hubble 4244/4245, health 9879...
    cilium = {4244, 4245, 4250, 9878, 9879, 9880, 9881, 9890, 9891, 9893, 9901,
              9962, 9963, 9964, 9965, 9966}
    assert DEFAULT_PORT not in cilium
    assert by_kind("Service")["spec"]["ports"][0]["port"] == DEFAULT_PORT


def test_service_and_service_monitor_select_the_agent_pods():
    labels = by_kind("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = by_kind("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_service_monitor_becomes_a_valid_scrape_config_that_labels_up_by_node(tmp_path):
    """The scrape config the Prometheus Operator generates from it (honor_labels, the
    relabellings as written) passes promtool check config."""
    endpoint = by_kind("ServiceMonitor")["spec"]["endpoints"][0]
    relabel = [{"source_labels": r.get("sourceLabels", []), "target_label": r["targetLabel"],
                "action": r["action"], **({"replacement": r["replacement"]}
                                          if "replacement" in r else {})}
               for r in endpoint["relabelings"]]
    assert {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node",
            "action": "replace"} in relabel
    config = {"scrape_configs": [{
        "job_name": "serviceMonitor/egressgw/egressgw-agent/0",
        "honor_labels": endpoint["honorLabels"],
        "metrics_path": endpoint["path"],
        "scrape_interval": endpoint["interval"],
        # Debian's Prometheus is built without Kubernetes discovery: a static target
        # stands in (the relabellings are what is checked).
        "static_configs": [{"targets": [f"192.0.2.1:{DEFAULT_PORT}"]}],
        "relabel_configs": relabel,
    }]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert endpoint["honorLabels"] is True


def test_prometheus_rule_carries_the_fleet_rules_and_promtool_accepts_them(tmp_path):
    rule = by_kind("PrometheusRule")
    fleet = yaml.safe_load((DEPLOY / "prometheus" / "egressgw-fleet-rules.yaml").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "egressgw-rules.yaml").read_text())
    # The fleet groups, and the per-instance file's agent health alerts.
    agent = [g for g in rules["groups"] if g["name"] == "egressgw-agent"]
    assert rule["spec"]["groups"] == fleet["groups"] + agent
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    checked = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
