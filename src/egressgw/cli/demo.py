"""``egressgw demo``: the seed's SNAT exhaustion scenario and its remedy, end to end."""

from __future__ import annotations

from pathlib import Path

import click

from egressgw.cli.options import cilium_version_option


@click.command(
    "demo",
    epilog="""\b
Examples:
  egressgw demo
  egressgw demo --out /tmp/demo --seed 7
  egressgw demo --scale 0.1 --quiet""",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("egressgw-demo"), show_default=True,
              help="Directory for report.md and saturation.png.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Seed of every random draw: equal seeds, equal output.")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Shrink ports, NAT map and rates together (0 < SCALE <= 1) for a "
                   "quicker run of the same shape.")
@click.option("--quiet", is_flag=True,
              help="Print only the verdicts, not the nat-stats table of every interval.")
@cilium_version_option()
def demo(*, out_dir: Path, seed: int, scale: float, quiet: bool, cilium_version: str) -> None:
    """Show SNAT port exhaustion on one egress IP, then fix it with a second one.

    \b
    The scenario of Cilium's egress gateway troubleshooting guide: egress IP 10.1.0.0
    masquerades clients of a server at 10.2.0.0:8080 behind a firewall. Connections
    grow past the 32768 source ports of that tuple: nat-stats climbs toward 100%, new
    connections are dropped (reason 167, "No mapping for NAT masquerade") even before
    it gets there, and old ones are evicted. Splitting the clients over a second egress
    IP fixes it. Runs on the model datapath in virtual time: no root; seconds, under a
    minute the first time (while numba compiles).
    """
    from egressgw.cli.outputs import check_output_dir, notice_model_compile  # noqa: PLC0415
    from egressgw.sim.demo import run_demo  # noqa: PLC0415 - loads the model and plotting

    check_output_dir(out_dir, field="--out")
    notice_model_compile()
    run_demo(out_dir, seed=seed, scale=scale, tables=not quiet, cilium_version=cilium_version,
             echo=lambda text: click.echo(text, nl=False))
