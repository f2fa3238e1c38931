"""``ModelConfig``: the Cilium settings the model datapath reproduces, by flag name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from egressgw.config import NodePortRange
from egressgw.datapath.model.natmap import FLOW_CPU_KINDS, NAT_LRU_KINDS
from egressgw.datapath.model.ports import CILIUM_VERSIONS, Clamp, PortSearch, port_search
from egressgw.errors import ConfigError
from egressgw.limits import DATAPATH_KINDS, NatPortRange

# pkg/option: LimitTableMin / LimitTableMax bound --bpf-nat-global-max.
NAT_MAP_MIN = 1 << 10
NAT_MAP_MAX = 1 << 24

# pkg/option: CTMapEntriesGlobalTCPDefault (2 << 18), CTMapEntriesGlobalAnyDefault (2 << 17).
CT_MAP_TCP_DEFAULT = 524288
CT_MAP_ANY_DEFAULT = 262144

# Not a Cilium setting: how long the model takes a CT GC pass to be (see ModelConfig).
GC_PASS_SECONDS = 1.0

# Linux: TCP_TIMEOUT_INIT (1 s), net.ipv4.tcp_syn_retries (6).
TCP_SYN_RTO = 1.0
TCP_SYN_RETRIES = 6


def _positive(value: float, flag: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{value}: must be a positive number of seconds", field=flag)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the model datapath is configured with, named after Cilium's flags.

    ``snat_collision_retries`` and ``snat_signal_thres`` default to the values of
    ``cilium_version``; set them to override.
    """

    node_port_range: NodePortRange = field(default_factory=NodePortRange)
    bpf_nat_global_max: int = 524288
    cilium_version: str = "1.16"  # one of ports.CILIUM_VERSIONS
    snat_collision_retries: int | None = None
    snat_signal_thres: int | None = None
    ct_timeout_tcp: float = 8000.0
    ct_timeout_syn: float = 60.0
    ct_timeout_fin: float = 10.0
    ct_timeout_any: float = 60.0
    conntrack_gc_interval: float | None = None
    conntrack_gc_max_interval: float | None = None
    bpf_ct_global_tcp_max: int = CT_MAP_TCP_DEFAULT
    bpf_ct_global_any_max: int = CT_MAP_ANY_DEFAULT
    # Not a Cilium flag: how long a CT GC pass takes. The GC goroutine mutes the
    # nat_fill_up signal from the moment it wakes until the pass is done (gc.go:
    # MuteSignals / UnmuteSignals); signals sent meanwhile are dropped.
    gc_pass_seconds: float = GC_PASS_SECONDS
    # The NAT map's LRU (natmap.py): "exact", or "kernel" for BPF_MAP_TYPE_LRU_HASH as the
    # kernel implements it, which depends on the CPUs the datapath runs on: the number of
    # possible CPUs, and how packets map to CPUs ("hash": each direction of a flow on a CPU
    # chosen by a hash of its tuple, as receive-side scaling does; "one": all on CPU 0).
    nat_lru: str = "exact"
    possible_cpus: int = 8
    flow_cpus: str = "hash"
    # Cilium 1.18's --bpf-distributed-lru: BPF_F_NO_COMMON_LRU, one LRU per CPU.
    bpf_distributed_lru: bool = False
    # Which datapath the model reproduces: "cilium" (the engines above, Cilium v1.16's
    # BPF SNAT) or "netfilter" (a Linux gateway: nf_nat and conntrack, netfilter.py).
    datapath_model: str = "cilium"
    # netfilter: the SNAT rule's ports (default: egressgw's rule, NodePortMax+1..65535).
    nat_port_range: NatPortRange | None = None
    # netfilter: Linux's defaults (sysctl net.netfilter.nf_conntrack_*).
    nf_conntrack_max: int = 262144
    nf_tcp_timeout_syn_sent: float = 120.0
    nf_tcp_timeout_established: float = 432000.0
    nf_tcp_timeout_time_wait: float = 120.0
    nf_tcp_timeout_close: float = 10.0
    nf_udp_timeout: float = 30.0
    nf_udp_timeout_stream: float = 120.0
    nf_icmp_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.datapath_model not in DATAPATH_KINDS:
            raise ConfigError(
                f"{self.datapath_model!r}: expected one of {', '.join(DATAPATH_KINDS)}",
                field="--datapath-model",
            )
        if self.nat_port_range is not None and self.datapath_model != "netfilter":
            raise ConfigError(f"{self.nat_port_range}: only the netfilter model has an "
                              "SNAT rule range", field="--nat-port-range")
        if self.nf_conntrack_max < 1:
            raise ConfigError(f"{self.nf_conntrack_max}: must be at least 1",
                              field="nf_conntrack_max")
        for name in ("nf_tcp_timeout_syn_sent", "nf_tcp_timeout_established",
                     "nf_tcp_timeout_time_wait", "nf_tcp_timeout_close", "nf_udp_timeout",
                     "nf_udp_timeout_stream", "nf_icmp_timeout"):
            _positive(getattr(self, name), name)
        self._check_cilium()

    @property
    def snat_port_range(self) -> NatPortRange:
        """netfilter: the ports the SNAT rule hands out."""
        return self.nat_port_range or NatPortRange.of_node_ports(self.node_port_range)

    def _check_cilium(self) -> None:
        if self.cilium_version not in CILIUM_VERSIONS:
            raise ConfigError(
                f"{self.cilium_version!r}: expected one of {', '.join(CILIUM_VERSIONS)}",
                field="--cilium-version",
            )
        if self.nat_lru not in NAT_LRU_KINDS:
            raise ConfigError(
                f"{self.nat_lru!r}: expected one of {', '.join(NAT_LRU_KINDS)}", field="--nat-lru"
            )
        if self.flow_cpus not in FLOW_CPU_KINDS:
            raise ConfigError(
                f"{self.flow_cpus!r}: expected one of {', '.join(FLOW_CPU_KINDS)}",
                field="--flow-cpus",
            )
        if not 1 <= self.possible_cpus <= 8192:
            raise ConfigError(f"{self.possible_cpus}: must be between 1 and 8192",
                              field="--possible-cpus")
        if self.bpf_distributed_lru and self.nat_lru != "kernel":
            raise ConfigError("needs --nat-lru kernel (the exact LRU has no per-CPU form)",
                              field="--bpf-distributed-lru")
        if self.bpf_distributed_lru and self.cilium_version in ("1.16", "1.17"):
            raise ConfigError(f"Cilium {self.cilium_version} has no such flag (1.18 added it)",
                              field="--bpf-distributed-lru")
        if self.node_port_range.max > 65533:
            raise ConfigError(
                f"{self.node_port_range}: the NAT range above it needs at least 2 ports "
                "(MAX <= 65533)",
                field="--node-port-range",
            )
        if not NAT_MAP_MIN <= self.bpf_nat_global_max <= NAT_MAP_MAX:
            raise ConfigError(
                f"{self.bpf_nat_global_max}: must be between {NAT_MAP_MIN} and {NAT_MAP_MAX}",
                field="--bpf-nat-global-max",
            )
        if self.snat_collision_retries is not None and not self.snat_collision_retries >= 1:
            raise ConfigError(
                f"{self.snat_collision_retries}: must be at least 1",
                field="snat-collision-retries",
            )
        if self.snat_signal_thres is not None and self.snat_signal_thres < 0:
            raise ConfigError(
                f"{self.snat_signal_thres}: must not be negative", field="snat-signal-thres"
            )
        _positive(self.ct_timeout_tcp, "--bpf-ct-timeout-regular-tcp")
        _positive(self.ct_timeout_syn, "--bpf-ct-timeout-regular-tcp-syn")
        _positive(self.ct_timeout_fin, "--bpf-ct-timeout-regular-tcp-fin")
        _positive(self.ct_timeout_any, "--bpf-ct-timeout-regular-any")
        if self.conntrack_gc_interval is not None:
            _positive(self.conntrack_gc_interval, "--conntrack-gc-interval")
        if self.conntrack_gc_max_interval is not None:
            _positive(self.conntrack_gc_max_interval, "--conntrack-gc-max-interval")
        for value, flag in ((self.bpf_ct_global_tcp_max, "--bpf-ct-global-tcp-max"),
                            (self.bpf_ct_global_any_max, "--bpf-ct-global-any-max")):
            if not NAT_MAP_MIN <= value <= NAT_MAP_MAX:  # LimitTableMin..LimitTableMax
                raise ConfigError(
                    f"{value}: must be between {NAT_MAP_MIN} and {NAT_MAP_MAX}", field=flag
                )
        if not (math.isfinite(self.gc_pass_seconds) and self.gc_pass_seconds >= 0):
            raise ConfigError(
                f"{self.gc_pass_seconds}: must be a non-negative number of seconds",
                field="gc-pass-seconds",
            )

    @property
    def port_search(self) -> PortSearch:
        """The version's port arithmetic, retries and signal threshold (``ports.py``)."""
        return port_search(self.cilium_version)

    @property
    def clamp(self) -> Clamp:
        """The version's ``__snat_clamp_port_range``."""
        return self.port_search.clamp

    @property
    def retries(self) -> int:
        """SNAT_COLLISION_RETRIES in force."""
        if self.snat_collision_retries is not None:
            return self.snat_collision_retries
        return self.port_search.retries

    @property
    def signal_thres(self) -> int:
        """SNAT_SIGNAL_THRES in force."""
        if self.snat_signal_thres is not None:
            return self.snat_signal_thres
        return self.port_search.signal_thres

    @property
    def port_min(self) -> int:
        return self.node_port_range.nat_min

    @property
    def port_max(self) -> int:
        return self.node_port_range.nat_max
