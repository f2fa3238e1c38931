"""Capture real ``conntrack -L`` output of masqueraded traffic for the test fixtures.

Builds three network namespaces (client -- gateway -- server) joined by veth pairs, has
the gateway masquerade everything leaving towards the server (nftables), turns on
conntrack accounting and timestamps in the gateway (``nf_conntrack_acct=1``,
``nf_conntrack_timestamp=1``: every line then carries ``packets= bytes=`` per direction
and ``delta-time=``), makes real connections from the client, adds entries of the kinds
real traffic here does not make over ctnetlink (``conntrack -I``: the kernel creates them
and prints them like any other), and writes what ``conntrack -L`` prints in the gateway's
namespace with each output option (see OUTPUTS) and the summary conntrack prints on stderr,
conntrack-L.stderr.txt.
Needs root, ip, nft and conntrack. Everything it creates is deleted again, also on failure.

Traffic (egress 198.51.100.1 / 2001:db8:2::1, server 198.51.100.2 / 2001:db8:2::2):
  3 TCP connections to 198.51.100.2:8080, held open      -> ESTABLISHED [ASSURED]
  1 UDP exchange with 198.51.100.2:5353 (echoed)
  1 UDP datagram to 198.51.100.2:9 (nobody listens)      -> [UNREPLIED]
  1 ICMP echo to 198.51.100.2
  1 TCP connection to [2001:db8:2::2]:8080, held open
  1 ICMPv6 echo to 2001:db8:2::2
  1 ICMP echo to the gateway itself (192.0.2.1)          -> not source-NATed
Inserted over ctnetlink (INSERTED), source-NATed to 198.51.100.1 towards 198.51.100.3:
  TCP in SYN_SENT2 and in NONE to port 443                 -> counted
  UDP to port 53 in zone 7 with mark 5, and with zone-orig=3 -> counted
  SCTP, DCCP, GRE, UDP-Lite and IGMP ("unknown 2")          -> read, not counted

    sudo .venv/bin/python tests/golden/capture_conntrack.py tests/golden
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SERVER = r"""
import socket, threading, sys
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("::", 8080)); tcp.listen(16)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
udp.bind(("::", 5353))
held = []
def accept():
    while True:
        held.append(tcp.accept()[0])
def echo():
    while True:
        data, peer = udp.recvfrom(2048); udp.sendto(data, peer)
for target in (accept, echo):
    threading.Thread(target=target, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF); total += total >> 16
    return ~total & 0xFFFF
def ping4(address, ident):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.settimeout(3)
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"egressgw"
    s.sendto(body[:2] + struct.pack("!H", checksum(body)) + body[4:], (address, 0))
    s.recvfrom(2048)
def ping6(address, ident):
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); s.settimeout(3)
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"egressgw", (address, 0))
    while s.recvfrom(2048)[0][0] != 129:
        pass
