"""The ports nf_nat's search tries for one new connection, as a distribution of counts.

A Linux gateway's SNAT (Linux 6.18, net/netfilter) looks for a source port this way:

- ``nf_nat_core.c`` ``get_unique_tuple``: a connection whose source port lies in the
  rule's range keeps it when no entry holds that reply tuple (``nf_nat_used_tuple``).
- ``nf_nat_proto.c`` ``nf_nat_l4proto_unique_tuple``: ``attempts = min(size, 128)``
  ports ``min + off % size`` for ``off`` = a random u16 and its successors (the u16
  wraps); when all are taken and ``attempts`` is below the range size and at least 16,
  ``attempts`` is halved and a new random ``off`` drawn: rounds of 128, 64, 32, 16 and 8
  ports (248) on a range wider than 128, one round of ``size`` ports on a smaller one.
- ``nf_nat_used_tuple_harder`` (in the last 32 attempts of a round) takes over ports of
  TIME_WAIT and CLOSE entries when the new SYN's sequence number is past the old entry's
  (``nf_seq_has_advanced``); earlier in a round such a port counts as taken
  (``nf_nat_used_tuple``). The curves' occupancy is of connections that hold their port
  (established, what a Linux gateway's nat-stats count), which are never taken over; the
  exact and growth curves have no TIME_WAIT entries. The steady curve has: each ended
  connection lingers in TIME_WAIT (``nf_conntrack_proto_tcp.c``, 120 s), so at k
  established connections of hold time H about k x 120 / H TIME_WAIT entries hold ports
  too (:func:`steady_time_wait`). Measured in the kernel
  (tests/test_refusal_netfilter_timewait_kernel.py), reading them as free or as taken
  are both wrong; they change the steady curve's answer (docs/simulation.md).
- ``find_appropriate_src`` (nf_nat_core.c) gives a connection the mapping an earlier
  entry from the same source address, port and protocol has, before keeping the port or
  searching (datapath/model/netfilter.py models it). For the curves, where each client
  port meets one tuple, that port is one more port tried first, like the kept one; the
  curves leave it out.

For a uniformly random set of k taken ports out of the range's N, a connection is
refused exactly when every port it tries is taken: P = sum_j P(j distinct ports tried) *
prod_{i<j} (k - i) / (N - i) (drawing the taken set without replacement), which
:func:`tried_set_sizes` feeds to the same formula as Cilium's curve. The rounds draw
their offsets independently, so they overlap; the distribution of the union's size is
computed exactly (:func:`union_sizes`):

- one round (N <= 128): over all 65536 offsets, so the u16 wrap (an offset near 65535
  jumps back to ``min + 0``, visiting some ports twice) is counted as the kernel does it;
- N > 248: by counting arrangements on a ring. When N divides 65536 the offset modulo N
  is uniform and a round is an arc of the ring: exact. Otherwise the kernel's offsets
  favour the first ``65536 % N`` residues by one chance in ``65536 // N`` and the last
  127 offsets wrap; this treats them as uniform (kind "ring approximation");
- 128 < N <= 248 (the rounds can cover the ring): sampled offsets (kind "sampled").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import cache

import numpy as np
import numpy.typing as npt

# nf_nat_core.c NF_NAT_MAX_ATTEMPTS and the smallest round followed by another.
MAX_ATTEMPTS = 128
MIN_HALVED_ROUND = 16
U16_VALUES = 1 << 16
# nf_conntrack_proto_tcp.c: the TIME_WAIT timeout (net.netfilter.
# nf_conntrack_tcp_timeout_time_wait), and the connections' hold time the steady curve
# assumes unless told (the seed scenario's median connection, 10 minutes).
TIME_WAIT_TIMEOUT = 120.0
DEFAULT_HOLD = 600.0

EXACT = "exact"
RING = "ring approximation"
SAMPLED = "sampled"


def round_sizes(size: int) -> tuple[int, ...]:
    """Ports tried per round by nf_nat_l4proto_unique_tuple for a range of ``size``."""
    attempts = min(size, MAX_ATTEMPTS)
    rounds = [attempts]
    while attempts < size and attempts >= MIN_HALVED_ROUND:
        attempts //= 2
        rounds.append(attempts)
    return tuple(rounds)


def _subsets(mask: int) -> Iterator[int]:
    sub = mask
    while True:
        yield sub
        if sub == 0:
            return
        sub = (sub - 1) & mask


@cache
def _segments(lengths: tuple[int, ...]) -> dict[int, dict[int, int]]:
    """seg[mask][L]: arrangements of the arcs in ``mask`` as one segment of length L.

    A segment starts with arcs at its first port and continues while some arc covers
    the next port; an arc may start only on a port already covered (or the first). Arcs
    that start exactly where the coverage ended begin the next segment, so every ring
    arrangement splits into segments one way.
    """
    n = len(lengths)
    full = (1 << n) - 1
    longest = [max((lengths[i] for i in range(n) if sub >> i & 1), default=0)
               for sub in range(full + 1)]
    segments: dict[int, dict[int, int]] = {}
    # (placed arcs, ports still covered from this position on) -> arrangements
    states: dict[tuple[int, int], int] = {(0, 0): 1}
    for position in range(sum(lengths)):
        following: dict[tuple[int, int], int] = {}
        for (mask, left), count in states.items():
            for sub in _subsets(full & ~mask):
                if position == 0 and sub == 0:
                    continue  # a segment starts with an arc
                cover = max(left, longest[sub]) - 1
                placed = mask | sub
                if cover == 0:
                    ends = segments.setdefault(placed, {})
                    ends[position + 1] = ends.get(position + 1, 0) + count
                else:
                    following[(placed, cover)] = following.get((placed, cover), 0) + count
        states = following
        if not states:
            break
    return segments


def _partitions(items: Sequence[int]) -> Iterator[list[list[int]]]:
    """Every set partition of ``items``."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in _partitions(rest):
        yield [[first], *smaller]
        for i in range(len(smaller)):
            yield [*smaller[:i], [first, *smaller[i]], *smaller[i + 1:]]


