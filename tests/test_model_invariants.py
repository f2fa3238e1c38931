"""The invariant checker of the compiled kernel finds single corruptions and names them.

A live model (IPv4 and IPv6, evictions, retransmissions, pending keepalives and ends) is
consistent; then one link, flag or count at a time is changed in a copy of its arrays
and the checker must name the structure that broke.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest

from egressgw.datapath.model import ModelConfig, ModelDatapath
from egressgw.datapath.model import kernel_layout as k
from egressgw.datapath.model.compiled import CompiledModel
from egressgw.datapath.model.invariants import InvariantError, check, violations
from egressgw.datapath.model.kernel_state import State
from model_helpers import SMALL_RANGE
from test_model_crosscheck import random_batch


@pytest.fixture(scope="module")
def live() -> State:
    config = ModelConfig(node_port_range=SMALL_RANGE, bpf_nat_global_max=1024,
                         ct_timeout_tcp=120.0, bpf_ct_global_tcp_max=1024)  # fmt: skip
    dp = ModelDatapath(config, random.Random(5))
    for step in range(3):
        dp.run(random_batch([dp], 11 + step, 1500, 30.0 * step, 30.0 * step + 29.9),
               30.0 * (step + 1))  # fmt: skip
    engine = dp.engine
    assert isinstance(engine, CompiledModel)
    counters = dp.counters
    # The corruptions below need each structure populated.
    assert counters.evictions_in and counters.evictions_out and counters.signals
    assert engine.st[k.S_HEAP_SIZE] > 10 and engine.st[k.S_COUNT + 1] > 0
    return engine.state


def copy(S: State) -> State:
    cr, hi = S.CR.copy(), S.HI.copy()
    return S._replace(
        st=S.st.copy(), cnt=S.cnt.copy(), tries=S.tries.copy(), CR=cr,
        CF=cr.view(np.float64), CB=S.CB.copy(), NR=S.NR.copy(), NB=S.NB.copy(), HI=hi,
        HF=hi.view(np.float64),
    )  # fmt: skip


def live_in(S: State) -> np.ndarray:
    return np.flatnonzero(S.NR[:, k.E_PORTFLAGS] & k.NF_USED)


def with_out(S: State) -> np.ndarray:
    return np.flatnonzero(S.CR[:, k.R_MISC] & k.CF_OUT)


def middle(S: State, fam: int = 0) -> int:
    """An LRU node with neighbours on both sides: the head's successor's successor."""
    n = int(S.st[k.S_HEAD + fam])
    for _ in range(2):
        n = int(S.CR[n ^ k.OUT_TAG, k.R_ONEXT] if n & k.OUT_TAG else S.NR[n, k.E_NEXT])
    return n


def unlink_bucket(S: State) -> None:
    S.CB[np.flatnonzero(S.CB != k.NONE)[0]] = k.NONE


def rekey_record(S: State) -> None:
    o = with_out(S)[0]
    S.CR[o, k.R_PORTS] ^= 1  # the key changes, the record stays in its old chain


def cycle_in_chain(S: State) -> None:
    e = live_in(S)[0]
    S.NR[e, k.E_HNEXT] = e


def rekey_in_entry(S: State) -> None:
    S.NR[live_in(S)[0], k.E_DST] += 1


def lru_back_link(S: State) -> None:
    n = middle(S)
    if n & k.OUT_TAG:
        S.CR[n ^ k.OUT_TAG, k.R_OPREV] = int(S.st[k.S_TAIL])
    else:
        S.NR[n, k.E_PREV] = int(S.st[k.S_TAIL])


def lru_tail(S: State) -> None:
    S.st[k.S_TAIL + 1] = S.st[k.S_HEAD + 1]


def lru_drop_node(S: State) -> None:
    """Unlink a node from the list (both neighbours skip it) but keep the entry."""
    n = middle(S)
    if n & k.OUT_TAG:
        p, q = S.CR[n ^ k.OUT_TAG, k.R_OPREV], S.CR[n ^ k.OUT_TAG, k.R_ONEXT]
    else:
        p, q = S.NR[n, k.E_PREV], S.NR[n, k.E_NEXT]
    for node, column_out, column_in, value in ((p, k.R_ONEXT, k.E_NEXT, q),
                                              (q, k.R_OPREV, k.E_PREV, p)):  # fmt: skip
        if node & k.OUT_TAG:
            S.CR[node ^ k.OUT_TAG, column_out] = value
        else:
            S.NR[node, column_in] = value


def live_row_on_free_list(S: State) -> None:
    e = live_in(S)[0]
    S.NR[e, k.E_NEXT] = S.st[k.S_NAT_FREE]
    S.st[k.S_NAT_FREE] = e
    S.st[k.S_NAT_NFREE] += 1


def leak_free_record(S: State) -> None:
    head = int(S.st[k.S_CONN_FREE])
    S.st[k.S_CONN_FREE] = S.CR[head, k.R_NEXT]
    S.st[k.S_CONN_NFREE] -= 1


def extra_reference(S: State) -> None:
    S.CR[with_out(S)[0], k.R_REFS] += 1


def owner_elsewhere(S: State) -> None:
    e = live_in(S)[0]
    others = np.flatnonzero(S.CR[:, k.R_DST] != S.NR[e, k.E_DST])
    S.NR[e, k.E_OWNER] = others[0]


def out_without_ct(S: State) -> None:
    S.CR[with_out(S)[0], k.R_MISC] &= ~np.uint32(k.CF_CT)
    S.st[k.S_CT_COUNT] -= 1


def ct_count(S: State) -> None:
    S.st[k.S_CT_COUNT] += 1


def map_count(S: State) -> None:
    S.st[k.S_COUNT] -= 1


def heap_order(S: State) -> None:
    last = int(S.st[k.S_HEAP_SIZE]) - 1
    S.HI[[0, last]] = S.HI[[last, 0]]


def signal_counter(S: State) -> None:
    S.cnt[k.K_SIGNALS] += 1


def orphan_flag(S: State) -> None:
    """An IN entry whose owner lost its CT entry, with the family's orphan flag clear."""
    ct = S.CR[:, k.R_MISC] & k.CF_CT != 0
    e = next(e for e in live_in(S) if ct[S.NR[e, k.E_OWNER]] and not S.NR[e, k.E_PORTFLAGS]
             & k.NF_V6 and not S.CR[S.NR[e, k.E_OWNER], k.R_MISC] & k.CF_OUT)  # fmt: skip
    S.CR[S.NR[e, k.E_OWNER], k.R_MISC] &= ~np.uint32(k.CF_CT)
    S.st[k.S_CT_COUNT] -= 1
    S.st[k.S_ORPHANS] = 0


