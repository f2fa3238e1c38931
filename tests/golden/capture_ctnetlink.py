"""Capture the bytes a real kernel sends for ctnetlink dumps, for root-free tests.

Creates a network namespace, fills its conntrack table over ctnetlink with a seeded mix
of entries (TCP, UDP, ICMP and ICMPv6, both families, source-NATed or not; created with a
NAT request, so the kernel sets IPS_SRC_NAT and the reply tuple itself), adds SCTP, GRE
and UDP-Lite entries with ``conntrack -I``, then sends the same dump requests
``ConntrackReader`` sends (per family, with and without the IPS_SRC_NAT status filter,
and the per-CPU statistics) on a plain netlink socket and records every datagram the
kernel answers with, byte for byte. Also records the entries created (the ground truth
for the counts) and ``conntrack -S`` (the ground truth for the statistics).

Writes ctnetlink-dumps.json (datagrams in base64). Needs root and conntrack. The
namespace is deleted again, also on failure.

    sudo .venv/bin/python tests/golden/capture_ctnetlink.py tests/golden
"""

from __future__ import annotations

import base64
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
from typing import Any

from egressgw.datapath.kernel import conntrack as ct
from egressgw.datapath.kernel.ctfill import SnatEntry, fill
from egressgw.datapath.kernel.netns import call_in
from egressgw.net import Proto, parse_ip

SEED = 20261205
OTHER_PROTOCOLS = [
    ("-p", "sctp", "--sport", "5000", "--dport", "38412", "--state", "ESTABLISHED",
     "--orig-vtag", "1", "--reply-vtag", "2"),
    ("-p", "gre", "--srckey", "1", "--dstkey", "2"),
    ("-p", "udplite", "--sport", "5001", "--dport", "5005"),
]


def entries(seed: int = SEED, count: int = 160) -> list[SnatEntry]:
    """A seeded mix on a few tuples: ~20% not source-NATed, ~40% IPv6."""
    rng = random.Random(seed)
    made: list[SnatEntry] = []
    used: set[tuple[object, ...]] = set()
    while len(made) < count:
        v6 = rng.random() < 0.4
        proto = rng.choice([Proto.TCP, Proto.UDP, Proto.ICMPV6 if v6 else Proto.ICMP])
        pod = parse_ip(f"2001:db8:1::{rng.randint(16, 40):x}" if v6
                       else f"192.0.2.{rng.randint(10, 40)}")
        remote = parse_ip(f"2001:db8:100::{rng.randint(16, 18):x}" if v6
                          else f"198.51.100.{rng.randint(10, 12)}")
        egress = None if rng.random() < 0.2 else parse_ip(
            f"2001:db8:203::{rng.randint(16, 17):x}" if v6 else f"203.0.113.{rng.randint(10, 11)}")
        sport = rng.randint(1024, 60000)
        dport = rng.choice([53, 80, 443]) if proto.has_ports else 0
        if (proto, pod, sport, remote, dport) in used:
            continue
        used.add((proto, pod, sport, remote, dport))
        made.append(SnatEntry(proto, pod, sport, remote, dport, egress))
    return made


def _record(sock: socket.socket, msg_type: int, family: int, seq: int,
            attrs: bytes) -> list[bytes]:
    """Send one dump request and return every datagram of the answer, as received."""
    sock.send(ct._request(msg_type, family, seq, ct.NLM_F_DUMP, attrs))
    datagrams: list[bytes] = []
    while True:
        data = sock.recv(1 << 20)
        datagrams.append(data)
        buffer = bytearray(data)
        if ct._walk(buffer, 0, len(buffer), seq, []):
            return datagrams


def capture() -> dict[str, Any]:
    name = f"egw-ctcap-{os.getpid()}{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        created = entries()
        refused = fill(created, netns=name)
        if refused:
            raise RuntimeError(f"the kernel refused {refused} entries")
        for other in OTHER_PROTOCOLS:
            subprocess.run(["ip", "netns", "exec", name, "conntrack", "-I", *other,
                            "-s", "192.0.2.50", "-d", "198.51.100.10", "-t", "3600",
                            "--src-nat", "203.0.113.10"], check=True, capture_output=True)
        sock = call_in(name, ct.ConntrackReader._open)
        try:
            port_id = sock.getsockname()[0]
            status = (ct._be32_attr(ct.CTA_STATUS, ct.IPS_SRC_NAT)
                      + ct._be32_attr(ct.CTA_STATUS_MASK, ct.IPS_SRC_NAT))
            dumps = []
            seq = 0
            for family in (socket.AF_INET, socket.AF_INET6):
                for filtered in (True, False):
                    seq += 1
                    got = _record(sock, ct.IPCTNL_MSG_CT_GET, family, seq,
                                  status if filtered else b"")
                    dumps.append({"family": family, "filtered": filtered, "seq": seq,
                                  "datagrams": [base64.b64encode(d).decode() for d in got]})
            seq += 1
            stats = _record(sock, ct.IPCTNL_MSG_CT_GET_STATS_CPU, socket.AF_UNSPEC, seq, b"")
        finally:
            sock.close()
        conntrack_s = subprocess.run(["ip", "netns", "exec", name, "conntrack", "-S"],
                                     check=True, capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    return {
        "kernel": platform.release(),
        "seed": SEED,
        "port_id": port_id,
        "dumps": dumps,
        "stats": {"seq": seq, "datagrams": [base64.b64encode(d).decode() for d in stats]},
        "conntrack_S": conntrack_s,
        "other_protocols": len(OTHER_PROTOCOLS),
    }


def main(argv: list[str]) -> int:
    text = json.dumps(capture(), indent=1) + "\n"
    if argv:
        with open(os.path.join(argv[0], "ctnetlink-dumps.json"), "w") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
