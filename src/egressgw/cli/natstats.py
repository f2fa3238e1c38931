"""``egressgw nat-stats``: Cilium's nat-stats table from a NAT table dump."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from egressgw.cli.options import (
    given,
    nat_map_stats_entries_option,
    nat_port_range_option,
    node_port_range_option,
    output_option,
)
from egressgw.config import NodePortRange
from egressgw.dumps import count_endpoints, count_file, read_source
from egressgw.dumps.heap import keep_freed_memory
from egressgw.errors import InputError
from egressgw.limits import NatPortRange, dump_limit
from egressgw.stats import compute_nat_stats, render_saturation, render_table, stats_document


@click.command(
    "nat-stats",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  egressgw nat-stats --from src/egressgw/examples/seed-node-nat-list.txt
  kubectl -n kube-system exec ds/cilium -- cilium-dbg bpf nat list \\
      | egressgw nat-stats --from -
  conntrack -L 2>/dev/null | egressgw nat-stats --from - -o json
""",
)
@click.option(
    "--from",
    "source",
    required=True,
    metavar="FILE|-",
    help="A dump of `cilium-dbg bpf nat list` or `conntrack -L` output; - reads stdin.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "cilium", "conntrack"]),
    default="auto",
    show_default=True,
    help="Dump format; auto looks at the first line.",
)
@node_port_range_option(
    "NodePort range. Cilium dumps: saturation divides by 65535-(MAX+1) (Cilium's "
    "divisor). conntrack dumps: egressgw's nft rule, ports MAX+1-65535."
)
@nat_port_range_option()
@nat_map_stats_entries_option("Rows kept per address family (1..4096), the top K by count.")
@output_option(
    "table",
    "json",
    "yaml",
    help="table prints like `cilium-dbg statedb nat-stats`; json/yaml include every field.",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Skip lines that cannot be parsed (their number goes to stderr) instead of failing.",
)
def nat_stats(
    *,
    source: str,
    fmt: str,
    node_port_range: NodePortRange,
    nat_port_range: NatPortRange | None,
    nat_map_stats_entries: int,
    output: str,
    skip_invalid: bool,
) -> None:
    """Count SNAT connections per {egress IP, remote endpoint}, like `cilium-dbg statedb
    nat-stats`.

    Reads a NAT table dump, counts the connections that share each {protocol, egress IP,
    remote IP, remote port} (each needs its own source port), and prints the top K per
    family in ascending order of count. The saturation of each family (top count divided
    by the ports the datapath that made the dump can hand out: Cilium's divisor for
    `bpf nat list`, the SNAT rule's range for `conntrack -L`) goes to stderr, and into
    json/yaml output with the limit used and where it came from.
    """
    ctx = click.get_current_context()
    data: bytes | None = None
    if source == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise InputError("standard input is closed: nothing to read", source="<stdin>")
        data, name = read_source(source)
        _reuse_memory_for(len(data))
        dump = count_endpoints(data, source=name, fmt=fmt, skip_invalid=skip_invalid)
    else:
        name = source
        with contextlib.suppress(OSError):  # count_file reports an unreadable file
            _reuse_memory_for(os.stat(source).st_size)
        dump = count_file(source, fmt=fmt, skip_invalid=skip_invalid)
    # conntrack dumps: Linux takes over TIME_WAIT/CLOSE ports, counted apart in the same
    # pass (egressgw.limits, dumps.conntrack); None for bpf nat list dumps.
    reusable = dump.reusable
    limit = dump_limit(
        dump.format,
        node_port_range=node_port_range if given(ctx, "node_port_range") else None,
        nat_port_range=nat_port_range,
    )
    stats = compute_nat_stats(dump.counts, entries=nat_map_stats_entries, limit=limit,
                              reusable=reusable)
    if dump.skipped:
        click.echo(f"{name}: skipped {dump.skipped} invalid line(s)", err=True)
    if output == "table":
        click.echo(render_table(stats.rows), nl=False)
        click.echo(render_saturation(stats), nl=False, err=True)
        if stats.saturation:
            click.echo(f"limit: {limit.describe()}", err=True)
        return
    from egressgw.render.documents import dump_document  # noqa: PLC0415 - json/yaml only

    document = stats_document(stats)
    document["source"] = {
        "name": name,
        "format": dump.format,
        "lines": dump.lines,
        "skipped": dump.skipped,
    }
    click.echo(dump_document(document, output), nl=False)


# From this size on, the scan's buffers are worth keeping for reuse (dumps/heap.py: 0.25 s
# of system time saved per 1,000,000 lines); below it, not worth loading ctypes for.
_REUSE_MEMORY_FROM = 1 << 20


def _reuse_memory_for(size: int) -> None:
    if size >= _REUSE_MEMORY_FROM:
        keep_freed_memory()  # a short-lived command: reuse the scan's buffers