CORRUPTIONS: list[tuple[Callable[[State], None], str]] = [
    (unlink_bucket, "record hash chains: used rows"),
    (rekey_record, "record hash chain of bucket"),
    (cycle_in_chain, "IN entry hash chain of bucket"),
    (rekey_in_entry, "IN entry key"),
    (lru_back_link, "LRU list of family 0: node"),
    (lru_tail, "LRU list of family 1: tail"),
    (lru_drop_node, "LRU list of family 0: 1"),  # "... n nodes, the map count says n + 1"
    (live_row_on_free_list, "IN entry free list: holds live rows"),
    (leak_free_record, "record free list: 1 unused rows on no list"),
    (extra_reference, "record reference count"),
    (owner_elsewhere, "IN entry key: entries"),
    (out_without_ct, "OUT entry without CT entry"),
    (ct_count, "CT count"),
    (map_count, "the map count says"),
    (heap_order, "event heap: row"),
    (signal_counter, "signals:"),
    (orphan_flag, "orphan flag of family 0"),
]


def test_a_live_model_is_consistent(live: State) -> None:
    assert violations(live) == []
    check(live)


@pytest.mark.parametrize(
    ("corrupt", "named"), CORRUPTIONS, ids=[corrupt.__name__ for corrupt, _ in CORRUPTIONS]
)
def test_one_corruption_is_found_and_named(live: State, corrupt, named) -> None:
    broken = copy(live)
    corrupt(broken)
    found = violations(broken)
    assert any(named in line for line in found), found
    with pytest.raises(InvariantError, match="kernel state inconsistent"):
        check(broken)
    assert violations(live) == []  # the copy was corrupted, not the model
