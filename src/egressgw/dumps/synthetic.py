"""Writing ``cilium-dbg bpf nat list`` dumps: the example node and benchmark dumps.

Dumps are written the way cilium-dbg prints them (``pkg/maps/nat``): an OUT and an IN entry
per connection, map iteration order (here: a seeded shuffle), a blank line after each of
the IPv4 and IPv6 listings. Source ports are kept when they fall in the NAT range and are
free, as nat.h does, and drawn at random otherwise.

    python -m egressgw.dumps.synthetic seed    # the bundled example: the seed's table, synthetic
    python -m egressgw.dumps.synthetic bench N # N lines for the benchmark
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from egressgw.config import NodePortRange
from egressgw.net import Direction, Endpoint, FiveTuple, NatEntry, Proto, parse_ip

NAT_RANGE = NodePortRange()


def format_entry(entry: NatEntry) -> str:
    """One NatEntry as a ``cilium-dbg bpf nat list`` line (without the newline).

    ``created_ago`` None prints ``? (raw 0)``; ``needs_ct`` None prints the older
    ``HostLocal=0``.
    """
    which = "SRC" if entry.direction is Direction.OUT else "DST"
    created = "? (raw 0)" if entry.created_ago is None else f"{int(entry.created_ago)}sec ago"
    flag = "HostLocal=0" if entry.needs_ct is None else f"NeedsCT={int(entry.needs_ct)}"
    t = entry.tuple
    return (
        f"{t.proto.label} {entry.direction} {t.src} -> {t.dst} "
        f"XLATE_{which} {entry.xlate} Created={created} {flag}"
    )


def format_dump(entries: Iterable[NatEntry]) -> str:
    """Entries as cilium-dbg lists them: IPv4 map, blank line, IPv6 map, blank line."""
    listed = list(entries)
    maps = [[format_entry(e) for e in listed if e.tuple.src.ip.version == v] for v in (4, 6)]
    return "".join("".join(f"{line}\n" for line in lines) + "\n" for lines in maps if lines)


@dataclass(frozen=True)
class Flow:
    """``count`` connections from ``sources`` to one remote endpoint through ``egress``."""

    proto: Proto
    sources: tuple[str, ...]
    egress: str
    remote: str
    remote_port: int
    count: int
    needs_ct: bool = True


class PortAllocator:
    """Per {egress, remote, proto}: keep the source port if free in range, else draw one."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: dict[tuple[str, str, int, Proto], set[int]] = {}

    def allocate(self, flow: Flow, wanted: int) -> int:
        used = self._used.setdefault(
            (flow.egress, flow.remote, flow.remote_port, flow.proto), set()
        )
        port = wanted
        while not NAT_RANGE.nat_min <= port <= NAT_RANGE.nat_max or port in used:
            port = self._rng.randint(NAT_RANGE.nat_min, NAT_RANGE.nat_max - 1)
        used.add(port)
        return port


def flow_entries(flows: Iterable[Flow], rng: random.Random) -> list[NatEntry]:
    """OUT and IN entries of every connection of every flow, in a seeded map order."""
    ports = PortAllocator(rng)
    entries: list[NatEntry] = []
    for flow in flows:
        for _ in range(flow.count):
            source = parse_ip(rng.choice(flow.sources))
            # Linux picks ephemeral ports from 32768..60999; ICMP echo ids are 16 bits.
            wanted = rng.randint(32768, 60999) if flow.proto.has_ports else rng.randint(1, 65535)
            nat_port = ports.allocate(flow, wanted)
            remote = Endpoint(parse_ip(flow.remote), flow.remote_port)
            egress = Endpoint(parse_ip(flow.egress), nat_port)
            age = float(rng.randint(1, 7200))
            out = FiveTuple(flow.proto, Endpoint(source, wanted), remote)
            entries.append(NatEntry(Direction.OUT, out, egress, age, flow.needs_ct))
            entries.append(
                NatEntry(
                    Direction.IN,
                    FiveTuple(flow.proto, remote, egress),
                    Endpoint(source, wanted),
                    age,
                    flow.needs_ct,
                )
            )
    rng.shuffle(entries)
    return entries


