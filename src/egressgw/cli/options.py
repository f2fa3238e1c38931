"""Flags that several commands share, named and validated as Cilium names them.

Each flag parses into its value type here (``NodePortRange``, seconds, a checked K), so
every command reports a bad value the same way: ``egressgw: error: --flag: ...``, exit 2.
Other duration flags take ``callback=parse_duration_flag``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from egressgw.config import (
    NAT_MAP_STATS_ENTRIES_DEFAULT,
    NodePortRange,
    check_stats_entries,
    parse_duration,
)
from egressgw.limits import NatPortRange

F = TypeVar("F", bound=Callable[..., Any])


def _flag(param: click.Parameter) -> str:
    return max(param.opts, key=len) if param.opts else str(param.name)


# Parsing happens in option callbacks (stable across click versions, unlike ParamType's
# generic signature); a bad value raises ConfigError naming the flag.


def parse_node_port_range(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> NodePortRange | None:
    """``MIN,MAX`` into a :class:`NodePortRange`."""
    return None if value is None else NodePortRange.parse(value)


def parse_nat_port_range(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> NatPortRange | None:
    """``MIN-MAX`` into a :class:`NatPortRange`."""
    return None if value is None else NatPortRange.parse(value)


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave parameter ``name`` (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source is not click.core.ParameterSource.DEFAULT


def parse_duration_flag(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> float | None:
    """A Go-style duration (``30s``, ``5m``, ``1h30m``) into seconds."""
    return None if value is None else parse_duration(value, field=_flag(param))


def parse_stats_entries(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """``--nat-map-stats-entries``: Cilium accepts 1..4096."""
    return check_stats_entries(value)


def node_port_range_option(
    help: str = "NodePorts (Cilium's --node-port-range); NAT source ports are MAX+1..65535.",
) -> Callable[[F], F]:
    return click.option(
        "--node-port-range",
        default=str(NodePortRange()),
        metavar="MIN,MAX",
        callback=parse_node_port_range,
        show_default=True,
        help=help,
    )


def nat_port_range_option(
    help: str = "Linux gateways: the ports the SNAT rule hands out (nft `snat to IP:MIN-MAX`); "
    "the saturation limit. Default for conntrack dumps: Linux's masquerade range 1024-65535, "
    "or egressgw's rule (MAX+1-65535) when --node-port-range is given.",
) -> Callable[[F], F]:
    return click.option(
        "--nat-port-range",
        default=None,
        metavar="MIN-MAX",
        callback=parse_nat_port_range,
        help=help,
    )


def nat_map_stats_entries_option(
    help: str = "Top tuples kept per family (1..4096).",
) -> Callable[[F], F]:
    return click.option(
        "--nat-map-stats-entries",
        type=int,
        default=NAT_MAP_STATS_ENTRIES_DEFAULT,
        metavar="K",
        callback=parse_stats_entries,
        show_default=True,
        help=help,
    )


def nat_map_stats_interval_option(
    help: str = "Time between nat-stats passes; 0 disables them.",
) -> Callable[[F], F]:
    return click.option(
        "--nat-map-stats-interval",
        default="30s",
        metavar="DURATION",
        callback=parse_duration_flag,
        show_default=True,
        help=help,
    )


# The versions whose port search the model (datapath/model/ports.py) and the BPF datapath
# (datapath/bpf/layout.py) reproduce; kept as a literal here so the CLI does not import
# the model to build its options.
CILIUM_VERSIONS = ("1.16", "1.17", "1.18")


def cilium_version_option(
    help: str = "Cilium version of the model datapath: its port arithmetic, retries and "
                "signal threshold (1.16: modulo clamp, 128 retries; 1.17: multiply-shift "
                "clamp, 128; 1.18: multiply-shift, 32).",
) -> Callable[[F], F]:
    return click.option(
        "--cilium-version",
        type=click.Choice(CILIUM_VERSIONS),
        default=CILIUM_VERSIONS[0],
        show_default=True,
        help=help,
    )


def nat_lru_options(func: F) -> F:
    """The model datapath's NAT map LRU: ``--nat-lru``, ``--possible-cpus``,
    ``--flow-cpus`` and Cilium 1.18's ``--bpf-distributed-lru`` (ModelConfig checks them)."""
    options = [
        click.option("--nat-lru", type=click.Choice(["exact", "kernel"]), default="exact",
                     show_default=True,
                     help="NAT map LRU: exact, or the kernel's BPF LRU (batch evictions, "
                          "reference bits, per-CPU free lists; slower: Python engine)."),
        click.option("--possible-cpus", type=click.IntRange(1, 8192), default=8,
                     show_default=True, help="CPUs the kernel LRU spreads its free lists over."),
        click.option("--flow-cpus", type=click.Choice(["hash", "one"]), default="hash",
                     show_default=True,
                     help="Which CPU runs a flow's packets: a hash of the tuple per direction, "
                          "or all on one CPU."),
        click.option("--bpf-distributed-lru", is_flag=True,
                     help="Cilium 1.18's per-CPU LRU (BPF_F_NO_COMMON_LRU); needs "
                          "--nat-lru kernel and --cilium-version 1.18."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def output_option(*formats: str, help: str = "Output format.") -> Callable[[F], F]:
    """``-o/--output`` with the first format as the default."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(list(formats)),
        default=formats[0],
        show_default=True,
        help=help,
    )


def policy_cilium_version_option() -> Callable[[F], F]:
    """``--cilium-version`` of ``egress list``: the CRD schema policies are checked against
    and the Cilium whose policy map is predicted (newest by default: a cluster's map)."""
    from egressgw.policy.cilium import (  # noqa: PLC0415 (keeps this module light)
        DEFAULT_CILIUM_VERSION,
        CiliumVersion,
    )

    def convert(_ctx: click.Context, _param: click.Parameter, value: str) -> CiliumVersion:
        return CiliumVersion(value)

    return click.option(
        "--cilium-version",
        type=click.Choice(CILIUM_VERSIONS),
        default=DEFAULT_CILIUM_VERSION.value,
        show_default=True,
        callback=convert,
        help="Cilium version whose CRD schema and egress gateway to follow.",
    )


def bpf_nat_global_max_option(
    help: str = "Entries of the BPF NAT map (2 per connection), as Cilium's flag.",
) -> Callable[[F], F]:
    return click.option(
        "--bpf-nat-global-max",
        type=click.IntRange(1, 1 << 24),
        default=524288,
        show_default=True,
        help=help,
    )


# The flags that configure only Cilium's datapath (the model's BPF engines, or the BPF
# program) and what each sets. A Linux gateway (``--datapath-model netfilter``, the agent's
# ``--datapath kernel``) reads none of them: netfilter.py takes only the SNAT rule's range
# (--nat-port-range / --node-port-range) and Linux's nf_conntrack limits and timeouts, has
# no LRU (a full table drops, it evicts nothing) and no Cilium CT GC (an entry is gone the
# moment it expires); sim/plan.py's steady_gc_interval returns 0 for it. The nat-stats
# flags and the ranges apply to both and are not listed.
CILIUM_ONLY_FLAGS: dict[str, str] = {
    "nat_lru": "the BPF NAT map's LRU",
    "possible_cpus": "the CPUs of the BPF LRU's free lists",
    "flow_cpus": "the CPU that runs a flow's packets in the BPF LRU",
    "bpf_distributed_lru": "Cilium 1.18's per-CPU BPF LRU",
    "bpf_nat_global_max": "the size of Cilium's BPF NAT map",
    "conntrack_gc_interval": "Cilium's CT garbage collection",
    "bpf_ct_global_tcp_max": "the size of Cilium's TCP CT map, which paces its GC",
    "bpf_ct_global_any_max": "the size of Cilium's non-TCP CT map, which paces its GC",
    "bpf_device": "the uplink of the BPF program",
}

# How each command names a Linux gateway's datapath, and its Cilium one, for the message.
LINUX_GATEWAYS = {
    "netfilter": ("--datapath-model netfilter, or conntrack snapshots",
                  "--datapath-model cilium"),
    "kernel": ("--datapath kernel", "--datapath model or bpf"),
}


def check_linux_gateway_flags(datapath_model: str | None, *, policy_form: bool = False) -> None:
    """Cilium-only flags given where the datapath is a Linux gateway's nf_nat.

    --cilium-version chooses Cilium's port search (nat.h's clamp and retries), the flags
    in ``CILIUM_ONLY_FLAGS`` its NAT map, LRU and CT GC; a Linux gateway's nf_nat
    (``--datapath-model netfilter``, snapshots that are conntrack tables, or the agent's
    ``--datapath kernel``) has none of them. Each, given explicitly there, is a one-line
    error naming it (ConfigError, exit 2), so a curve, simulation or agent never silently
    runs with a setting it ignores; defaults pass. Where the command also writes
    CiliumEgressGatewayPolicy YAML (``policy_form``: plan), --cilium-version still chooses
    the policy's form, and a note on stderr says so. Only the flags the command has are
    looked at; outside a command (no click context) nothing is checked."""
    ctx = click.get_current_context(silent=True)
    if datapath_model not in LINUX_GATEWAYS or ctx is None:
        return
    from egressgw.errors import ConfigError  # noqa: PLC0415

    where, cilium = LINUX_GATEWAYS[datapath_model]
    for name, what in CILIUM_ONLY_FLAGS.items():
        if given(ctx, name):
            # Only the BPF program has an uplink; the agent's model datapath has none.
            instead = "--datapath bpf" if name == "bpf_device" else cilium
            raise ConfigError(f"sets {what}; the datapath here is a Linux gateway's nf_nat "
                              f"({where}), which has none; leave the flag out, or use "
                              f"{instead}", field="--" + name.replace("_", "-"))
    if given(ctx, "cilium_version"):
        version = ctx.params.get("cilium_version")
        if policy_form:
            click.echo(f"note: --cilium-version {version} sets only the form of the policy "
                       "YAML here; the port search is a Linux gateway's nf_nat "
                       "(--datapath-model netfilter)", err=True)
        else:
            raise ConfigError(f"{version}: the port search here is a Linux gateway's nf_nat "
                              f"({where}), which has no Cilium version; leave the flag out, "
                              f"or use {cilium}", field="--cilium-version")
