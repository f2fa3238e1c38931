"""Test helpers for the BPF datapath's kernel tests (a support module, not collected)."""

from __future__ import annotations

import json
import sys

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


