"""TIME_WAIT entries in nf_nat's search, in the real kernel (root, network namespaces).

The lab gateway SNATs to 65280-65535 (256 ports). Of them, k are held by ESTABLISHED
conntrack entries (ctnetlink, from another address) and w by TIME_WAIT entries of real
connections (the pod binds the port, which the gateway keeps, and closes with FIN; the
client namespace keeps no TIME_WAIT sockets, net.ipv4.tcp_max_tw_buckets = 0, so the
port can be bound again). Each probe is a new connection from the pod's ephemeral port;
after it the arrangement is put back (its entry deleted, a TIME_WAIT entry it took over
made again), so every probe meets the same k, w and free ports. (The pod closes with
shutdown and waits for the server's FIN: an orphaned FIN_WAIT2 socket that finds no
TIME_WAIT bucket would answer that FIN with RST, leaving the entry in CLOSE.)

Three readings of a TIME_WAIT port give three predictions for the same arrangement,
each computed from the arrangement (``nf_refused_share``):
- the model's, Linux 6.18's ``nf_nat_used_tuple_harder``: taken, except in the last 32
  attempts of a round, where it is taken over when the new SYN's sequence number is
  past the old one's;
- "free": a closed connection gives its port back at once (what the steady refusal
  curve assumed before it had TIME_WAIT);
- "taken": a TIME_WAIT entry blocks its port for its 120 s.
The kernel's refusals (``conntrack -S`` insert_failed, which the client's timeouts must
agree with) must lie in the model's 99.99% binomial band and outside the others'.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest

from egressgw.config import NodePortRange
from egressgw.datapath.kernel.ctfill import SnatEntry, fill, forget
from egressgw.datapath.kernel.netns import call_in
from egressgw.lab import Lab, lab_rules
from egressgw.limits import NatPortRange
from egressgw.net import Proto
from egressgw.sim import refusal_kernel
from netns import built_lab, run_in
from test_refusal_netfilter_kernel import binomial_band

pytestmark = pytest.mark.kernel

SERVER_PORT = 443
NODE_PORTS = NodePortRange(30000, 65279)
RANGE = NatPortRange(65280, 65535)
CONNECT_TIMEOUT = 0.3  # the SYN is retransmitted after 1 s; the lab answers in ms
HOLDER = ipaddress.ip_address("192.0.2.200")


def insert_failed(lab: Lab) -> int:
    stats = run_in(lab.topology.gateway_ns, ["conntrack", "-S"]).stdout
    return sum(int(n) for n in re.findall(r"insert_failed=(\d+)", stats))


@pytest.fixture(scope="module")
def gateway() -> Iterator[Lab]:
    with built_lab() as lab:
        run_in(lab.topology.client_ns, ["sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"])
        datapath = lab.datapath(NODE_PORTS)
        datapath.apply(lab_rules(lab.topology, [lab.topology.egress4[0]]))
        try:
            yield lab
        finally:
            lab.flush_conntrack()
            datapath.cleanup()


class Arrangement:
    """k established and w TIME_WAIT entries on the range, towards one server port."""

    def __init__(self, lab: Lab, k: int, w: int, seed: int) -> None:
        self.lab = lab
        t = lab.topology
        self.server = ipaddress.ip_address(t.servers4[0])
        self.pod = ipaddress.ip_address(t.pods4[0])
        ports = np.random.default_rng(seed).permutation(np.arange(RANGE.min, RANGE.max + 1))
        self.held = [int(p) for p in ports[:k]]
        self.time_wait = {int(p) for p in ports[k:k + w]}
        self.remade = 0
        assert fill([self.holder(p) for p in self.held], netns=t.gateway_ns) == 0
        for port in sorted(self.time_wait):
            self.close_in_time_wait(port)

    def holder(self, port: int) -> SnatEntry:
        return SnatEntry(Proto.TCP, HOLDER, port - 40000, self.server, SERVER_PORT,
                         ipaddress.ip_address(self.lab.topology.egress4[0]), port)

    def state(self) -> np.ndarray:
        state = np.zeros(1 << 16, np.uint8)
        state[self.held] = refusal_kernel.NF_HELD
        state[sorted(self.time_wait)] = refusal_kernel.NF_TIME_WAIT
        return state

    def _socket(self) -> socket.socket:
        sock = call_in(self.lab.topology.client_ns,
                       lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.settimeout(CONNECT_TIMEOUT)
        return sock

    def close_in_time_wait(self, port: int) -> None:
        """A real connection from the pod's ``port`` (kept: it is free and in the range),
        closed with FIN both ways: the gateway's entry is in TIME_WAIT. Now and then the
        close ends in CLOSE (an RST crossed it); that entry is deleted and the
        connection made again (counted in ``remade``)."""
        for _ in range(5):
            with self._socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((str(self.pod), port))
                sock.settimeout(2.0)
                sock.connect((str(self.server), SERVER_PORT))
                assert int(sock.recv(64).split()[1]) == port
                # FIN first, then wait for the server's FIN before closing: an orphaned
                # FIN_WAIT2 socket with no TIME_WAIT bucket would answer it with RST.
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(64):
                    pass
            state = self._state_of(port)
            if state == "TIME_WAIT":
                return
            self.remade += 1
            assert forget([SnatEntry(Proto.TCP, self.pod, port, self.server, SERVER_PORT,
                                     None)], netns=self.lab.topology.gateway_ns) == 0, state
        raise AssertionError(f"port {port}: no TIME_WAIT entry after 5 connections")

    def _state_of(self, port: int) -> str:
        """The TCP state of the pod's entry from ``port``, once its close has settled."""
        state = ""
        for _ in range(50):
            out = run_in(self.lab.topology.gateway_ns, [
                "conntrack", "-L", "-p", "tcp", "--orig-src", str(self.pod),
                "--orig-port-src", str(port)]).stdout.split()
            state = out[3] if len(out) > 3 else ""
            if state in ("TIME_WAIT", "CLOSE"):
                return state
            time.sleep(0.02)
        return state

    def probe(self) -> int | None:
        """One new connection; the arrangement is put back after it. None: refused."""
        with self._socket() as sock:
            sock.bind((str(self.pod), 0))
            try:
                sock.connect((str(self.server), SERVER_PORT))
            except TimeoutError:
                return None
            port = int(sock.recv(64).split()[1])
            sport = sock.getsockname()[1]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert port not in self.held
        gateway = self.lab.topology.gateway_ns
        assert forget([SnatEntry(Proto.TCP, self.pod, sport, self.server, SERVER_PORT, None)],
                      netns=gateway) == 0
        if port in self.time_wait:  # taken over: its TIME_WAIT entry was ended
            self.close_in_time_wait(port)
        return port

    def remove(self) -> None:
        self.lab.flush_conntrack()


