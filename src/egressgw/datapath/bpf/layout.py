"""Byte layouts of the tc program's maps, shared by the C source and user space.

NAT keys and values are Cilium's (bpf/lib/common.h ``struct ipv4_ct_tuple`` and
``ipv6_ct_tuple``, packed; bpf/lib/nat.h ``struct ipv4_nat_entry`` / ``ipv6_nat_entry``;
the Go side is pkg/maps/nat ``NatEntry4`` / ``NatEntry6``): addresses and ports in network
order, ``flags`` 0 = OUT, 1 = IN. The numpy dtypes below read whole batches at once.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import numpy as np

from egressgw.errors import ConfigError

from . import syscall as sc

TUPLE_F_OUT = 0
TUPLE_F_IN = 1
DROP_NAT_NO_MAPPING = 167  # Cilium's DROP_NAT_NO_MAPPING
DROP_NO_EGRESS_GW = 194  # Cilium's DROP_NO_EGRESS_GW
EVENT_REMAPPED = 1  # not a drop: a mid-stream TCP packet whose OUT entry was evicted
MAX_RETRIES = 128  # the largest SNAT_COLLISION_RETRIES of any version (histogram size - 1)

# What an entry saw (the value's pad2, see snat.bpf.c).
SEEN_FIN = 1
SEEN_RST = 2
SEEN_USED = 4  # carried a packet after the one that created it

KEY4 = np.dtype([("daddr", "V4"), ("saddr", "V4"), ("dport", ">u2"), ("sport", ">u2"),
                 ("nexthdr", "u1"), ("flags", "u1")])
KEY6 = np.dtype([("daddr", "V16"), ("saddr", "V16"), ("dport", ">u2"), ("sport", ">u2"),
                 ("nexthdr", "u1"), ("flags", "u1")])
VALUE4 = np.dtype([("created", "<u8"), ("needs_ct", "<u8"), ("last_used", "<u8"),
                   ("seen", "<u8"), ("addr", "V4"), ("port", ">u2"), ("pad", "V2")])
VALUE6 = np.dtype([("created", "<u8"), ("needs_ct", "<u8"), ("last_used", "<u8"),
                   ("seen", "<u8"), ("addr", "V16"), ("port", ">u2"), ("pad", "V6")])
assert (KEY4.itemsize, VALUE4.itemsize, KEY6.itemsize, VALUE6.itemsize) == (14, 40, 38, 56)

# Policy selection: LPM tries keyed by {prefixlen, source, destination}.
POLICY_MASQUERADE = 1
POLICY_EXCLUDED = 2
POLICY_NO_GATEWAY = 3
POLICY_KEY4 = struct.Struct("=I4s4s")
POLICY_KEY6 = struct.Struct("=I16s16s")
POLICY_VALUE4 = struct.Struct("=4sI")
POLICY_VALUE6 = struct.Struct("=16sI")
POLICY_MAX = 16384

SNAT_CONFIG = struct.Struct("=HHIII")  # min_port, max_port, retries, signal_thres, clamp
METRICS_VALUE = struct.Struct("=QQ")  # count, bytes
SIGNAL_MSG = struct.Struct("=II")  # signal_nr, proto
SIGNAL_NAT_FILL_UP = 0
RINGBUF_BYTES = 4096


@dataclass(frozen=True, slots=True)
class MapSpec:
    """One map of the program: its name in the object file and its shape."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


def map_specs(nat_max: int, *, distributed_lru: bool = False) -> tuple[MapSpec, ...]:
    """Every map the program uses; the NAT maps hold ``--bpf-nat-global-max`` entries, in
    one LRU shared by all CPUs or (``--bpf-distributed-lru``, Cilium 1.18) one per CPU."""
    lru = sc.BPF_F_NO_COMMON_LRU if distributed_lru else 0
    return (
        MapSpec("snat_v4", sc.MAP_TYPE_LRU_HASH, KEY4.itemsize, VALUE4.itemsize, nat_max, lru),
        MapSpec("snat_v6", sc.MAP_TYPE_LRU_HASH, KEY6.itemsize, VALUE6.itemsize, nat_max, lru),
        MapSpec("egress_v4", sc.MAP_TYPE_LPM_TRIE, POLICY_KEY4.size, POLICY_VALUE4.size,
                POLICY_MAX, sc.BPF_F_NO_PREALLOC),
        MapSpec("egress_v6", sc.MAP_TYPE_LPM_TRIE, POLICY_KEY6.size, POLICY_VALUE6.size,
                POLICY_MAX, sc.BPF_F_NO_PREALLOC),
        MapSpec("snat_config", sc.MAP_TYPE_ARRAY, 4, SNAT_CONFIG.size, 1),
        MapSpec("drop_metrics", sc.MAP_TYPE_PERCPU_ARRAY, 4, METRICS_VALUE.size, 256),
        MapSpec("retries_v4", sc.MAP_TYPE_PERCPU_ARRAY, 4, 4, MAX_RETRIES + 1),
        MapSpec("retries_v6", sc.MAP_TYPE_PERCPU_ARRAY, 4, 4, MAX_RETRIES + 1),
        MapSpec("signals", sc.MAP_TYPE_RINGBUF, 0, 0, RINGBUF_BYTES),
    )


@dataclass(frozen=True, slots=True)
class CiliumVersion:
    """What changed in nat.h's port search between Cilium versions.

    v1.16.2: ``(v % (u16)(end - start)) + start``, SNAT_COLLISION_RETRIES 128, signal
    above 64. v1.17.0 (commit 3621830f87): ``start + (((u32)v * (end - start + 1)) >> 16)``,
    still 128 and 64 (bpf/lib/nat.h at "Prepare for release v1.17.0"). v1.18:
    SNAT_COLLISION_RETRIES 32 (bpf/node_config.h), SNAT_SIGNAL_THRES = retries / 2.
    """

    name: str
    clamp: int  # 0: v1.16's modulo, 1: v1.17's multiply-shift
    retries: int
    signal_thres: int


CILIUM_VERSIONS = {
    "1.16": CiliumVersion("1.16", 0, 128, 64),
    "1.17": CiliumVersion("1.17", 1, 128, 64),
    "1.18": CiliumVersion("1.18", 1, 32, 16),
}


def cilium_version(name: str) -> CiliumVersion:
    try:
        return CILIUM_VERSIONS[name]
    except KeyError:
        raise ConfigError(f"{name!r}: expected one of {', '.join(CILIUM_VERSIONS)}",
                          field="--cilium-version") from None


def snat_config(min_port: int, max_port: int, version: CiliumVersion) -> bytes:
    return SNAT_CONFIG.pack(min_port, max_port, version.retries, version.signal_thres,
                            version.clamp)


def policy_entry(source: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 destination: ipaddress.IPv4Network | ipaddress.IPv6Network,
                 action: int,
                 egress_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
                 ) -> tuple[bytes, bytes]:
    """The LPM key (source fully, then the destination's prefix) and value of a rule."""
    if source.version == 4:
        key = POLICY_KEY4.pack(32 + destination.prefixlen, source.packed,
                               destination.network_address.packed)
        egress = egress_ip.packed if egress_ip is not None else bytes(4)
        return key, POLICY_VALUE4.pack(egress, action)
    key = POLICY_KEY6.pack(128 + destination.prefixlen, source.packed,
                           destination.network_address.packed)
    egress = egress_ip.packed if egress_ip is not None else bytes(16)
    return key, POLICY_VALUE6.pack(egress, action)
