"""The lab: topology (pure), building and removing namespaces, traffic, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egressgw.errors import InputError
from egressgw.lab import Lab, LabSpec, Topology, lab_rules, remove_lab
from egressgw.lab.topology import EGRESS_NET4, POD_NET6, SERVER_NET4
from egressgw.rules import RuleKind
from netns import built_lab, lab, unique_name  # noqa: F401  (lab: module fixture)

# -- pure --------------------------------------------------------------------------------


def test_topology_names_and_addresses() -> None:
    t = Topology.of(LabSpec("demo", pods=3, egress_ips=2, servers=1))
    assert t.namespaces == ["egw-demo-client", "egw-demo-gw", "egw-demo-server"]
    assert t.pods4 == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    assert t.pods6 == ["2001:db8:1::10", "2001:db8:1::11", "2001:db8:1::12"]
    assert t.egress4 == ["203.0.113.10", "203.0.113.11"]
    assert t.servers6 == ["2001:db8:100::10"]
    assert Topology.from_json(t.to_json(), source="x") == t


@pytest.mark.parametrize("name", ["", "UPPER", "has space", "-lead", "x" * 40, "a/b"])
def test_bad_lab_names_are_rejected(name: str) -> None:
    with pytest.raises(InputError, match="--name"):
        LabSpec(name)


def test_state_file_that_is_not_json_names_the_file() -> None:
    with pytest.raises(InputError, match=r"^/x/lab.json: not a lab state file"):
        Topology.from_json("{", source="/x/lab.json")


def test_lab_rules_spread_pods_over_egress_ips_per_family() -> None:
    t = Topology.of(LabSpec("demo", pods=3))
    rules = lab_rules(t, ["203.0.113.10", "203.0.113.11", "2001:db8:203::10"],
                      excluded=["198.51.100.128/25"])
    masq = {(str(r.source_ip), str(r.egress_ip)) for r in rules if r.kind is RuleKind.MASQUERADE}
    assert masq == {
        ("192.0.2.10", "203.0.113.10"), ("192.0.2.11", "203.0.113.11"),
        ("192.0.2.12", "203.0.113.10"), ("2001:db8:1::10", "2001:db8:203::10"),
        ("2001:db8:1::11", "2001:db8:203::10"), ("2001:db8:1::12", "2001:db8:203::10"),
    }
    excluded = [r for r in rules if r.kind is RuleKind.EXCLUDED]
    assert {str(r.destination) for r in excluded} == {"198.51.100.128/25"}
    assert len(excluded) == 3  # the IPv4 pods only
    assert all(r.gateway_node == t.gateway_node for r in rules if r.kind is RuleKind.MASQUERADE)


def test_no_gateway_rules_drop_every_pod() -> None:
    t = Topology.of(LabSpec("demo", pods=2))
    rules = lab_rules(t, [], no_gateway=True)
    assert {r.kind for r in rules} == {RuleKind.NO_GATEWAY}
    assert len(rules) == 4


# -- real namespaces -----------------------------------------------------------------------


@pytest.mark.kernel
def test_lab_without_rules_routes_pods_to_servers(lab: Lab) -> None:  # noqa: F811
    t = lab.topology
    tcp = lab.load(f"{t.servers4[0]}:80", 3)
    assert (tcp.succeeded, tcp.seen_as) == (3, {t.pods4[0]: 3})
    udp = lab.load(f"[{t.servers6[1]}]:53", 2, proto="udp", pod=t.pods6[2])
    assert udp.seen_as == {t.pods6[2]: 2}
    assert lab.load(t.servers4[1], 2, proto="icmp").succeeded == 2


@pytest.mark.kernel
def test_load_refuses_targets_outside_the_lab(lab: Lab) -> None:  # noqa: F811
    with pytest.raises(InputError, match="not a lab server address"):
        lab.load("192.0.2.99:80", 1)
    with pytest.raises(InputError, match="tcp needs a port"):
        lab.load(str(SERVER_NET4.network_address + 10), 1)


@pytest.mark.kernel
def test_servers_hold_a_thousand_connections(lab: Lab) -> None:  # noqa: F811
    with lab.start_load(f"{lab.topology.servers4[0]}:8080", 1000, parallel=500) as held:
        assert held.result.succeeded == 1000
        assert held.result.failed == 0


@pytest.mark.kernel
def test_status_reports_namespaces_and_server(lab: Lab) -> None:  # noqa: F811
    status = Lab.find(lab.topology.name).status()
    assert all(status["namespaces"].values())  # type: ignore[union-attr]
    assert status["server"]["running"] is True  # type: ignore[index]


@pytest.mark.kernel
def test_down_removes_everything_even_with_the_server_killed() -> None:
    with built_lab(pods=1, egress_ips=1, servers=1) as built:
        t = built.topology
        assert t.server_pid is not None
        os.kill(t.server_pid, 9)
        built.down()
        assert not any(Path("/run/netns", ns).exists() for ns in t.namespaces)
        assert not (built.state_dir / f"{t.name}.json").exists()
        with pytest.raises(InputError, match="no lab named"):
            Lab.find(t.name)


@pytest.mark.kernel
def test_a_second_lab_of_the_same_name_is_refused(lab: Lab) -> None:  # noqa: F811
    with pytest.raises(InputError, match="already exists"):
        Lab.up(LabSpec(lab.topology.name))
    assert Lab.find(lab.topology.name).status()["server"]["running"]  # type: ignore[index]


@pytest.mark.kernel
def test_cli_up_apply_load_nat_stats_down() -> None:
    name = unique_name()

    def egressgw(*args: str) -> subprocess.CompletedProcess[str]:
        main = "import sys; from egressgw.cli import main; main(sys.argv[1:])"
        return subprocess.run([sys.executable, "-c", main, *args],
                              capture_output=True, text=True, timeout=120, check=False)

    try:
        up = egressgw("lab", "up", "--name", name, "--pods", "2")
        assert up.returncode == 0, up.stderr
        assert f"egw-{name}-gw" in up.stdout
        applied = egressgw("lab", "apply", "--name", name, "--node-port-range", "30000,65471")
        assert applied.returncode == 0, applied.stderr
        loaded = egressgw("lab", "load", "--name", name, "--to", "198.51.100.10:443",
                          "--connections", "66", "--parallel", "1", "--timeout", "0.5")
        assert "66 attempted, 64 succeeded, 2 failed" in loaded.stdout
        assert f"{EGRESS_NET4.network_address + 10} x64" in loaded.stdout
        stats = egressgw("lab", "nat-stats", "--name", name, "--node-port-range", "30000,65471")
        assert stats.returncode == 0, stats.stderr
        assert "ipv4         TCP     203.0.113.10   198.51.100.10:443   64" in stats.stdout
        # The 64 connections were closed: their TIME_WAIT entries are listed and counted,
        # but the kernel takes their ports over, so none blocks.
        assert ("saturation ipv4: 0.00% (0/64; top tuple 64 entries, 64 of them the kernel "
                "can take over)") in stats.stdout
        assert "dropped packets: conntrack insert_failed 2," in stats.stdout
        status = egressgw("lab", "status", "--name", name, "-o", "json")
        assert json.loads(status.stdout)["pods"][2].startswith(str(POD_NET6.network_address)[:-1])
        bad = egressgw("lab", "load", "--name", name, "--to", "8.8.8.8:53")
        assert bad.returncode == 2 and "not a lab server address" in bad.stderr
    finally:
        down = egressgw("lab", "down", "--name", name)
        remove_lab(name)
    assert down.returncode == 0
    assert egressgw("lab", "status", "--name", name).returncode == 2