def _ring_union_sizes(size: int, lengths: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """P(|union| = j) for arcs of ``lengths`` at independent uniform places on a ring.

    Each arrangement is c segments in cyclic order with gaps >= 0 between them: for
    labelled segments of total length j there are size * (c - 1)! * C(size - j + c - 1,
    c - 1) placements, times the arrangements inside each segment. Needs size > sum of
    the lengths, so some port is uncovered and the split into segments is unique.
    """
    total = sum(lengths)
    assert size > total
    segments = _segments(lengths)
    counts = [0] * (total + 1)
    for partition in _partitions(list(range(len(lengths)))):
        poly = {0: 1}  # arrangements by the union's length
        for block in partition:
            mask = sum(1 << i for i in block)
            block_poly = segments.get(mask, {})
            nxt: dict[int, int] = {}
            for a, ca in poly.items():
                for b, cb in block_poly.items():
                    nxt[a + b] = nxt.get(a + b, 0) + ca * cb
            poly = nxt
        c = len(partition)
        for j, inside in poly.items():
            counts[j] += size * math.factorial(c - 1) * math.comb(size - j + c - 1, c - 1) * inside
    whole = size ** len(lengths)
    assert sum(counts) == whole, (sum(counts), whole)
    return np.array([c / whole for c in counts], dtype=np.float64)


def _one_round(size: int, attempts: int, kept: npt.NDArray[np.float64]
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Over all 65536 offsets: P(|round| = j) and P(|round| = j, kept port on it)."""
    offsets = np.arange(U16_VALUES, dtype=np.int64)[:, None]
    ports = ((offsets + np.arange(attempts)[None, :]) & 0xFFFF) % size
    ordered = np.sort(ports, axis=1)
    first_seen = np.ones_like(ordered, dtype=bool)
    first_seen[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    distinct = first_seen.sum(axis=1)
    on = (kept[ordered] * first_seen).sum(axis=1)
    sizes = np.bincount(distinct, minlength=attempts + 1) / U16_VALUES
    with_kept = np.bincount(distinct, weights=on, minlength=attempts + 1) / U16_VALUES
    return sizes.astype(np.float64), with_kept.astype(np.float64)


def _sampled_union_sizes(size: int, lengths: tuple[int, ...], *, samples: int = 200_000,
                         seed: int = 0) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    covered = np.zeros((samples, size), dtype=bool)
    rows = np.arange(samples)[:, None]
    for length in lengths:
        offsets = rng.integers(0, U16_VALUES, samples)[:, None]
        covered[rows, ((offsets + np.arange(length)[None, :]) & 0xFFFF) % size] = True
    return (np.bincount(covered.sum(axis=1), minlength=sum(lengths) + 1)
            / samples).astype(np.float64)


def union_sizes(size: int) -> tuple[npt.NDArray[np.float64], str]:
    """P(the search's rounds try j distinct ports), for j = 0.., and how it was computed
    (:data:`EXACT`, :data:`RING` or :data:`SAMPLED`, see the module's doc)."""
    rounds = round_sizes(size)
    if len(rounds) == 1:
        sizes, _ = _one_round(size, rounds[0], np.zeros(size))
        return sizes, EXACT
    if size > sum(rounds):
        return _ring_union_sizes(size, rounds), EXACT if U16_VALUES % size == 0 else RING
    return _sampled_union_sizes(size, rounds), SAMPLED


def tried_set_sizes(size: int, kept: npt.NDArray[np.float64]
                    ) -> tuple[npt.NDArray[np.float64], str]:
    """w[j] = P(a refused connection tried exactly j distinct ports of the range).

    ``kept[p]`` is P(the client's source port is ``min + p``): the port kept when free,
    else one more port that must be taken for a refusal unless the search visits it. On
    the ring the rounds' union is as likely anywhere, so the kept port is on a union of
    j ports with probability j / size; one round is enumerated offset by offset.
    """
    in_range = float(kept.sum())
    rounds = round_sizes(size)
    if len(rounds) == 1:
        sizes, on = _one_round(size, rounds[0], kept)
        how = EXACT
    else:
        sizes, how = union_sizes(size)
        on = sizes * in_range * np.arange(len(sizes)) / size
    w = np.zeros(len(sizes) + 1)
    w[: len(sizes)] += sizes * (1 - in_range) + on  # kept port out of range, or on the rounds
    w[1:] += sizes * in_range - on  # one more port: the kept one, off the rounds
    return w, how


def steady_time_wait(start: int, end: int, levels: npt.NDArray[np.int64], *, hold: float,
                     sport_low: int, sport_high: int, clients: npt.NDArray[np.int64],
                     steps: int, warm_factor: float, seed: int
                     ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Refusals of ``steps`` new connections at each level of established connections on
    the SNAT ports ``start..end`` (-1: not reached), each ended connection lingering in
    TIME_WAIT for 120 s / ``hold`` x k arrivals, and the mean TIME_WAIT entries at each
    level (``refusal_kernel.nf_steady_tw``, compiled)."""
    from egressgw.sim import refusal_kernel as kernel  # noqa: PLC0415  (numba, on use)

    counts = np.zeros(len(levels), dtype=np.int64)
    time_wait = np.zeros(len(levels), dtype=np.float64)
    kernel.seed(seed)
    kernel.nf_steady_tw(np.asarray(levels, dtype=np.int64), TIME_WAIT_TIMEOUT / hold,
                        warm_factor, steps, start, end, sport_low, sport_high, clients,
                        counts, time_wait)
    return counts, time_wait


__all__ = ["DEFAULT_HOLD", "EXACT", "RING", "SAMPLED", "TIME_WAIT_TIMEOUT", "round_sizes",
           "steady_time_wait", "tried_set_sizes", "union_sizes"]
