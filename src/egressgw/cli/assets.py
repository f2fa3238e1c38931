"""``egressgw assets``: where the installed examples and deploy files are."""

from __future__ import annotations

from pathlib import Path

import click

import egressgw

PACKAGE = Path(egressgw.__file__).resolve().parent
ASSETS = {
    "examples": "policies, inventories (hand-written and kubectl output), workloads, dumps",
    "deploy": "Kubernetes manifests, Prometheus rules, Grafana dashboards, Containerfile",
}


@click.command("assets")
@click.argument("name", required=False, type=click.Choice(sorted(ASSETS)))
def assets(name: str | None) -> None:
    """Print where the examples and deploy files of this installation are.

    \b
    Examples:
      egressgw assets                 # both, with what they hold
      kubectl apply -k "$(egressgw assets deploy)/kubernetes"
      ls "$(egressgw assets examples)"
    """
    if name is not None:
        click.echo(PACKAGE / name)
        return
    for key, what in ASSETS.items():
        click.echo(f"{key}\t{PACKAGE / key}\t{what}")
