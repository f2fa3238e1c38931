"""Test helpers for the BPF datapath's kernel tests (a support module, not collected)."""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Sequence

import numpy as np

from egressgw.datapath.bpf import layout
from egressgw.datapath.bpf.natmap import monotonic_seconds
from egressgw.datapath.bpf.syscall import BpfMap
from egressgw.lab import Lab
from netns import popen_in, run_in

SERVER = "198.51.100.10"


# A client that holds connections and, when told, sends on them: it reports what the
# server saw at open time (its greeting) and whether each held connection still echoes.
CLIENT = r"""
import json, resource, socket, struct, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # hundreds of sockets
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
conns = []
def open_some(n):
    seen = []
    for _ in range(n):
        s = socket.socket(); s.settimeout(2); s.bind((src, 0))
        try:
            s.connect((dst, port)); greeting = s.recv(100).decode().split()
        except OSError as exc:
            s.close(); seen.append(None); continue
        conns.append(s); seen.append([s.getsockname()[1], int(greeting[1])])
    return seen
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "open":
        print(json.dumps(open_some(int(arg))), flush=True)
    elif cmd == "poke":
        out = []
        for s in conns[: int(arg)]:
            try:
                s.sendall(b"x"); out.append("ok" if s.recv(10) == b"x" else "closed")
            except ConnectionResetError:
                out.append("reset")
            except OSError as exc:
                out.append(type(exc).__name__)
        print(json.dumps(out), flush=True)
    elif cmd == "reset":
        # Close with RST, not FIN: nothing lingers retransmitting into the next test.
        for s in conns:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        conns.clear()
        print("[]", flush=True)
"""


def server_out_rsts(lab: Lab) -> int:
    """Resets the server's TCP stack sent (/proc/net/snmp Tcp: OutRsts)."""
    snmp = run_in(lab.topology.server_ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    header, values = [line.split() for line in snmp if line.startswith("Tcp:")]
    return int(values[header.index("OutRsts")])


class Client:
    def __init__(self, lab: Lab, port: int) -> None:
        t = lab.topology
        self.proc = popen_in(t.client_ns, [sys.executable, "-c", CLIENT, t.pods4[0], SERVER,
                                           str(port)])

    def ask(self, line: str) -> list[object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "client died"
        result = json.loads(answer)
        assert isinstance(result, list)
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask("reset")
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)




# One synthetic connection through the BPF datapath: the pod's address and port, the
# remote's, and the egress IP and NAT port it was given.
Connection = tuple[str, int, str, int, str, int]


def synthetic_connections(count: int, egress_ips: Sequence[str], remotes: Sequence[str],
                          remote_port: int = 443) -> list[Connection]:
    """``count`` TCP connections spread over the egress IPs x remotes, connection i to
    remote i % R behind egress (i // R) % E, with pod ports and NAT ports that never repeat
    within a tuple (up to E x R x 32768 connections)."""
    tuples = len(egress_ips) * len(remotes)
    assert count <= tuples * 32768
    return [(f"192.0.2.{20 + i // 40000}", 20000 + i % 40000,
             remotes[i % len(remotes)], remote_port,
             egress_ips[(i // len(remotes)) % len(egress_ips)], 32768 + (i // tuples) % 32768)
            for i in range(count)]


def fill_nat_map(nat_map: BpfMap, connections: Sequence[Connection]) -> None:
    """Each connection's OUT and IN entry (as the program writes them: Cilium's
    ipv4_ct_tuple -> ipv4_nat_entry, layout.py), with BPF_MAP_UPDATE_BATCH.

    Stamped as used just now with a reply seen, so no GC pass deletes them within 8000 s.
    """
    n = len(connections)
    keys = np.zeros(2 * n, layout.KEY4)
    values = np.zeros(2 * n, layout.VALUE4)

    def packed(ips: Sequence[str]) -> np.ndarray:
        return np.frombuffer(b"".join(ipaddress.IPv4Address(ip).packed for ip in ips), "V4")

    pod, remote, egress = (packed([c[k] for c in connections])  # type: ignore[misc]
                           for k in (0, 2, 4))
    pod_port = np.array([c[1] for c in connections])
    remote_port = np.array([c[3] for c in connections])
    nat_port = np.array([c[5] for c in connections])
    out, inn = keys[:n], keys[n:]
    out["daddr"], out["saddr"], out["dport"], out["sport"] = remote, pod, remote_port, pod_port
    out["nexthdr"], out["flags"] = 6, 0
    inn["daddr"], inn["saddr"], inn["dport"], inn["sport"] = egress, remote, nat_port, remote_port
    inn["nexthdr"], inn["flags"] = 6, layout.TUPLE_F_IN
    now = monotonic_seconds()
    values["created"], values["last_used"] = now, now
    values["needs_ct"], values["seen"] = 1, layout.SEEN_USED
    values["addr"][:n], values["port"][:n] = egress, nat_port
    values["addr"][n:], values["port"][n:] = pod, pod_port
    step = 65536
    for start in range(0, 2 * n, step):
        chunk = keys[start:start + step]
        nat_map.update_batch(chunk.tobytes(), values[start:start + step].tobytes(), len(chunk))
