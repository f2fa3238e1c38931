"""The port search of a new connection: nat.h's snat_v4_new_mapping.

The first try is the pod's own source port when it is in the range, else a random one;
each collision tries again (a random port, then the walk of ``ports.Clamp``), up to the
version's retries; a search with more retries than the threshold wakes the CT GC.
"""

# ruff: noqa: ANN001, ANN201, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model.kernel_hash import in_base
from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import (
    C_CLAMP,
    C_PMAX,
    C_PMIN,
    C_RETRIES,
    C_THRES,
    F_MUTED_UNTIL,
    F_NOW,
    K_SIGNALS,
    R_DST,
    R_MISC,
    R_PORTS,
    S_SIGNAL_DUE,
)
from egressgw.datapath.model.kernel_nat import in_find_at, nat_insert
from egressgw.datapath.model.kernel_random import mt_random16


@jit(inline=True)
def _clamp(start, end, value, kind) -> int:
    """ports.clamp: __snat_clamp_port_range of ``kind`` (ports.Clamp), value as a u16."""
    if kind:
        return (start + (((value & 0xFFFF) * ((end - start) + 1)) >> 16)) & 0xFFFF
    return ((value & 0xFFFF) % ((end - start) & 0xFFFF) + start) & 0xFFFF


@jit()
def allocate(st, fs, cfg, cnt, tries, mt, CR, CB, NR, NB, o, egress, fam):
    """snat_v4_new_mapping: returns (port or -1, retries)."""
    start = cfg[C_PMIN]
    end = cfg[C_PMAX]
    retries_max = cfg[C_RETRIES]
    kind = cfg[C_CLAMP]
    now = fs[F_NOW]
    ports = np.int64(CR[o, R_PORTS])
    sport = ports >> 16
    dport = ports & 0xFFFF
    dst = np.int64(CR[o, R_DST])
    proto = np.int64((CR[o, R_MISC] >> 8) & 0xFF)
    port = sport if start <= sport <= end else _clamp(start, end, mt_random16(st, mt), kind)
    retries = 0
    found = False
    base = in_base(NB, egress, dst, dport, proto)
    mask = NB.shape[0] - 1
    while retries < retries_max:
        e = in_find_at(NR, NB, (base + port) & mask, dst, dport, egress, port, proto)
        if e < 0:
            nat_insert(st, cfg, cnt, CR, CB, NR, NB, o, egress, port, True, fam, now)
            nat_insert(st, cfg, cnt, CR, CB, NR, NB, o, egress, port, False, fam, now)
            found = True
            break
        # A failed BPF_NOEXIST insert: an existence check, no LRU refresh of the entry.
        if retries:
            port = _clamp(start, end, port + 1, kind)
        else:
            port = _clamp(start, end, mt_random16(st, mt), kind)
        retries += 1
    tries[retries] += 1
    if retries > cfg[C_THRES]:  # nat.h: strictly more than SNAT_SIGNAL_THRES
        cnt[K_SIGNALS] += 1
        if now >= fs[F_MUTED_UNTIL]:  # gc.go mutes the signal while a pass runs
            st[S_SIGNAL_DUE] |= 1 << fam
    return (port if found else -1), retries
