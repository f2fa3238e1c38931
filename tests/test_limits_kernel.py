"""Every command gives the same saturation for one real conntrack table (root, netns).

The agent runs the kernel datapath in the lab's gateway with --node-port-range
30000,65471: its nft rule hands out 65472-65535, 64 ports. 40 held connections make the
busiest tuple 40/64 = 62.50% in /metrics, `statedb nat-stats` (table and JSON),
`nat-stats` on the gateway's own `conntrack -L` (told the range either way), `forecast`
on two such dumps, and `plan`'s netfilter model.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from agent_support import AgentProcess, get_json, poll_until, sample_value, scrape
from egressgw.lab import Lab
from netns import lab, run_in  # noqa: F401  (module fixture)
from test_agent_kernel import SERVER4, clean, in_gateway, lab_files, start_agent  # noqa: F401

pytestmark = pytest.mark.kernel

HELD = 40
PORTS = 65535 - 65472 + 1
LINE = f"saturation ipv4: {HELD / PORTS:.2%} ({HELD}/{PORTS})"


def egressgw(netns: str, *args: str) -> tuple[str, str]:
    done = run_in(netns, [AgentProcess.executable(), *args])
    return done.stdout, done.stderr


@pytest.mark.usefixtures("clean")
def test_one_conntrack_table_one_saturation(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    gw = lab.topology.gateway_ns
    policies, inventory = lab_files(tmp_path, lab, egress_ip=lab.topology.egress4[0])
    agent = start_agent(lab, policies, inventory)
    try:
        with lab.start_load(f"{SERVER4}:443", HELD, parallel=1, timeout=2) as held:
            assert held.result.succeeded == HELD

            def counted() -> dict[str, object] | None:
                doc = in_gateway(lab, lambda: get_json(agent.url + "/v1/statedb/nat-stats"))
                return doc if doc["topCount"].get("ipv4") == HELD else None

            doc = poll_until(counted, what=f"nat-stats to count {HELD}")
            assert doc["divisor"] == PORTS and doc["saturation"]["ipv4"] == HELD / PORTS
            assert doc["limit"]["datapath"] == "netfilter"
            assert doc["limit"]["portRange"] == "65472-65535"

            samples = in_gateway(lab, lambda: scrape(agent.url))
            assert sample_value(samples, "egressgw_nat_endpoint_max_connection",
                                family="ipv4") == HELD / PORTS
            assert sample_value(samples, "egressgw_nat_endpoint_port_capacity") == PORTS

            _out, err = egressgw(gw, "statedb", "nat-stats", "--server", agent.url)
            assert LINE in err

            dump = tmp_path / "conntrack.txt"
            dump.write_text(run_in(gw, ["conntrack", "-L"]).stdout)
            for flags in (("--node-port-range", "30000,65471"),
                          ("--nat-port-range", "65472-65535")):
                _out, err = egressgw(gw, "nat-stats", "--from", str(dump), *flags)
                assert LINE in err, (flags, err)
                out, _err = egressgw(gw, "forecast", f"{dump}@0", f"{dump}@60", *flags,
                                     "-o", "json")
                assert json.loads(out)["limit"] == PORTS
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    finally:
        agent.kill()
    workload = Path(__file__).parents[1] / "src/egressgw/examples/workloads/seed-scenario.yaml"
    out, _err = egressgw(gw, "plan", str(workload), "--estimate-only", "--datapath-model",
                         "netfilter", "--node-port-range", "30000,65471")
    assert out.startswith(f"Limit: {PORTS} ports (netfilter: egressgw's nft rule for "
                          "--node-port-range 30000,65471) per tuple.")
