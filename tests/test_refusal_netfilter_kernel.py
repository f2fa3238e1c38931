"""The netfilter refusal curve against the real kernel's nf_nat (root, network namespaces).

The lab's gateway SNATs to 65280-65535 (256 ports, egressgw's rule for
--node-port-range 30000,65279). Before each new connection, k ports drawn at random
from that range are held by ESTABLISHED conntrack entries to the same server port,
created over ctnetlink with their SNAT port (ctfill, as tests/test_takeover_kernel.py
fills a range); entries of ports leaving the set, and the previous connection's, are
deleted first.
So every new connection meets a fresh, uniformly random set of k taken ports, which is
what the exact curve averages over (one set alone can be far from it: two free ports far
apart are rarely both missed). The new connection comes from the lab client's ephemeral
port (outside the range) through the real nft rule. Refusals are the kernel's own count
(``conntrack -S`` insert_failed, which the client's timeouts must agree with) and must
lie in the 99.99% binomial band of the exact curve at k.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
import socket
import struct
from collections.abc import Iterator

import pytest

from egressgw.config import NodePortRange
from egressgw.datapath.kernel.ctfill import SnatEntry, fill, forget
from egressgw.datapath.kernel.netns import call_in
from egressgw.lab import Lab, lab_rules
from egressgw.limits import NatPortRange
from egressgw.net import Proto
from egressgw.sim.refusal import PortSearch, SourcePorts, uniform_curve
from netns import lab, run_in  # noqa: F401  (module fixture)

pytestmark = pytest.mark.kernel

SERVER4 = "198.51.100.10"
SERVER_PORT = 443
NODE_PORTS = NodePortRange(30000, 65279)
RANGE = NatPortRange(65280, 65535)
# A refused SYN is retransmitted after 1 s; a connection through the lab answers in
# milliseconds, so no answer within this is a refusal (checked against insert_failed).
CONNECT_TIMEOUT = 0.3


def insert_failed(lab: Lab) -> int:  # noqa: F811
    """The gateway's insert_failed counter, summed over CPUs."""
    stats = run_in(lab.topology.gateway_ns, ["conntrack", "-S"]).stdout
    return sum(int(n) for n in re.findall(r"insert_failed=(\d+)", stats))


def binomial_band(p: float, n: int, level: float = 0.9999) -> tuple[int, int]:
    """The central ``level`` interval of Binomial(n, p): counts outside it are rarer
    than (1 - level) / 2 on either side."""
    tail = (1 - level) / 2
    pmf = [math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(n + 1)]
    low, below = 0, 0.0
    while below + pmf[low] < tail:
        below += pmf[low]
        low += 1
    high, above = n, 0.0
    while above + pmf[high] < tail:
        above += pmf[high]
        high -= 1
    return low, high


@pytest.fixture
def gateway(lab: Lab) -> Iterator[Lab]:  # noqa: F811
    datapath = lab.datapath(NODE_PORTS)
    datapath.apply(lab_rules(lab.topology, [lab.topology.egress4[0]]))
    lab.flush_conntrack()
    try:
        yield lab
    finally:
        lab.flush_conntrack()
        datapath.cleanup()


def new_connection(lab: Lab, held: set[int]) -> int | None:  # noqa: F811
    """One connection from the client's pod: None if refused, else its source port (the
    connection is reset at once)."""
    t = lab.topology
    sock = call_in(t.client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with sock:
        sock.bind((t.pods4[0], 0))
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((SERVER4, SERVER_PORT))
        except TimeoutError:
            return None
        # The lab server's greeting: "<ip> <port>", the port the gateway gave us.
        nat_port = int(sock.recv(64).split()[1])
        assert RANGE.min <= nat_port <= RANGE.max and nat_port not in held, nat_port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return int(sock.getsockname()[1])


def measure(lab: Lab, k: int, attempts: int, seed: int) -> tuple[int, int]:  # noqa: F811
    """(refusals the kernel counted, refusals the client saw) of ``attempts`` new
    connections, each with a fresh random set of k ports of the range held."""
    rng = random.Random(seed)
    t = lab.topology
    egress = ipaddress.ip_address(t.egress4[0])
    server = ipaddress.ip_address(SERVER4)

    def holding(port: int) -> SnatEntry:
        """The entry that holds ``port``: from another pod, one source port per port."""
        return SnatEntry(Proto.TCP, ipaddress.ip_address("192.0.2.200"), port - 40000,
                         server, SERVER_PORT, egress, port)

    held: set[int] = set()
    before = insert_failed(lab)
    seen = 0
    try:
        for _ in range(attempts):
            chosen = set(rng.sample(range(RANGE.min, RANGE.max + 1), k))
            assert forget([holding(p) for p in held - chosen], netns=t.gateway_ns) == 0
            assert fill([holding(p) for p in chosen - held], netns=t.gateway_ns,
                        timeout=600) == 0
            held = chosen
            sport = new_connection(lab, held)
            if sport is None:
                seen += 1
                continue
            pod = ipaddress.ip_address(t.pods4[0])
            assert forget([SnatEntry(Proto.TCP, pod, sport, server, SERVER_PORT, None)],
                          netns=t.gateway_ns) == 0
        return insert_failed(lab) - before, seen
    finally:
        forget([holding(p) for p in held], netns=t.gateway_ns)


@pytest.mark.parametrize(("k", "attempts"), [(230, 100), (248, 150), (252, 250), (254, 250),
                                             (255, 150)])
def test_refusals_lie_in_the_curves_band(gateway: Lab, k: int, attempts: int) -> None:
    search = PortSearch.netfilter(RANGE)
    # The new connections' ports are the client's ephemeral ones, all outside the range.
    p = float(uniform_curve(search, SourcePorts(), RANGE.ports, held=[k]).refused[0])
    low, high = binomial_band(p, attempts)
    counted, seen = measure(gateway, k, attempts, seed=k)
    print(f"{k}/{RANGE.ports} ports held ({k / RANGE.ports:.1%}): kernel refused {counted} "
          f"of {attempts}; curve {p:.3g} (expected {p * attempts:.1f}, 99.99% band "
          f"{low}..{high})")
    assert counted == seen
    assert low <= counted <= high
