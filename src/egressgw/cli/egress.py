"""``egressgw egress list``: the compiled egress rules, like ``cilium-dbg bpf egress list``."""

from __future__ import annotations

from pathlib import Path

import click

from egressgw.cli.options import output_option, policy_cilium_version_option
from egressgw.errors import InputError
from egressgw.policy.cilium import CiliumVersion
from egressgw.policy.compile import Compiled, compile_policies
from egressgw.policy.kubernetes import load_inventories
from egressgw.policy.listing import egress_list, format_egress_list
from egressgw.policy.parse import load_policies
from egressgw.render.documents import dump_document
from egressgw.rules import RuleKind


@click.group()
def egress() -> None:
    """Egress gateway policies compiled into rules."""


@egress.command("list")
@click.option(
    "--policies",
    "policies_path",
    required=True,
    type=click.Path(path_type=Path),
    help="A CiliumEgressGatewayPolicy file (multi-document or kind: List) or a directory.",
)
@click.option(
    "--inventory",
    "inventory_paths",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path, allow_dash=True),
    help="Nodes and endpoints: an egressgw inventory file, or kubectl get nodes,pods "
    "[,namespaces,ciliumendpoints] -o yaml output (- reads stdin); repeatable.",
)
@click.option(
    "--node",
    default=None,
    help="Show the policy map as this node holds it (egress IPs only on its own gateways).",
)
@policy_cilium_version_option()
@output_option("table", "json", "yaml", help="json and yaml carry every field of every rule.")
def list_rules(
    policies_path: Path,
    inventory_paths: tuple[Path, ...],
    node: str | None,
    cilium_version: CiliumVersion,
    output: str,
) -> None:
    """List the egress rules the policies give over the inventory.

    \b
    Columns as in cilium-dbg bpf egress list: Source IP, Destination CIDR, Egress IP,
    Gateway IP ("Excluded CIDR" for excluded destinations, "Not Found" when no node
    matches the gateway's nodeSelector; such traffic is dropped).

    \b
    The table is what cilium-dbg bpf egress list shows for --cilium-version; a warning
    names each place Cilium drops traffic, and a note says where egressgw's own
    datapaths (egressgw agent) masquerade it instead.

    \b
    Examples:
      egressgw egress list --policies policies/ --inventory inventory.yaml
      egressgw egress list --policies p.yaml --inventory inv.yaml --node gateway-1 -o json
      kubectl get cegp -o yaml > policies.yaml
      kubectl get nodes,pods,namespaces -o yaml | \\
        egressgw egress list --policies policies.yaml --inventory - --inventory ifaces.yaml
    """
    policies = load_policies(policies_path, cilium_version)
    inventory = load_inventories(inventory_paths)
    if node is not None and inventory.node(node) is None:
        raise InputError(f"no node named {node!r} in the inventory",
                         source=", ".join(map(str, inventory_paths)))
    compiled = compile_policies(policies, inventory, cilium_version)
    for warning in compiled.warnings:
        click.echo(f"egressgw: warning: {warning}", err=True)
    for note in better_than_cilium(compiled, compile_policies(policies, inventory),
                                   cilium_version):
        click.echo(f"egressgw: note: {note}", err=True)
    entries = egress_list(compiled.rules, node)
    if output in ("json", "yaml"):
        click.echo(dump_document([e.as_document() for e in entries], output), nl=False)
    elif not entries:
        click.echo("No entries found.", err=True)
    else:
        click.echo(format_egress_list(entries), nl=False)


def better_than_cilium(
    cilium: Compiled, own: Compiled, version: CiliumVersion
) -> list[str]:
    """Where Cilium drops at the gateway and egressgw's datapaths masquerade: one note per
    policy, gateway and egress IP, with how many rules it covers."""
    theirs = {(r.source_ip, r.destination): r for r in cilium.rules}
    counts: dict[tuple[str, str, str], int] = {}
    for rule in own.rules:
        other = theirs.get((rule.source_ip, rule.destination))
        if (rule.kind is RuleKind.MASQUERADE and other is not None
                and other.kind is RuleKind.NO_GATEWAY and other.gateway_node is not None):
            key = (rule.policy, str(rule.gateway_node), str(rule.egress_ip))
            counts[key] = counts.get(key, 0) + 1
    return [
        f"policy {policy!r}: {n} rule(s) that Cilium v{version.value} drops at {node!r} "
        f"are masqueraded as {egress} by egressgw's own datapaths (egressgw agent)"
        for (policy, node, egress), n in sorted(counts.items())
    ]
