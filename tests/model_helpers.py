"""Builders shared by the model datapath tests."""

from __future__ import annotations

import ipaddress

from egressgw.config import NodePortRange
from egressgw.datapath.model import ModelConfig, ModelDatapath
from egressgw.datapath.model.compiled import CompiledModel
from egressgw.datapath.model.invariants import check
from egressgw.net import Endpoint, FiveTuple, IPAddress, Proto

EGRESS = ipaddress.ip_address("192.0.2.10")
REMOTE = ipaddress.ip_address("203.0.113.5")
EGRESS6 = ipaddress.ip_address("2001:db8::10")
REMOTE6 = ipaddress.ip_address("2001:db8:1::5")

# NAT ports 65472..65535: the clamp modulus is 63 and a collision steps by
# (65472 + 1) % 63 = 16, coprime to 63, so the walk visits all 63 ports it can reach.
SMALL_RANGE = NodePortRange(30000, 65471)
SMALL_REACHABLE = 63


def pod(i: int) -> IPAddress:
    """A distinct pod address per i (198.51.100.0/24 and beyond, test-net only)."""
    return ipaddress.ip_address(int(ipaddress.ip_address("198.51.100.0")) + i)


def tcp(i: int, sport: int = 40000, remote: IPAddress = REMOTE, dport: int = 443) -> FiveTuple:
    return FiveTuple(Proto.TCP, Endpoint(pod(i), sport), Endpoint(remote, dport))


def small_config(**overrides: object) -> ModelConfig:
    settings: dict[str, object] = {"node_port_range": SMALL_RANGE, "bpf_nat_global_max": 1024}
    settings.update(overrides)
    return ModelConfig(**settings)  # type: ignore[arg-type]


def assert_consistent(dp: ModelDatapath) -> None:
    """The compiled engine's arrays pass every invariant (no-op for the Python engines)."""
    engine = dp.engine
    if isinstance(engine, CompiledModel):
        check(engine.state)
