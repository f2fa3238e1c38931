"""Fuzz targets: every reader of untrusted input, fed raw bytes, held to one contract.

The contract: a reader returns, or raises an :class:`EgressgwError` whose message is one
line of at most :data:`MAX_MESSAGE` characters. Any other exception (a traceback for
the user), a message with a newline or a long one is a finding. Hangs and memory are
bounded by the runners (Hypothesis's deadline in the normal test run; atheris's
-timeout and -rss_limit_mb in ``scripts/fuzz.py``).

The same targets serve both runners: ``tests/test_fuzz_readers.py`` (bounded, in every
test run) and ``scripts/fuzz.py`` (coverage-guided with atheris, on demand).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from egressgw.agent.client import check_server
from egressgw.agent.document import rows_from_document
from egressgw.agent.server import ListenAddress
from egressgw.config import NodePortRange, parse_duration
from egressgw.dumps import count_endpoints, iter_entries
from egressgw.dumps.takeover import takeover_counts
from egressgw.errors import EgressgwError
from egressgw.limits import NatPortRange
from egressgw.net import Endpoint, parse_cidr, parse_ip, parse_ip_interface
from egressgw.policy import load_inventory, load_policies
from egressgw.policy.kubernetes import load_inventories
from egressgw.sim.flows import AddressBook
from egressgw.sim.replay import ReplayFlows
from egressgw.sim.routing import EgressTable, Routes
from egressgw.sim.snapshots import load_snapshot, parse_time
from egressgw.sim.workload import load_workload

MAX_MESSAGE = 600  # the temporary directory's path is part of most messages
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "src" / "egressgw" / "examples"
_DIR = Path(tempfile.mkdtemp(prefix="egressgw-fuzz-"))


class Finding(AssertionError):
    """A reader broke the contract."""


def contract(call: Callable[[], object]) -> None:
    try:
        call()
    except EgressgwError as exc:
        message = str(exc)
        if "\n" in message or len(message) > MAX_MESSAGE:
            raise Finding(f"error message not one short line: {message[:300]!r}") from exc


def _file(name: str, data: bytes) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def policies(data: bytes) -> None:
    path = _file("policy.yaml", data)
    contract(lambda: load_policies(path))


def inventory(data: bytes) -> None:
    path = _file("inventory.yaml", data)
    contract(lambda: load_inventory(path))


def kubernetes(data: bytes) -> None:
    """kubectl get nodes,pods -o yaml output (and CiliumEndpoints) as an inventory."""
    path = _file("kubectl.yaml", data)
    contract(lambda: load_inventories([path]))


def workload(data: bytes) -> None:
    path = _file("workload.yaml", data)
    contract(lambda: load_workload(path))


def flows_csv(data: bytes) -> None:
    path = _file("flows.csv", data)
    egress = (parse_ip("10.1.0.0"),)
    contract(lambda: ReplayFlows.from_file(path, routes=Routes(EgressTable(), []),
                                           book=AddressBook(), egress_ips=egress))


def snapshot(data: bytes) -> None:
    path = _file("snapshot.txt", data)
    contract(lambda: load_snapshot(f"{path}@0"))


def nat_dump(data: bytes) -> None:
    """The bulk path nat-stats counts with, and the TIME_WAIT/CLOSE takeover count."""
    contract(lambda: count_endpoints(data, source="dump.txt"))
    contract(lambda: takeover_counts(data, source="dump.txt"))


def nat_entries(data: bytes) -> None:
    """The entry path: every field of every entry parsed."""
    contract(lambda: sum(1 for _ in iter_entries(data, source="dump.txt")))


def agent_answer(data: bytes) -> None:
    """What ``statedb nat-stats`` does with an answer (after fetch_json decoded it)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return  # fetch_json turns these into AgentError itself
    contract(lambda: rows_from_document(doc, "http://127.0.0.1:9964/v1/statedb/nat-stats"))


