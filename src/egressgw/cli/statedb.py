"""``egressgw statedb nat-stats``: the agent's nat-stats table, as cilium-dbg shows it."""

from __future__ import annotations

import sys
import time

import click

from egressgw.agent.client import (
    check_server,
    fetch_nat_stats,
    fetch_nat_stats_rows,
    nat_stats_url,
)
from egressgw.agent.document import rows_from_document, saturation_lines
from egressgw.agent.endpoints import DEFAULT_SERVER
from egressgw.agent.watch import watch
from egressgw.cli.options import output_option, parse_duration_flag
from egressgw.render.documents import dump_document
from egressgw.stats import render_table

SERVER_HELP = "The agent's API (its --listen address)."
MIN_WATCH_INTERVAL = 0.1


@click.group("statedb")
def statedb() -> None:
    """Inspect the running agent's tables (like cilium-dbg statedb)."""


@statedb.command(
    "nat-stats",
    epilog="""\b
Examples:
  egressgw statedb nat-stats
  egressgw statedb nat-stats -w 5s
  egressgw statedb nat-stats -o json --server http://[::1]:9967""",
)
@click.option("-w", "--watch", "watch_interval", metavar="INTERVAL",
              callback=parse_duration_flag,
              help="Keep printing the rows that change, every INTERVAL (e.g. 5s).")
@output_option("table", "json", "yaml")
@click.option("--server", default=DEFAULT_SERVER, show_default=True, help=SERVER_HELP)
def nat_stats(*, watch_interval: float | None, output: str, server: str) -> None:
    """Top SNAT tuples per family: connections per {egress IP, remote endpoint}.

    Prints `# IPFamily Proto EgressIP RemoteAddr Count`, IPv4 before IPv6 and ascending
    count within a family, exactly as `cilium-dbg statedb nat-stats` does; the
    saturation per family and the port limit the agent divides by go to stderr.
    """
    check_server(server)
    if watch_interval is not None:
        if output != "table":
            raise click.UsageError(f"--watch is not supported with {output} output")
        interval = watch_interval
        if interval < MIN_WATCH_INTERVAL:
            raise click.UsageError(
                f"--watch needs an interval of at least {MIN_WATCH_INTERVAL:g} s, such as 5s"
            )
        watch(lambda: fetch_nat_stats_rows(server), sys.stdout, interval=interval,
              sleep=time.sleep)
        return
    if output == "table":
        doc = fetch_nat_stats(server)
        click.echo(render_table(rows_from_document(doc, nat_stats_url(server))), nl=False)
        # Like `egressgw nat-stats`: the saturation and the limit it divides by, on stderr.
        click.echo(saturation_lines(doc), nl=False, err=True)
        return
    click.echo(dump_document(fetch_nat_stats(server), output), nl=False)
