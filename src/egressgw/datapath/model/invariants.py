"""The compiled kernel's structural invariants, checked in plain Python and numpy.

The kernel keeps one model in several linked structures (kernel.py's module docstring):
hash chains over the records and over the IN entries, two free lists, a doubly linked
LRU list per family threaded through both tables, reference counts, a binary heap of
events and the counts in ``st``. A kernel change that forgets one link still passes many
runs, until a later lookup walks into it. ``violations(state)`` re-derives every link and
count from the rows and names each disagreement; the cross-check and hypothesis tests
run it after every step (tests/test_model_crosscheck.py), and tests/test_model_invariants.py
corrupts single links to show each check fires.

It reads the arrays only, between kernel calls (in the middle of a call, counts are
allowed to lag). The hash function is written out again with numpy, independently of the
compiled one, so a chain that is consistent only with a wrong bucket computation fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from egressgw.datapath.model import kernel_layout as k
from egressgw.datapath.model.kernel_state import State

U64 = npt.NDArray[np.uint64]


class InvariantError(AssertionError):
    """The kernel's arrays disagree with each other (the message lists every violation)."""


def _mix(a: U64, b: U64, c: U64, mask: int) -> U64:
    """kernel_hash.key_hash over arrays: splitmix64 of (a << 32 | b) ^ c * golden ratio."""
    x = (a << np.uint64(32)) | b
    x ^= c * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x & np.uint64(mask)


def _walk(start: int, link: npt.NDArray[np.uint32], limit: int) -> tuple[list[int], bool]:
    """Rows of a singly linked list from ``start`` (-1 or NONE: empty); True if it cycles."""
    rows: list[int] = []
    seen: set[int] = set()
    node = start
    while node >= 0 and node != k.NONE:
        if node in seen or len(rows) > limit:
            return rows, True
        seen.add(node)
        rows.append(node)
        node = int(link[node])
    return rows, False


def _pool(
    name: str, used: npt.NDArray[np.bool_], link: npt.NDArray[np.uint32], head: int, nfree: int
) -> Iterator[str]:
    """A free list: acyclic, of length ``nfree``, exactly the unused rows."""
    free, cycles = _walk(head, link, len(used))
    if cycles:
        yield f"{name} free list: cycles"
        return
    if len(free) != nfree:
        yield f"{name} free list: {len(free)} rows linked, the free count says {nfree}"
    live = [r for r in free if r >= len(used) or used[r]]
    if live:
        yield f"{name} free list: holds live rows {live[:5]}"
    unlinked = int((~used).sum()) - (len(free) - len(live))
    if unlinked:
        yield f"{name} free list: {unlinked} unused rows on no list (leaked)"


def _chains(
    name: str, index: npt.NDArray[np.uint32], link: npt.NDArray[np.uint32],
    used: npt.NDArray[np.bool_], bucket: npt.NDArray[np.int64],
) -> Iterator[str]:
    """Hash chains: every used row exactly once, in the bucket its key hashes to."""
    seen: Counter[int] = Counter()
    for b in np.flatnonzero(index != k.NONE).tolist():
        rows, cycles = _walk(int(index[b]), link, len(used))
        if cycles:
            yield f"{name} hash chain of bucket {b}: cycles"
            continue
        for r in rows:
            seen[r] += 1
            if not used[r]:
                yield f"{name} hash chain of bucket {b}: holds unused row {r}"
            elif bucket[r] != b:
                yield f"{name} hash chain of bucket {b}: row {r} hashes to bucket {bucket[r]}"
    missing = [r for r in np.flatnonzero(used).tolist() if r not in seen]
    if missing:
        yield f"{name} hash chains: used rows {missing[:5]} are on none"
    twice = [r for r, n in seen.items() if n > 1]
    if twice:
        yield f"{name} hash chains: rows {twice[:5]} are on more than one"


