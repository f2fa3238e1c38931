"""BpfDatapath: Cilium's SNAT as a tc program on the gateway's uplink, its NAT map the table.

``apply`` loads and attaches the program on first use (or finds it pinned and attached,
after a restart) and replaces the policy maps' contents, without reloading the program.
``endpoint_counts`` walks the NAT maps as Cilium's nat-stats does;
``allocation_failures`` reads the per-CPU drop counters (reason 167).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from egressgw.config import NodePortRange
from egressgw.errors import ConfigError, DatapathError
from egressgw.net import Family, NatEndpoint
from egressgw.rules import EgressRule, RuleKind

from . import layout
from .gc import CtTimeouts, GcSchedule, collect_garbage
from .loader import (
    PinnedMaps,
    attach,
    attached,
    detach,
    load_programs,
    remove_pins,
)
from .natmap import NatTable, endpoint_counts, read_nat_map
from .pins import BPFFS_DIR, ensure_bpffs, pin_name, uplink_state_path
from .signals import SignalReader
from .syscall import BpfMap, possible_cpus

log = logging.getLogger(__name__)

NAT_GLOBAL_MAX_DEFAULT = 524288  # Cilium's --bpf-nat-global-max
NO_MAPPING_REASON = "No mapping for NAT masquerade"
NO_GATEWAY_REASON = "No egress gateway found"
# A connection broken by eviction: its next packet found no OUT entry and got a new port.
REMAPPED_REASON = "NAT entry evicted, connection re-mapped"


@dataclass(frozen=True, slots=True)
class BpfSettings:
    """What the BPF datapath is told on the command line."""

    node_port_range: NodePortRange = field(default_factory=NodePortRange)
    nat_global_max: int = NAT_GLOBAL_MAX_DEFAULT
    cilium_version: str = "1.16"
    # Cilium 1.18's --bpf-distributed-lru: the NAT maps get BPF_F_NO_COMMON_LRU.
    distributed_lru: bool = False
    device: str | None = None  # the uplink; None: the device holding the egress IPs
    netns: str | None = None  # run tc there (the lab); None: this process's namespace
    bpffs: Path = BPFFS_DIR

    def __post_init__(self) -> None:
        layout.cilium_version(self.cilium_version)
        if self.distributed_lru and self.cilium_version != "1.18":
            raise ConfigError("a Cilium 1.18 flag: needs --cilium-version 1.18",
                              field="--bpf-distributed-lru")
        if not 1 <= self.nat_global_max <= 1 << 24:
            raise ConfigError(f"{self.nat_global_max}: must be between 1 and {1 << 24}",
                              field="--bpf-nat-global-max")

    @property
    def pin_dir(self) -> Path:
        return self.bpffs / pin_name(self.netns)


class BpfDatapath:
    """The tc program as the datapath of one gateway node (optionally in a netns)."""

    def __init__(self, settings: BpfSettings, *, create: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``create=False``: only read what is pinned (never create or configure)."""
        self.settings = settings
        self.create = create
        self._clock = clock
        self.gc_schedule = GcSchedule(clock())
        self.pin_dir = settings.pin_dir
        self._maps: PinnedMaps | None = None
        self._signals: SignalReader | None = None
        self.signals_handled = 0
        self.gc_runs = 0
        self.gc_deleted = 0

    # -- setting up ---------------------------------------------------------------------

    @property
    def maps(self) -> PinnedMaps:
        if self._maps is None:
            if not self.create:
                self._maps = PinnedMaps.open_existing(self.pin_dir)
            else:
                ensure_bpffs(self.settings.bpffs)
                self._maps = PinnedMaps.open_or_create(
                    self.pin_dir, self.settings.nat_global_max,
                    distributed_lru=self.settings.distributed_lru)
        return self._maps

    def configure(self) -> None:
        """The port range and the version's search parameters, read by every packet."""
        version = layout.cilium_version(self.settings.cilium_version)
        ports = self.settings.node_port_range
        self.maps["snat_config"].update(
            bytes(4), layout.snat_config(ports.nat_min, ports.nat_max, version))

    def _state_path(self) -> Path:
        return uplink_state_path(self.pin_dir)

    def _uplink(self, rules: Sequence[EgressRule]) -> str:
        if self.settings.device:
            return self.settings.device
        for rule in rules:
            if rule.kind is RuleKind.MASQUERADE and rule.egress_ip is not None:
                device = device_holding(rule.egress_ip, self.settings.netns)
                if device:
                    return device
        state = self._state_path()
        if state.exists():  # attached before (rules without egress IPs say nothing)
            return str(json.loads(state.read_text())["device"])
        raise DatapathError("cannot tell the uplink: no egress IP of the rules is on a "
                            "device here; name it with --bpf-device")

    def ensure_attached(self, device: str) -> None:
        """Load and attach the program unless it already is (a restarted agent)."""
        maps = self.maps
        progs = maps.pin_dir / "progs"
        if progs.exists() and attached(device, self.settings.netns):
            return
        load_programs(maps.pin_dir)
        attach(maps.pin_dir, device, self.settings.netns)
        self._state_path().write_text(json.dumps({"device": device,
                                                  "netns": self.settings.netns}))
        log.info("BPF SNAT attached to %s (pins in %s)", device, maps.pin_dir)

    # -- the Datapath interface -------------------------------------------------------------

    def apply(self, rules: Sequence[EgressRule]) -> None:
        """Attach if needed, then make the policy maps hold exactly ``rules``."""
        device = self._uplink(rules)
        self.configure()
        self.ensure_attached(device)
        wanted: dict[Family, dict[bytes, bytes]] = {Family.IPV4: {}, Family.IPV6: {}}
        for rule in rules:
            action = {RuleKind.MASQUERADE: layout.POLICY_MASQUERADE,
                      RuleKind.EXCLUDED: layout.POLICY_EXCLUDED,
                      RuleKind.NO_GATEWAY: layout.POLICY_NO_GATEWAY}[rule.kind]
            if rule.kind is RuleKind.MASQUERADE and rule.egress_ip is None:
                action = layout.POLICY_NO_GATEWAY
            key, value = layout.policy_entry(rule.source_ip, rule.destination, action,
                                             rule.egress_ip)
            wanted[rule.family].setdefault(key, value)
        for family, name in ((Family.IPV4, "egress_v4"), (Family.IPV6, "egress_v6")):
            policy = self.maps[name]
            # Add and change first, then delete what is gone: a packet never sees a
            # policy missing that both the old and the new rules have.
            for key, value in wanted[family].items():
                policy.update(key, value)
            for key in policy.all_keys():
                if key not in wanted[family]:
                    policy.delete(key)

    def nat_tables(self) -> list[NatTable]:
        return [read_nat_map(self.maps["snat_v4"], Family.IPV4),
                read_nat_map(self.maps["snat_v6"], Family.IPV6)]

    def endpoint_counts(self) -> Mapping[NatEndpoint, int]:
        self.handle_signals()
        counts: dict[NatEndpoint, int] = {}
        for table in self.nat_tables():
            counts.update(endpoint_counts(table))
        return counts

    def drop_counts(self) -> Mapping[str, int]:
        """Drops by Cilium's reason text, summed over CPUs."""
        totals = per_cpu_sum(self.maps["drop_metrics"], layout.METRICS_VALUE.size)
        return {NO_MAPPING_REASON: totals.get(layout.DROP_NAT_NO_MAPPING, 0),
                NO_GATEWAY_REASON: totals.get(layout.DROP_NO_EGRESS_GW, 0)}

    def allocation_failures(self) -> Mapping[str, int]:
        """Refused allocations (reason 167) and connections broken by an eviction.

        The agent reads these every poll, so this is also where signals are handled and
        where the periodic GC pass runs when due.
        """
        self.handle_signals()
        if self.create and self.gc_schedule.due(self._clock()):
            self.collect_garbage()
        totals = per_cpu_sum(self.maps["drop_metrics"], layout.METRICS_VALUE.size)
        return {NO_MAPPING_REASON: totals.get(layout.DROP_NAT_NO_MAPPING, 0),
                REMAPPED_REASON: totals.get(layout.EVENT_REMAPPED, 0)}

    def retries_histogram(self, family: Family = Family.IPV4) -> dict[int, int]:
        """Allocations by tries used (Cilium v1.18's alloc_retries), summed over CPUs."""
        name = "retries_v4" if family is Family.IPV4 else "retries_v6"
        return {k: v for k, v in per_cpu_sum(self.maps[name], 4).items() if v}

    def handle_signals(self) -> int:
        """Read nat_fill_up signals; any signal runs one GC pass, as Cilium's agent does.

        Only the datapath's owner (the agent) consumes them: a reader (``create=False``)
        leaves the ring buffer to it.
        """
        if not self.create:
            return 0
        if self._signals is None:
            self._signals = SignalReader(self.maps["signals"])
        got = len(self._signals.read())
        if got:
            self.signals_handled += got
            self.collect_garbage(purge_orphans=True)
        return got

    def collect_garbage(self, *, purge_orphans: bool = False,
                        timeouts: CtTimeouts | None = None, now: int | None = None) -> int:
        """One GC pass over both NAT maps (``now``: monotonic seconds, for tests)."""
        deleted = 0
        for name, family in (("snat_v4", Family.IPV4), ("snat_v6", Family.IPV6)):
            deleted += collect_garbage(self.maps[name], family, timeouts or CtTimeouts(),
                                       purge_orphans=purge_orphans, now=now)
        self.gc_runs += 1
        self.gc_deleted += deleted
        self.gc_schedule.after_pass(self._clock(), deleted, self.settings.nat_global_max)
        if deleted:
            log.info("NAT GC: %d entries of expired connections deleted", deleted)
        return deleted

    def cleanup(self) -> None:
        """Detach the program and remove every pin (maps and programs go with them)."""
        state = self._state_path()
        device = self.settings.device
        netns = self.settings.netns
        if state.exists():
            recorded = json.loads(state.read_text())
            device = device or recorded.get("device")
        if device:
            detach(device, netns)
        self.close()
        remove_pins(self.pin_dir)
        state.unlink(missing_ok=True)

    def close(self) -> None:
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        if self._maps is not None:
            self._maps.close()
            self._maps = None


