"""Connection tracking for the BPF NAT map: Cilium's CT timeouts over entry timestamps.

Cilium keeps a CT map beside the NAT map and its agent's GC deletes the NAT entries of
expired CT entries (pkg/maps/ctmap/gc). Here the program stamps each NAT entry with the
last time a packet used it and the TCP FIN/RST it saw (the value's pad words), and this
pass applies Cilium's lifetimes (bpf/lib/conntrack.h, v1.16.2) to a connection = its OUT
entry and the IN entry it points to:

- TCP once a reply was seen: 8000 s after the last packet (``--bpf-ct-timeout-regular-tcp``);
  both directions closing (FIN or RST seen each way): 10 s (CT_CLOSE_TIMEOUT);
- TCP without a reply (the SYN): 60 s (``--bpf-ct-timeout-regular-tcp-syn``);
- anything else: 60 s (``--bpf-ct-timeout-regular-any``).

An expired connection loses both entries. A lone entry (its partner was evicted) keeps
its own lifetime, as its CT entry would in Cilium.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from egressgw.net import Family, Proto

from .layout import SEEN_FIN, SEEN_RST, SEEN_USED, TUPLE_F_IN
from .natmap import monotonic_seconds, read_nat_map
from .syscall import BpfMap


@dataclass(frozen=True, slots=True)
class CtTimeouts:
    tcp: int = 8000
    tcp_syn: int = 60
    close: int = 10
    any: int = 60


def collect_garbage(nat_map: BpfMap, family: Family, timeouts: CtTimeouts, *,
                    purge_orphans: bool = False, now: int | None = None) -> int:
    """Delete the entries of expired connections; returns how many were deleted.

    ``purge_orphans`` is accepted for Cilium's signal-triggered pass; with CT derived
    from the NAT entries themselves no entry lacks its CT state, so it changes nothing.
    """
    del purge_orphans
    now = monotonic_seconds() if now is None else now
    table = read_nat_map(nat_map, family)
    if not len(table):
        return 0
    keys, values = table.keys, table.values
    inbound = (keys["flags"] & TUPLE_F_IN) != 0
    # The partner of each OUT entry is its IN key; of each IN entry, its OUT key.
    partner = keys.copy()
    out_idx = ~inbound
    partner["flags"][out_idx] = TUPLE_F_IN
    partner["saddr"][out_idx] = keys["daddr"][out_idx]
    partner["daddr"][out_idx] = values["addr"][out_idx]
    partner["sport"][out_idx] = keys["dport"][out_idx]
    partner["dport"][out_idx] = values["port"][out_idx]
    partner["flags"][inbound] = 0
    partner["daddr"][inbound] = keys["saddr"][inbound]
    partner["saddr"][inbound] = values["addr"][inbound]
    partner["dport"][inbound] = keys["sport"][inbound]
    partner["sport"][inbound] = values["port"][inbound]
    partner_at = find_keys(keys, partner)
    has = partner_at >= 0
    p_seen = np.where(has, values["seen"][np.maximum(partner_at, 0)], 0)
    p_last = np.where(has, values["last_used"][np.maximum(partner_at, 0)], 0)
    last = np.maximum(values["last_used"], p_last).astype(np.int64)
    seen, closing = values["seen"], SEEN_FIN | SEEN_RST
    tcp = keys["nexthdr"] == int(Proto.TCP)
    both_closing = ((seen & closing) != 0) & ((p_seen & closing) != 0)
    in_seen = np.where(inbound, seen, p_seen)
    replied = (in_seen & SEEN_USED) != 0
    lifetime = np.where(tcp, np.where(both_closing, timeouts.close,
                                      np.where(replied, timeouts.tcp, timeouts.tcp_syn)),
                        timeouts.any)
    expired = last + lifetime < now
    doomed = keys[expired].tobytes()
    deleted = 0
    step = DELETE_BATCH * keys.dtype.itemsize
    for start in range(0, len(doomed), step):
        chunk = doomed[start:start + step]
        deleted += nat_map.delete_batch(chunk, len(chunk) // keys.dtype.itemsize)
    return deleted


DELETE_BATCH = 8192


def _words(rows: np.ndarray) -> list[np.ndarray]:
    """Each row's bytes as big-endian 64-bit integers (zero-padded), for exact sorting."""
    width = rows.dtype.itemsize
    raw = np.frombuffer(np.ascontiguousarray(rows).tobytes(), np.uint8).reshape(-1, width)
    padded = np.zeros((len(rows), -(-width // 8) * 8), np.uint8)
    padded[:, :width] = raw
    words = padded.view(">u8")
    return [words[:, i].copy() for i in range(words.shape[1])]


def find_keys(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each of ``wanted``, its index in ``keys`` (which are unique) or -1.

    One sort of both together, keys before wanted rows of equal bytes: a wanted row is
    found when its group of equal rows starts with a key.
    """
    n = len(keys)
    if n == 0 or len(wanted) == 0:
        return np.full(len(wanted), -1, np.int64)
    columns = [np.concatenate([k, w]) for k, w in zip(_words(keys), _words(wanted),
                                                       strict=True)]
    is_wanted = np.concatenate([np.zeros(n, np.uint8), np.ones(len(wanted), np.uint8)])
    # lexsort sorts by its last key first: the words from the first, then is_wanted.
    order = np.lexsort((is_wanted, *reversed(columns)))
    is_wanted = is_wanted[order]
    differs = np.zeros(max(0, len(order) - 1), bool)
    for column in columns:
        ordered = column[order]
        differs |= ordered[1:] != ordered[:-1]
    starts = np.concatenate([[True], differs])
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    first = order[group_start]
    hit = is_wanted[group_start] == 0
    result = np.full(len(wanted), -1, np.int64)
    sel = is_wanted == 1
    result[order[sel] - n] = np.where(hit[sel], first[sel], -1)
    return result


GC_START = 300.0  # pkg/maps/ctmap: the first interval, 5 minutes
GC_MIN = 10.0  # floor
GC_MAX = 12 * 3600.0  # ConntrackGCMaxLRUInterval


class GcSchedule:
    """When the next GC pass is due: Cilium's adaptive interval (pkg/maps/ctmap/ctmap.go,
    ``GetInterval`` and ``calculateInterval``, v1.16.2).

    The deletion ratio is the entries a pass deleted over the map's capacity (Cilium
    divides by the CT map's MaxEntries; here the NAT map is the CT state), scaled by
    expected/actual when the pass came early (a signal-triggered one). Above 0.25 the
    interval shrinks by that ratio (at most 0.9), floor 10 s; below 0.05 it grows by half,
    cap 12 h; rounded to whole seconds.
    """

    def __init__(self, now: float) -> None:
        self.interval = GC_START
        self.last = now
        self.next_at = now + self.interval

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def after_pass(self, now: float, deleted: int, capacity: int) -> None:
        ratio = deleted / max(1, capacity)
        actual = now - self.last
        if 0 < actual < self.interval:
            ratio *= self.interval / actual
        if ratio > 0.25:
            self.interval = max(GC_MIN, round(self.interval * (1 - min(ratio, 0.9))))
        elif ratio < 0.05:
            self.interval = min(GC_MAX, round(self.interval * 1.5))
        self.last = now
        self.next_at = now + self.interval