def _lru(S: State, fam: int, out_rows: set[int], in_rows: set[int]) -> Iterator[str]:
    """The family's LRU list: links both ways, head and tail, exactly its NAT entries."""
    CR, NR, st = S.CR, S.NR, S.st

    def prev(n: int) -> int:
        return int(CR[n ^ k.OUT_TAG, k.R_OPREV] if n & k.OUT_TAG else NR[n, k.E_PREV])

    def nxt(n: int) -> int:
        return int(CR[n ^ k.OUT_TAG, k.R_ONEXT] if n & k.OUT_TAG else NR[n, k.E_NEXT])

    name = f"LRU list of family {fam}"
    expected = {r | k.OUT_TAG for r in out_rows} | in_rows
    head, tail = int(st[k.S_HEAD + fam]), int(st[k.S_TAIL + fam])
    nodes: list[int] = []
    seen: set[int] = set()
    node, before = head, k.NONE
    while node >= 0 and node != k.NONE:
        if node in seen or len(nodes) > len(expected):
            yield f"{name}: cycles or holds more than its {len(expected)} entries"
            return
        if prev(node) != before:
            yield f"{name}: node {node:#x} links back to {prev(node):#x}, not {before:#x}"
        seen.add(node)
        nodes.append(node)
        before, node = node, nxt(node)
    if (nodes[-1] if nodes else -1) != tail:
        yield f"{name}: tail is {tail:#x}, the walk from the head ends at " + (
            f"{nodes[-1]:#x}" if nodes else "nothing"
        )
    if len(nodes) != st[k.S_COUNT + fam]:
        yield f"{name}: {len(nodes)} nodes, the map count says {int(st[k.S_COUNT + fam])}"
    if seen != expected:
        stray = sorted(seen - expected)[:5]
        absent = sorted(expected - seen)[:5]
        yield f"{name}: holds non-entries {[hex(n) for n in stray]}, misses {[hex(n) for n in absent]}"  # noqa: E501
    if len(nodes) > S.cfg[k.C_CAP]:
        yield f"{name}: {len(nodes)} entries, more than --bpf-nat-global-max {S.cfg[k.C_CAP]}"


def _heap(S: State, used: npt.NDArray[np.bool_]) -> Iterator[str]:
    """The event heap: ordered by (time, sequence), naming live records."""
    n = int(S.st[k.S_HEAP_SIZE])
    times = S.HF[:n, k.H_TIME]
    seqs = S.HI[:n, k.H_SEQ]
    for i in range(1, n):
        p = (i - 1) >> 1
        if (times[i], seqs[i]) < (times[p], seqs[p]):
            yield f"event heap: row {i} sorts before its parent {p}"
            break
    if n and seqs.max() >= S.st[k.S_SEQ]:
        yield f"event heap: sequence {int(seqs.max())} not below the next one, {int(S.st[k.S_SEQ])}"
    conns = S.HI[:n, k.H_CONN]
    dead = [int(o) for o in conns if not 0 <= o < len(used) or not used[o]]
    if dead:
        yield f"event heap: events for unused records {dead[:5]}"


