"""When one tuple's first new connection is refused, per Cilium version's port search.

Long-lived connections to one remote endpoint through one egress IP, each from a client
source port outside the NAT range (so nat.h picks a random first port, as for clients
whose ephemeral range lies below ``--node-port-range``'s MAX), one after another, none
ending: the occupancy of the tuple's source ports at the first ``DROP_NAT_NO_MAPPING``
shows how far each version's bounded search gets (cilium-snat.md section 11).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from egressgw.config import NodePortRange
from egressgw.datapath.model import ModelConfig, ModelDatapath
from egressgw.net import Endpoint, FiveTuple, Proto

EGRESS = ipaddress.ip_address("192.0.2.10")
REMOTE = Endpoint(ipaddress.ip_address("203.0.113.5"), 443)
CLIENT_BASE = int(ipaddress.ip_address("198.51.100.1"))
CLIENT_PORTS = 20000  # source ports 1024..21023 per client address, below the NAT range


@dataclass(frozen=True, slots=True)
class FirstDrop:
    version: str
    retries: int
    ports: int  # source ports of the tuple (NAT range size)
    at_first_drop: int  # connections holding a port when the first one was refused
    established: int  # connections that got a port out of ``attempts``
    attempts: int

    @property
    def occupancy(self) -> float:
        """Share of the tuple's ports in use when the first connection was refused."""
        return self.at_first_drop / self.ports


def first_drop(
    version: str,
    *,
    seed: int = 0,
    attempts: int = 40_000,
    retries: int | None = None,
    node_port_range: NodePortRange | None = None,
) -> FirstDrop:
    """Open ``attempts`` connections on one tuple with ``version``'s port search."""
    ports = node_port_range or NodePortRange()
    config = ModelConfig(
        node_port_range=ports,
        bpf_nat_global_max=max(1 << 10, 1 << (2 * attempts + 2).bit_length()),
        cilium_version=version,
        snat_collision_retries=retries,
        # nat.h's rule since v1.18: SNAT_SIGNAL_THRES = SNAT_COLLISION_RETRIES / 2
        snat_signal_thres=None if retries is None else retries // 2,
        conntrack_gc_interval=1e9,  # nothing ends, and the clock stays at 0
    )
    # One connection at a time: the reference engine (the compiled one pays a random-state
    # hand-over per call).
    dp = ModelDatapath(config, random.Random(seed), engine="reference")
    at_first_drop = -1
    established = 0
    for i in range(attempts):
        client = ipaddress.ip_address(CLIENT_BASE + i // CLIENT_PORTS)
        tup = FiveTuple(Proto.TCP, Endpoint(client, 1024 + i % CLIENT_PORTS), REMOTE)
        if dp.connect(tup, EGRESS).ok:
            established += 1
        elif at_first_drop < 0:
            at_first_drop = established
    return FirstDrop(
        version=version,
        retries=config.retries,
        ports=ports.nat_ports,
        at_first_drop=established if at_first_drop < 0 else at_first_drop,
        established=established,
        attempts=attempts,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m egressgw.sim.firstdrop [SEEDS]``: the table docs/model.md quotes."""
    import statistics  # noqa: PLC0415
    import sys  # noqa: PLC0415

    seeds = range(int((argv if argv is not None else sys.argv[1:] or ["5"])[0]))
    print("version  tries  first drop occupancy (median, range)   established of 40000")
    for version, retries in (("1.16", None), ("1.16", 32), ("1.17", None), ("1.18", None)):
        runs = [first_drop(version, seed=seed, retries=retries) for seed in seeds]
        occ = [r.occupancy for r in runs]
        est = [r.established for r in runs]
        print(f"{version:7}  {runs[0].retries:5}  {statistics.median(occ):6.1%} "
              f"({min(occ):.1%}-{max(occ):.1%})               "
              f"{statistics.median(est):7.0f} ({min(est)}-{max(est)})")


if __name__ == "__main__":
    main()