def per_cpu_sum(percpu: BpfMap, value_size: int) -> dict[int, int]:
    """Index -> the first u64/u32 field summed over possible CPUs, for a per-CPU array."""
    slot = (value_size + 7) // 8 * 8
    width = 8 if value_size >= 8 else 4
    cpus = possible_cpus()
    out: dict[int, int] = {}
    for index in range(percpu.info.max_entries):
        raw = percpu.lookup(index.to_bytes(4, "little"))
        if raw is None:
            continue
        total = sum(int.from_bytes(raw[c * slot: c * slot + width], "little")
                    for c in range(cpus))
        if total:
            out[index] = total
    return out


def device_holding(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                   netns: str | None) -> str | None:
    """The device that holds ``ip`` (``ip -j addr``), in ``netns`` or here."""
    argv = ["ip", *(("-n", netns) if netns else ()), "-j", "addr", "show"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    for link in json.loads(done.stdout or "[]"):
        for addr in link.get("addr_info", []):
            if ipaddress.ip_address(addr.get("local", "0.0.0.0")) == ip:
                return str(link.get("ifname"))
    return None


if TYPE_CHECKING:  # BpfDatapath must keep satisfying the Datapath protocol.
    from egressgw.datapath.base import Datapath

    _conforms: Datapath = BpfDatapath(BpfSettings())