def violations(S: State) -> list[str]:
    """Every disagreement among the kernel's arrays, one line each (empty: consistent)."""
    out: list[str] = []
    CR, NR, st, cnt = S.CR, S.NR, S.st, S.cnt
    misc = CR[:, k.R_MISC].astype(np.int64)
    used = misc & k.CF_USED != 0
    ct = used & (misc & k.CF_CT != 0)
    has_out = used & (misc & k.CF_OUT != 0)
    rec_v6 = CR[:, k.R_SRC] & k.V6_BIT != 0
    proto = (misc >> 8) & 0xFF
    pf = NR[:, k.E_PORTFLAGS].astype(np.int64)
    in_used = pf & k.NF_USED != 0
    in_v6 = pf & k.NF_V6 != 0

    # Pools and counts of the records.
    out += _pool("record", used, CR[:, k.R_NEXT], int(st[k.S_CONN_FREE]), int(st[k.S_CONN_NFREE]))
    if used.sum() != st[k.S_CONN_COUNT]:
        out.append(f"record count: {int(used.sum())} used, st says {int(st[k.S_CONN_COUNT])}")
    if ct.sum() != st[k.S_CT_COUNT]:
        out.append(f"CT count: {int(ct.sum())} CT entries, st says {int(st[k.S_CT_COUNT])}")
    no_ct = np.flatnonzero(has_out & ~ct).tolist()
    if no_ct:
        out.append(f"OUT entry without CT entry: records {no_ct[:5]}")
    portless = np.flatnonzero(has_out & (misc >> 16 == 0)).tolist()
    if portless:
        out.append(f"OUT entry without a port: records {portless[:5]}")

    # The records' hash index.
    u64 = np.uint64
    ports = CR[:, k.R_PORTS].astype(u64)
    key_c = (ports << u64(8)) | proto.astype(u64)
    rec_bucket = _mix(CR[:, k.R_SRC].astype(u64), CR[:, k.R_DST].astype(u64), key_c,
                      len(S.CB) - 1).astype(np.int64)  # fmt: skip
    out += _chains("record", S.CB, CR[:, k.R_NEXT], used, rec_bucket)
    keys = Counter(zip(CR[used, k.R_SRC].tolist(), CR[used, k.R_DST].tolist(),
                       ports[used].tolist(), proto[used].tolist(), strict=True))  # fmt: skip
    dup = [key for key, n in keys.items() if n > 1]
    if dup:
        out.append(f"record keys: {dup[:3]} held by more than one record")

    # IN entries: pool, index, keys copied from their owner.
    nat_free, nat_nfree = int(st[k.S_NAT_FREE]), int(st[k.S_NAT_NFREE])
    out += _pool("IN entry", in_used, NR[:, k.E_NEXT], nat_free, nat_nfree)
    dpp = NR[:, k.E_DPORT_PROTO].astype(u64)
    in_base = _mix(NR[:, k.E_ADDR].astype(u64), NR[:, k.E_DST].astype(u64), dpp, len(S.NB) - 1)
    in_bucket = ((in_base + (pf >> 8).astype(u64)) & u64(len(S.NB) - 1)).astype(np.int64)
    out += _chains("IN entry", S.NB, NR[:, k.E_HNEXT], in_used, in_bucket)
    in_keys = Counter(zip(NR[in_used, k.E_ADDR].tolist(), (pf[in_used] >> 8).tolist(),
                          NR[in_used, k.E_DST].tolist(), dpp[in_used].tolist(),
                          strict=True))  # fmt: skip
    dup = [key for key, n in in_keys.items() if n > 1]
    if dup:
        out.append(f"IN keys: {dup[:3]} held by more than one entry")
    owners = NR[:, k.E_OWNER].astype(np.int64)
    live_in = np.flatnonzero(in_used)
    bad_owner = [int(e) for e in live_in if not 0 <= owners[e] < len(CR) or not used[owners[e]]]
    if bad_owner:
        out.append(f"IN entry owner: entries {bad_owner[:5]} name an unused record")
    live_in = np.array([e for e in live_in if e not in set(bad_owner)], np.int64)
    if len(live_in):
        o = owners[live_in]
        want = (CR[o, k.R_PORTS].astype(np.int64) & 0xFFFF) << 8 | proto[o]
        stale = live_in[(NR[live_in, k.E_DST] != CR[o, k.R_DST]) | (dpp[live_in] != want)]
        if len(stale):
            out.append(f"IN entry key: entries {stale[:5].tolist()} disagree with their owner")
        fam_off = live_in[in_v6[live_in] != rec_v6[o]]
        if len(fam_off):
            out.append(f"IN entry family: entries {fam_off[:5].tolist()} differ from their owner")
        # The orphan purge of a signalled GC pass runs only for flagged families.
        for fam in (0, 1):
            orphan = (in_v6[live_in] == bool(fam)) & ~ct[o]
            if orphan.any() and not st[k.S_ORPHANS] & (1 << fam):
                out.append(f"orphan flag of family {fam}: IN entries without CT, flag clear")

    # Reference counts: IN entries owned plus pending events.
    refs = np.zeros(len(CR), np.int64)
    np.add.at(refs, owners[live_in], 1)
    n_events = int(st[k.S_HEAP_SIZE])
    heap_conns = S.HI[:n_events, k.H_CONN]
    np.add.at(refs, heap_conns[(heap_conns >= 0) & (heap_conns < len(CR))], 1)
    wrong = np.flatnonzero(used & (CR[:, k.R_REFS].astype(np.int64) != refs)).tolist()
    if wrong:
        r = wrong[0]
        out.append(f"record reference count: records {wrong[:5]} (record {r}: "
                   f"{int(CR[r, k.R_REFS])}, owned IN entries + events "
                   f"{int(refs[r])})")  # fmt: skip
    leaked = np.flatnonzero(used & ~ct & (refs == 0)).tolist()
    if leaked:
        out.append(f"record without CT entry or references kept: records {leaked[:5]}")

    # The LRU lists, one per family.
    for fam in (0, 1):
        outs = set(np.flatnonzero(has_out & (rec_v6 == bool(fam))).tolist())
        ins = set(np.flatnonzero(in_used & (in_v6 == bool(fam))).tolist())
        out += _lru(S, fam, outs, ins)

    out += _heap(S, used)

    # Counters that the rows determine.
    tries = S.tries
    searches = int(tries.sum())
    if searches != cnt[k.K_ALLOCATIONS] + cnt[k.K_DROPS_NO_MAPPING]:
        out.append(f"tries histogram: {searches} searches, allocations + drops say "
                   f"{int(cnt[k.K_ALLOCATIONS] + cnt[k.K_DROPS_NO_MAPPING])}")  # fmt: skip
    over = int(tries[int(S.cfg[k.C_THRES]) + 1 :].sum())
    if over != cnt[k.K_SIGNALS]:
        out.append(f"signals: {int(cnt[k.K_SIGNALS])} counted, the tries histogram has {over} "
                   "searches above the threshold")  # fmt: skip
    if cnt[k.K_ESTABLISHED] > cnt[k.K_ATTEMPTED]:
        out.append("counters: more connections established than attempted")
    return out


def check(S: State) -> None:
    """Raise InvariantError listing every violation, if any."""
    found = violations(S)
    if found:
        raise InvariantError("kernel state inconsistent:\n  " + "\n  ".join(found))