def seed_node_flows() -> list[Flow]:
    """The node of the seed document's ``cilium-dbg statedb nat-stats`` example (kind).

    Node 172.18.0.2 / fc00:c111::2, pod CIDRs 10.244.1.0/24 and fd00:10:244:1::/64,
    cilium_host 10.244.1.160; 294 pod connections to 104.198.14.52:443 and 50 to the API
    server 172.18.0.4:6443, health checks (port 4240) and pings to the other nodes.
    """
    pods = tuple(f"10.244.1.{host}" for host in (12, 37, 58, 91, 133, 201))
    return [
        Flow(Proto.TCP, pods, "172.18.0.2", "104.198.14.52", 443, 294),
        Flow(Proto.TCP, pods, "172.18.0.2", "172.18.0.4", 6443, 50),
        Flow(Proto.TCP, ("172.18.0.2",), "172.18.0.2", "172.18.0.3", 4240, 1, False),
        Flow(Proto.ICMP, ("172.18.0.2",), "172.18.0.2", "172.18.0.3", 0, 1, False),
        Flow(Proto.TCP, ("10.244.1.160",), "10.244.1.160", "10.244.3.174", 4240, 1, False),
        Flow(Proto.ICMPV6, ("fc00:c111::2",), "fc00:c111::2", "fc00:c111::3", 0, 1, False),
        Flow(
            Proto.TCP,
            ("fd00:10:244:1::ec5d",),
            "fd00:10:244:1::ec5d",
            "fd00:10:244:3::730c",
            4240,
            1,
            False,
        ),
        Flow(
            Proto.TCP,
            ("fd00:10:244:1::ec5d",),
            "fd00:10:244:1::ec5d",
            "fd00:10:244::915",
            4240,
            1,
            False,
        ),
    ]


def seed_node_dump(seed: int = 2016) -> str:
    """The bundled example ``src/egressgw/examples/seed-node-nat-list.txt``.

    Synthetic, not captured on a node: the connections behind the seed document's table.
    """
    return format_dump(flow_entries(seed_node_flows(), random.Random(seed)))


def bench_lines(lines: int, seed: int = 1) -> Iterator[str]:
    """About ``lines`` lines of a busy gateway: mostly TCP over IPv4, some UDP, ICMP, IPv6.

    As cilium-dbg lists them: the IPv4 map, a blank line, the IPv6 map, a blank line.
    Written directly as text (no NatEntry objects) so a million lines take seconds.
    """
    rng = random.Random(seed)
    remotes4 = [(f"198.51.100.{i}", port) for i in range(1, 40) for port in (443, 80)]
    remotes6 = [(f"2001:db8:100::{i:x}", 443) for i in range(1, 20)]
    egress4 = ["203.0.113.10", "203.0.113.11"]
    egress6 = ["2001:db8:ffff::10"]
    ipv6_map: list[str] = []
    for _ in range(lines // 2):
        v6 = rng.random() < 0.1
        draw = rng.random()
        proto = "TCP" if draw < 0.85 else ("UDP" if draw < 0.97 else "ICMP")
        if v6:
            proto = "ICMPv6" if proto == "ICMP" else proto
            rip, rport = remotes6[min(int(rng.expovariate(0.3)), len(remotes6) - 1)]
            eip = rng.choice(egress6)
            pod = f"fd00:10:244:{rng.randrange(4)}::{rng.randrange(1, 65535):x}"
            fmt = "[{}]"
        else:
            rip, rport = remotes4[min(int(rng.expovariate(0.1)), len(remotes4) - 1)]
            eip = rng.choice(egress4)
            pod = f"10.244.{rng.randrange(4)}.{rng.randrange(1, 255)}"
            fmt = "{}"
        sport = rng.randrange(32768, 61000)
        nport = rng.randrange(32768, 65535)
        if proto.startswith("ICMP"):
            rport, out_dport, in_sport = 0, 0, 0
        else:
            out_dport = in_sport = rport
        age = rng.randrange(1, 9000)
        p, r, e = fmt.format(pod), fmt.format(rip), fmt.format(eip)
        pair = (
            f"{proto} OUT {p}:{sport} -> {r}:{out_dport} XLATE_SRC {e}:{nport} "
            f"Created={age}sec ago NeedsCT=1\n"
            f"{proto} IN {r}:{in_sport} -> {e}:{nport} XLATE_DST {p}:{sport} "
            f"Created={age}sec ago NeedsCT=1\n"
        )
        if v6:
            ipv6_map.append(pair)
        else:
            yield pair
    yield "\n"
    yield from ipv6_map
    yield "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["seed"]:
        sys.stdout.write(seed_node_dump())
        return 0
    if len(argv) == 2 and argv[0] == "bench":
        sys.stdout.writelines(bench_lines(int(argv[1])))
        return 0
    print("usage: python -m egressgw.dumps.synthetic seed | bench LINES", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