def flags(data: bytes) -> None:
    """Every flag and address parser, on the same text."""
    text = data.decode("utf-8", errors="surrogateescape")
    for parse in (NodePortRange.parse, NatPortRange.parse, ListenAddress.parse, check_server,
                  lambda t: parse_duration(t, field="--duration"),
                  lambda t: parse_time(t, source="--at")):
        contract(lambda parse=parse: parse(text))  # type: ignore[misc]
    for value_parser in (parse_ip, parse_cidr, parse_ip_interface, Endpoint.parse):
        try:
            value_parser(text)
        except ValueError as exc:  # the address parsers' documented failure
            if "\n" in str(exc) or len(str(exc)) > MAX_MESSAGE:
                raise Finding(f"address error not one short line: {str(exc)[:300]!r}") from exc


TARGETS: dict[str, Callable[[bytes], None]] = {
    "policies": policies,
    "inventory": inventory,
    "kubernetes": kubernetes,
    "workload": workload,
    "flows_csv": flows_csv,
    "snapshot": snapshot,
    "nat_dump": nat_dump,
    "nat_entries": nat_entries,
    "agent_answer": agent_answer,
    "flags": flags,
}

# Valid inputs each target's mutations start from.
SEEDS: dict[str, list[Path]] = {
    "policies": sorted((EXAMPLES / "policies").glob("*.yaml"))
    + sorted((ROOT / "tests" / "fixtures" / "policies" / "good").glob("*.yaml")),
    "inventory": [EXAMPLES / "inventory.yaml"],
    "kubernetes": sorted((EXAMPLES / "kubernetes").glob("*.yaml")),
    "workload": sorted((EXAMPLES / "workloads").glob("*.yaml")),
    "flows_csv": [EXAMPLES / "workloads" / "recorded-flows.csv"],
    "snapshot": [EXAMPLES / "seed-node-nat-list.txt"],
    "nat_dump": [EXAMPLES / "seed-node-nat-list.txt", EXAMPLES / "gateway-conntrack-L.txt"],
    "nat_entries": [EXAMPLES / "seed-node-nat-list.txt", EXAMPLES / "gateway-conntrack-L.txt"],
    "agent_answer": [],
    "flags": [],
}
SEED_TEXTS: dict[str, list[bytes]] = {
    "agent_answer": [json.dumps({"rows": [{
        "family": "ipv4", "proto": "TCP", "egressIP": "10.1.0.0", "remoteIP": "10.2.0.0",
        "remotePort": 8080, "remoteAddr": "10.2.0.0:8080", "count": 5, "rank": 1}]}).encode()],
    "flags": [b"30000,32767", b"127.0.0.1:9964", b"[::1]:9964", b"http://127.0.0.1:9964",
              b"1h30m", b"2024-05-01T12:00:00Z", b"198.51.100.0/24", b"2001:db8::1",
              b"[2001:db8::1]:443"],
    "snapshot": [b"# IPFamily Proto EgressIP RemoteAddr Count\n"
                 b"ipv4 TCP 10.1.0.0 10.2.0.0:8080 100\n",
                 json.dumps({"rows": [{"egressIP": "10.1.0.0", "proto": "TCP",
                                       "remoteIP": "10.2.0.0", "remotePort": 8080,
                                       "count": 3}], "updatedAt": 10,
                             "limit": {"datapath": "netfilter", "ports": 64512,
                                       "portRange": "1024-65535", "source": "x"}}).encode()],
}


def seeds(target: str) -> list[bytes]:
    return [path.read_bytes() for path in SEEDS[target]] + SEED_TEXTS.get(target, [])


# Tokens a mutation splices in: YAML structure, aliases, zones, huge and odd numbers,
# encodings, CSV and nft syntax.
HOSTILE = [
    b"&a ", b"*a", b"<<: ", b"%eth0", b"%x } ; flush ruleset", b"9" * 5000, b"1e308",
    b"-0.0", b".nan", b".inf", b"\xff", b"\x00", b"\r", b"\n", b"\n- ", b": ", b"{", b"}",
    b"[", b"]", b"'", b'"', b",", b"/33", b"::", b"2026-13-45", b"0x", "\u0661".encode(),
    b"!!python/object:os.system", b"? ", b"---\n", b"@", b" " * 64,
]
