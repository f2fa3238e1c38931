"""The NAT map read as Cilium reads it: batch lookups into arrays, IN entries counted.

``read_nat_map`` walks an LRU hash map with BPF_MAP_LOOKUP_BATCH into numpy record
arrays (pkg/maps/nat ``ApplyBatch4``/``ApplyBatch6`` walk it the same way);
``endpoint_counts`` is pkg/maps/nat/stats ``countNat``: IN entries of TCP, UDP and
ICMP (v4) or ICMPv6 (v6), the allocated port zeroed, counted per {proto, egress IP,
remote IP, remote port}; ``render_nat_list`` prints the entries exactly like
``cilium-dbg bpf nat list`` (pkg/maps/nat ``DumpEntriesWithTimeDiff``).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from egressgw.net import Family, NatEndpoint, Proto

from .layout import KEY4, KEY6, TUPLE_F_IN, VALUE4, VALUE6
from .syscall import BpfMap

BATCH = 8192
_PROTOS = {Family.IPV4: (Proto.TCP, Proto.UDP, Proto.ICMP),
           Family.IPV6: (Proto.TCP, Proto.UDP, Proto.ICMPV6)}


@dataclass(frozen=True, slots=True)
class NatTable:
    """Every entry of one family's NAT map: keys and values as record arrays."""

    family: Family
    keys: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def dtypes(family: Family) -> tuple[np.dtype[np.void], np.dtype[np.void]]:
    return (KEY4, VALUE4) if family is Family.IPV4 else (KEY6, VALUE6)


def read_nat_map(nat_map: BpfMap, family: Family) -> NatTable:
    """All entries, in BATCH-sized BPF_MAP_LOOKUP_BATCH calls."""
    key_t, value_t = dtypes(family)
    batch = BATCH
    # Raw bytes, joined once: np.concatenate would turn the big-endian port fields into
    # native ones, and the arrays must keep the map's own bytes (GC deletes by them).
    chunks_k: list[bytes] = []
    chunks_v: list[bytes] = []
    token_size = max(8, key_t.itemsize)
    token_in: ctypes.Array[ctypes.c_char] | None = None
    token_out = ctypes.create_string_buffer(token_size)
    keys = ctypes.create_string_buffer(batch * key_t.itemsize)
    values = ctypes.create_string_buffer(batch * value_t.itemsize)
    while True:
        try:
            n, done = nat_map.lookup_batch(keys, values, batch, token_in, token_out)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            batch *= 2  # a bucket holds more entries than the batch: retry bigger
            keys = ctypes.create_string_buffer(batch * key_t.itemsize)
            values = ctypes.create_string_buffer(batch * value_t.itemsize)
            continue
        if n:
            chunks_k.append(keys.raw[: n * key_t.itemsize])
            chunks_v.append(values.raw[: n * value_t.itemsize])
        if done:
            break
        token_in = ctypes.create_string_buffer(token_out.raw, token_size)
    return NatTable(family, np.frombuffer(b"".join(chunks_k), dtype=key_t),
                    np.frombuffer(b"".join(chunks_v), dtype=value_t))


def _ip(family: Family, raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(raw) if family is Family.IPV4 else ipaddress.IPv6Address(raw)


def endpoint_counts(table: NatTable) -> dict[NatEndpoint, int]:
    """Connections per nat-stats key: IN entries of the counted protocols."""
    keys = table.keys
    counted = np.isin(keys["nexthdr"], [int(p) for p in _PROTOS[table.family]])
    selected = keys[(keys["flags"] == TUPLE_F_IN) & counted].copy()
    if not len(selected):
        return {}
    selected["dport"] = 0  # Cilium zeroes the allocated port before counting
    # Whole keys as opaque bytes: numpy sorts those with memcmp, twenty times faster than
    # comparing a record field by field.
    opaque = selected.view(f"V{selected.dtype.itemsize}")
    unique_opaque, counts = np.unique(opaque, return_counts=True)
    unique = unique_opaque.view(selected.dtype)
    out: dict[NatEndpoint, int] = {}
    for key, n in zip(unique, counts, strict=True):
        proto = Proto(int(key["nexthdr"]))
        out[NatEndpoint(table.family, proto, _ip(table.family, bytes(key["daddr"])),
                        _ip(table.family, bytes(key["saddr"])), int(key["sport"]))] = int(n)
    return out


def monotonic_seconds() -> int:
    """The clock the program stamps entries with (bpf_ktime_get_ns: CLOCK_MONOTONIC)."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


def _addr(family: Family, raw: bytes, port: int) -> str:
    ip = _ip(family, raw)
    return f"[{ip}]:{port}" if family is Family.IPV6 else f"{ip}:{port}"


def iter_nat_list(table: NatTable, now: int | None = None) -> Iterator[str]:
    """The lines ``cilium-dbg bpf nat list`` prints for these entries (with newline).

    ``TCP OUT saddr:sport -> daddr:dport XLATE_SRC addr:port Created=Nsec ago NeedsCT=N``
    (pkg/tuple ``TupleKey4Global.Dump`` then ``NatEntry4.Dump``); IN lines say
    ``XLATE_DST``. Entries with protocol 0 are skipped, as Cilium skips them.
    """
    now = monotonic_seconds() if now is None else now
    fam = table.family
    for key, value in zip(table.keys, table.values, strict=True):
        nexthdr = int(key["nexthdr"])
        if nexthdr == 0:
            continue
        try:
            proto = Proto(nexthdr).label
        except ValueError:
            proto = str(nexthdr)
        inbound = int(key["flags"]) & TUPLE_F_IN
        src = _addr(fam, bytes(key["saddr"]), int(key["sport"]))
        dst = _addr(fam, bytes(key["daddr"]), int(key["dport"]))
        xlate = _addr(fam, bytes(value["addr"]), int(value["port"]))
        ago = now - int(value["created"])
        yield (f"{proto} {'IN' if inbound else 'OUT'} {src} -> {dst} "
               f"XLATE_{'DST' if inbound else 'SRC'} {xlate} Created={ago}sec ago "
               f"NeedsCT={int(value['needs_ct'])}\n")