held = [socket.create_connection(("198.51.100.2", 8080), timeout=3) for _ in range(3)]
held.append(socket.create_connection(("2001:db8:2::2", 8080), timeout=3))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.settimeout(3)
udp.sendto(b"hello", ("198.51.100.2", 5353)); udp.recvfrom(2048)
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("198.51.100.2", 9))
ping4("198.51.100.2", 4242)
ping6("2001:db8:2::2", 4343)
ping4("192.0.2.1", 4444)
time.sleep(0.2)
print("ready", flush=True)
sys.stdin.read()
"""


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@contextmanager
def topology() -> Iterator[dict[str, str]]:
    """client -- gateway -- server namespaces, with unique names, always deleted."""
    tag = f"{os.getpid() % 100000}{secrets.token_hex(1)}"
    ns = {role: f"egct-{tag}-{role}" for role in ("client", "gw", "server")}
    created: list[str] = []
    try:
        for name in ns.values():
            run("ip", "netns", "add", name)
            created.append(name)
        # veth names: at most 15 characters.
        links = [
            (f"ec{tag}c", ns["client"], f"ec{tag}a", "192.0.2.2/24", "2001:db8:1::2/64"),
            (f"ec{tag}s", ns["server"], f"ec{tag}b", "198.51.100.2/24", "2001:db8:2::2/64"),
        ]
        gw_addrs = {
            f"ec{tag}a": ("192.0.2.1/24", "2001:db8:1::1/64"),
            f"ec{tag}b": ("198.51.100.1/24", "2001:db8:2::1/64"),
        }
        for inner, inner_ns, outer, v4, v6 in links:
            run(
                "ip",
                "link",
                "add",
                inner,
                "netns",
                inner_ns,
                "type",
                "veth",
                "peer",
                "name",
                outer,
                "netns",
                ns["gw"],
            )
            for address in (v4, v6):
                run("ip", "-n", inner_ns, "addr", "add", address, "dev", inner, "nodad")
            run("ip", "-n", inner_ns, "link", "set", inner, "up")
            run("ip", "-n", inner_ns, "link", "set", "lo", "up")
            for address in gw_addrs[outer]:
                run("ip", "-n", ns["gw"], "addr", "add", address, "dev", outer, "nodad")
            run("ip", "-n", ns["gw"], "link", "set", outer, "up")
        run("ip", "-n", ns["client"], "route", "add", "default", "via", "192.0.2.1")
        run("ip", "-n", ns["client"], "-6", "route", "add", "default", "via", "2001:db8:1::1")
        gw = ("ip", "netns", "exec", ns["gw"])
        run(*gw, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        ruleset = (
            "table inet egct { chain post { type nat hook postrouting priority srcnat; "
            f'oifname "ec{tag}b" masquerade; }}; }}'
        )
        run(*gw, "nft", ruleset)
        # Per namespace; the conntrack module is loaded now that a NAT rule exists.
        run(*gw, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1",
            "net.netfilter.nf_conntrack_timestamp=1")
        yield ns
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@contextmanager
def running(ns: str, program: str) -> Iterator[None]:
    """A Python program inside a namespace, ready when it prints "ready", stopped after."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"program in {ns} failed (exit {process.wait(5)})")
        yield
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_NAT = ("-s", "192.0.2.2", "-d", "198.51.100.3", "-t", "300", "--src-nat", "198.51.100.1")
INSERTED: list[tuple[str, ...]] = [
    ("-p", "tcp", "--sport", "41000", "--dport", "443", "--state", "SYN_SENT2", *_NAT),
    ("-p", "tcp", "--sport", "41001", "--dport", "443", "--state", "NONE", *_NAT),
    ("-p", "udp", "--sport", "41002", "--dport", "53", "--zone", "7", "--mark", "5", *_NAT),
    ("-p", "udp", "--sport", "41003", "--dport", "53", "--orig-zone", "3", *_NAT),
    ("-p", "sctp", "--sport", "41004", "--dport", "38412", "--state", "ESTABLISHED",
     "--orig-vtag", "1", "--reply-vtag", "2", *_NAT),
    ("-p", "dccp", "--sport", "41005", "--dport", "5004", "--state", "OPEN", "--role", "client",
     *_NAT),
    ("-p", "gre", "--srckey", "1", "--dstkey", "2", *_NAT),
    ("-p", "udplite", "--sport", "41006", "--dport", "5005", *_NAT),
    ("-p", "2", *_NAT),
]

# Output file: the options given to ``conntrack -L``.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "conntrack-L.txt": (),
    "conntrack-L-extended.txt": ("-o", "extended"),
    "conntrack-L-id.txt": ("-o", "id"),
    "conntrack-L-ktimestamp.txt": ("-o", "ktimestamp"),
    "conntrack-L-labels.txt": ("-o", "labels"),
    "conntrack-L-all.txt": ("-o", "extended,id,ktimestamp,labels"),
    "conntrack-L-ipv6.txt": ("-f", "ipv6"),
    "conntrack-L-ipv6-extended.txt": ("-f", "ipv6", "-o", "extended"),
}


def capture() -> dict[str, str]:
    """What ``conntrack -L`` prints in the gateway with each of OUTPUTS, and its stderr."""
    with topology() as ns, running(ns["server"], SERVER), running(ns["client"], CLIENT):
        conntrack = ("ip", "netns", "exec", ns["gw"], "conntrack")
        for entry in INSERTED:
            run(*conntrack, "-I", *entry)
        plain = subprocess.run([*conntrack, "-L"], check=True, capture_output=True, text=True)
        outputs = {name: run(*conntrack, "-L", *options) for name, options in OUTPUTS.items()}
        outputs["conntrack-L.txt"] = plain.stdout
        outputs["conntrack-L.stderr.txt"] = plain.stderr
        return outputs


def main(argv: list[str]) -> int:
    outputs = capture()
    for name, text in outputs.items():
        if argv:
            with open(os.path.join(argv[0], name), "w") as out:
                out.write(text)
        else:
            sys.stdout.write(f"==> {name}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
