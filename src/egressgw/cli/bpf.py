"""``egressgw bpf``: read the BPF datapath's pinned maps, like ``cilium-dbg bpf``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from egressgw.datapath.bpf.loader import PinnedMaps
from egressgw.datapath.bpf.natmap import iter_nat_list, read_nat_map
from egressgw.datapath.bpf.pins import BPFFS_DIR, pin_name
from egressgw.datapath.kernel.netns import NETNS_NAME
from egressgw.errors import ConfigError
from egressgw.net import Family

PIN_OPTIONS = (
    click.option("--netns", help="The gateway's network namespace (default: this one's)."),
    click.option("--bpffs", type=click.Path(path_type=Path), default=str(BPFFS_DIR),
                 show_default=True, help="Where the datapath's bpffs is mounted."),
)


def _open(netns: str | None, bpffs: Path) -> PinnedMaps:
    if netns is not None and not NETNS_NAME.fullmatch(netns):
        raise ConfigError(f"{netns!r}: not a network namespace name", field="--netns")
    return PinnedMaps.open_existing(bpffs / pin_name(netns))


@click.group("bpf")
def bpf() -> None:
    """The BPF datapath's maps (--datapath bpf), printed as cilium-dbg prints Cilium's."""


@bpf.group("nat")
def nat() -> None:
    """The SNAT map."""


@nat.command(
    "list",
    epilog="""\b
Examples:
  ip netns exec egw-lab-gw egressgw bpf nat list
  egressgw bpf nat list --netns egw-lab-gw | egressgw nat-stats --from -""",
)
@PIN_OPTIONS[0]
@PIN_OPTIONS[1]
def nat_list(*, netns: str | None, bpffs: Path) -> None:
    """Every NAT entry, exactly as `cilium-dbg bpf nat list` prints them.

    IPv4 entries, a blank line, IPv6 entries, a blank line; Created is relative to the
    monotonic clock the program stamps entries with.
    """
    maps = _open(netns, bpffs)
    try:
        out = sys.stdout
        for name, family in (("snat_v4", Family.IPV4), ("snat_v6", Family.IPV6)):
            if name not in maps.maps:
                continue
            out.writelines(iter_nat_list(read_nat_map(maps[name], family)))
            out.write("\n")
        out.flush()
    finally:
        maps.close()


@nat.group("retries")
def retries() -> None:
    """The port search's tries histogram (Cilium v1.18's alloc_retries)."""


@retries.command("list")
@PIN_OPTIONS[0]
@PIN_OPTIONS[1]
def retries_list(*, netns: str | None, bpffs: Path) -> None:
    """Allocations by tries used, per family: `family tries count` per line."""
    from egressgw.datapath.bpf.datapath import per_cpu_sum  # noqa: PLC0415

    maps = _open(netns, bpffs)
    try:
        for name, family in (("retries_v4", Family.IPV4), ("retries_v6", Family.IPV6)):
            if name in maps.maps:
                for tries, count in sorted(per_cpu_sum(maps[name], 4).items()):
                    click.echo(f"{family} {tries} {count}")
    finally:
        maps.close()