@pytest.mark.parametrize(("k", "w", "probes"), [(244, 12, 300), (240, 16, 300)])
def test_time_wait_ports_are_taken_over_only_late_in_a_round(
        gateway: Lab, k: int, w: int, probes: int) -> None:
    arrangement = Arrangement(gateway, k, w, seed=k)
    try:
        state = arrangement.state()
        as_free, as_taken = state.copy(), state.copy()
        as_free[as_free == refusal_kernel.NF_TIME_WAIT] = refusal_kernel.NF_FREE
        as_taken[as_taken == refusal_kernel.NF_TIME_WAIT] = refusal_kernel.NF_HELD
        refusal_kernel.seed(k)
        share = {name: refusal_kernel.nf_refused_share(s, RANGE.min, RANGE.max, 32768,
                                                       60999, 200_000)
                 for name, s in (("model", state), ("free", as_free), ("taken", as_taken))}
        before = insert_failed(gateway)
        started = time.monotonic()
        results = [arrangement.probe() for _ in range(probes)]
        # TIME_WAIT lasts 120 s; the arrangement must not have aged out meanwhile.
        assert time.monotonic() - started < 100
        counted = insert_failed(gateway) - before
        seen = sum(r is None for r in results)
        taken_over = sum(r in arrangement.time_wait for r in results if r is not None)
        remade = arrangement.remade
    finally:
        arrangement.remove()
    bands = {name: binomial_band(p, probes) for name, p in share.items()}
    print(f"{k} established + {w} TIME_WAIT of {RANGE.ports} ports: kernel refused {counted} "
          f"of {probes} ({taken_over} took a TIME_WAIT port over; {remade} TIME_WAIT entries "
          f"made again after an RST); predicted "
          + ", ".join(f"{name} {p:.4f} (band {bands[name][0]}..{bands[name][1]})"
                      for name, p in share.items()))
    assert counted == seen
    low, high = bands["model"]
    assert low <= counted <= high
    for other in ("free", "taken"):
        low, high = bands[other]
        assert not low <= counted <= high, other
