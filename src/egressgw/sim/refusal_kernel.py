"""The compiled inner loops of the refusal curve: nat.h's port search on a bitmap.

numba compiles these (cached on disk). The arithmetic is ``__snat_clamp_port_range``:
``mul`` false is v1.16's ``(v % (u16)(end - start)) + start``, true is v1.17's
``start + (((u32)v * (end - start + 1)) >> 16)``; the walk passes ``(u16)(port + 1)``.
numba types these functions when it compiles them, so mypy leaves this file alone.

``nf`` true runs a Linux gateway's search instead (:func:`nf_attempt`, nf_nat's), with
``start..end`` the SNAT rule's ports.
"""
# ruff: noqa: ANN001, ANN201, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def seed(seed: int) -> None:
    np.random.seed(seed)


@njit(cache=True)
def attempt(taken, start, end, mul, retries, sport_lo, sport_hi, nxt, advance=True) -> int:
    """One new connection: the port it gets, or -1 (refused).

    ``nxt`` holds each client's next source port offset (sequential clients, as
    egressgw's workload generator walks them); empty: every port drawn at random.
    """
    span = (end - start) & 0xFFFF
    if len(nxt):
        c = np.random.randint(0, len(nxt))
        sport = sport_lo + nxt[c] % (sport_hi - sport_lo + 1)
        if advance:
            nxt[c] += 1
    else:
        sport = np.random.randint(sport_lo, sport_hi + 1)
    if start <= sport <= end:
        port = sport
    else:
        r = np.random.randint(0, 65536)
        port = (start + ((r * (end - start + 1)) >> 16)) if mul else (r % span + start)
    for attempt in range(retries):
        if not taken[port]:
            return port
        v = np.random.randint(0, 65536) if attempt == 0 else (port + 1) & 0xFFFF
        port = (start + ((v * (end - start + 1)) >> 16)) if mul else (v % span + start)
        port &= 0xFFFF
    return -1


@njit(cache=True, inline="always")
def nf_client_port(sport_lo, sport_hi, nxt, advance) -> int:
    """The source port of a new connection: the next port of a random sequential client
    (``nxt``, advanced when ``advance``), or, with no clients, one drawn uniformly."""
    if len(nxt):
        c = np.random.randint(0, len(nxt))
        sport = sport_lo + nxt[c] % (sport_hi - sport_lo + 1)
        if advance:
            nxt[c] += 1
        return sport
    return np.random.randint(sport_lo, sport_hi + 1)


@njit(cache=True)
def nf_attempt(taken, start, end, sport_lo, sport_hi, nxt, advance=True) -> int:
    """One new connection through nf_nat (Linux 6.18): the port it gets, or -1.

    get_unique_tuple (nf_nat_core.c): the client's port is kept when it lies in the
    rule's range and is free. nf_nat_l4proto_unique_tuple (nf_nat_proto.c): then rounds
    of ``attempts = min(size, 128)`` ports ``start + off % size`` from a random u16
    ``off`` (incremented as a u16), halved with a new ``off`` while below the range
    size and at least 16. No takeover: the held ports belong to live connections.
    """
    size = end - start + 1
    sport = nf_client_port(sport_lo, sport_hi, nxt, advance)
    if start <= sport <= end and not taken[sport]:
        return sport
    attempts = min(size, 128)
    while True:
        off = np.random.randint(0, 65536)
        for i in range(attempts):
            port = start + ((off + i) & 0xFFFF) % size
            if not taken[port]:
                return port
        if attempts >= size or attempts < 16:
            return -1
        attempts //= 2


@njit(cache=True)
def search(taken, start, end, mul, retries, sport_lo, sport_hi, nxt, nf, advance=True) -> int:
    """One new connection through nat.h's search, or nf_nat's when ``nf``."""
    if nf:
        return nf_attempt(taken, start, end, sport_lo, sport_hi, nxt, advance)
    return attempt(taken, start, end, mul, retries, sport_lo, sport_hi, nxt, advance)


@njit(cache=True, inline="always")
def fill_to(taken, held, n, k, start, end, mul, retries, sport_lo, sport_hi, nxt, nf, keep):
    """Open new connections (none ends) until ``k`` ports are taken or the searches give
    up; ``keep`` records each port in ``held`` in arrival order. Returns the ports taken."""
    guard = 0
    while n < k and guard < 1000 * k + 1000:
        guard += 1
        port = search(taken, start, end, mul, retries, sport_lo, sport_hi, nxt, nf)
        if port >= 0:
            taken[port] = True
            if keep:
                held[n] = port
            n += 1
    return n


@njit(cache=True)
def steady(taken, held, count, levels, warm, steps, start, end, mul, retries,
            sport_lo, sport_hi, nxt, fifo, out, nf=False):
    """Hold the tuple at each level in turn; count refusals over ``steps`` attempts."""
    n = count
    for li in range(len(levels)):
        k = levels[li]
        # Grow to k (new connections only), then churn until the runs settle.
        n = fill_to(taken, held, n, k, start, end, mul, retries, sport_lo, sport_hi, nxt, nf,
                    True)
        if n < k:
            out[li] = -1
            continue
        refused = 0
        for phase in range(2):
            budget = warm if phase == 0 else steps
            done = 0
            tries = 0
            while done < budget and tries < 20 * budget + 1000:
                tries += 1
                port = search(taken, start, end, mul, retries, sport_lo, sport_hi, nxt, nf)
                if phase == 0:
                    if port < 0:
                        continue
                    done += 1
                else:
                    done += 1
                    if port < 0:
                        refused += 1
                        continue
                # The new connection holds a port; one of the k + 1 ends: the oldest
                # (fifo, connections of equal length) or a random one (exponential).
                taken[port] = True
                if fifo:
                    # held is a ring in arrival order: oldest at held[n + 1 - ...]; keep
                    # it as a queue by shifting the start index kept in held[-1].
                    h = held[len(held) - 1]
                    taken[held[h]] = False
                    held[h] = port
                    held[len(held) - 1] = (h + 1) % n
                else:
                    held[n] = port
                    j = np.random.randint(0, n + 1)
                    taken[held[j]] = False
                    held[j] = held[n]
        out[li] = refused
    return n


@njit(cache=True)
def growth(taken, levels, steps, start, end, mul, retries,
            sport_lo, sport_hi, nxt, out, nf=False):
    """Fill the tuple with new connections only; at each level probe ``steps`` times."""
    n = 0
    held = np.empty(0, np.int64)  # a filling tuple keeps no arrival order
    for li in range(len(levels)):
        k = levels[li]
        n = fill_to(taken, held, n, k, start, end, mul, retries, sport_lo, sport_hi, nxt, nf,
                    False)
        if n < k:
            out[li] = -1
            continue
        refused = 0
        for _ in range(steps):
            if search(taken, start, end, mul, retries, sport_lo, sport_hi, nxt, nf, False) < 0:
                refused += 1
        out[li] = refused


# -- Cilium: P(refusal) given the taken ports, exactly -----------------------------------
#
# nat.h's walk is deterministic once its start p1 = clamp(random16) is drawn, and the
# kept port p0 (the client's own, or clamp(random16) outside the NAT range) is an
# independent draw. So for one set of taken ports
#
#     P(refused | taken) = P(p0 taken) x P(p1 and the retries - 2 ports after it taken),
#
# the second factor summed over all 65536 values of random16 through run lengths along
# the walk: run[p] = the taken ports met walking from p (capped at the walk's length).
# Averaging this over the states a churning tuple passes through estimates the curve
# with no Bernoulli noise from single tries: only the states are sampled.


@njit(cache=True)
def cilium_walk_runs(taken, step, image, cap, run, stack) -> None:
    """run[p] for every p of ``image``: taken ports in a row walking p, step[(p+1)&0xFFFF],
    ..., at most ``cap``. Each port is visited once (memoised along the walk's graph)."""
    for i in range(len(image)):
        run[image[i]] = -1
    for i in range(len(image)):
        p = image[i]
        depth = 0
        # Follow the walk until a known run, a free port or a cycle of taken ports.
        while run[p] == -1:
            if not taken[p]:
                run[p] = 0
                break
            run[p] = -2  # on the current path
            stack[depth] = p
            depth += 1
            p = step[(p + 1) & 0xFFFF]
        base = run[p] if run[p] >= 0 else cap  # -2: a cycle of taken ports, endless
        while depth > 0:
            depth -= 1
            base = min(cap, base + 1)
            run[stack[depth]] = base


@njit(cache=True)
def cilium_refused_given(taken, start, end, step, image, weight, retries, sport_lo,
                         sport_hi, nxt, run, stack) -> float:
    """P(a new connection is refused | the taken ports), exactly (see above).

    ``step`` is clamp(v) for every 16-bit v, ``image`` the ports clamp reaches and
    ``weight`` P(clamp(random16) = port) for each of them.
    """
    walk = retries - 1
    cilium_walk_runs(taken, step, image, walk, run, stack)
    p_walk = 0.0
    p_clamped = 0.0  # P(clamp(random16) is taken): the kept port outside the range
    for i in range(len(image)):
        p = image[i]
        if taken[p]:
            p_clamped += weight[i]
        if walk <= 0 or run[p] >= walk:
            p_walk += weight[i]
    span = sport_hi - sport_lo + 1
    p_kept = 0.0
    if len(nxt):
        for c in range(len(nxt)):
            sport = sport_lo + nxt[c] % span
            if start <= sport <= end:
                p_kept += 1.0 if taken[sport] else 0.0
            else:
                p_kept += p_clamped
        p_kept /= len(nxt)
    else:
        inside = 0
        for sport in range(max(start, sport_lo), min(end, sport_hi) + 1):
            inside += 1 if taken[sport] else 0
        outside = span - max(0, min(end, sport_hi) - max(start, sport_lo) + 1)
        p_kept = (inside + outside * p_clamped) / span
    return p_kept * p_walk


@njit(cache=True)
def cilium_steady_exact(taken, held, count, levels, warm, steps, every, start, end, mul,
                        retries, sport_lo, sport_hi, nxt, step, image, weight, out):
    """Hold the tuple at each level in turn, as :func:`steady` does (each new
    connection that gets a port ends the oldest); after warming, ``steps`` new
    connections are tried, and every ``every`` tries P(refused | taken) is evaluated
    exactly into ``out[level, sample]``. Returns the ports held."""
    n = count
    run = np.zeros(65536, np.int64)
    stack = np.zeros(65536, np.int64)
    samples = out.shape[1]
    for li in range(len(levels)):
        k = levels[li]
        n = fill_to(taken, held, n, k, start, end, mul, retries, sport_lo, sport_hi, nxt,
                    False, True)
        if n < k:
            out[li, 0] = -1.0
            continue
        for phase in range(2):
            budget = warm if phase == 0 else steps
            done = 0
            tries = 0
            s = 0
            while done < budget and tries < 20 * budget + 1000:
                tries += 1
                if phase == 1:
                    # Measuring, every try counts (a refused one leaves the state as it
                    # is): a full tuple is still sampled.
                    if done % every == 0 and s < samples:
                        out[li, s] = cilium_refused_given(taken, start, end, step, image,
                                                          weight, retries, sport_lo,
                                                          sport_hi, nxt, run, stack)
                        s += 1
                    done += 1
                port = attempt(taken, start, end, mul, retries, sport_lo, sport_hi, nxt)
                if port < 0:
                    continue
                if phase == 0:
                    done += 1
                taken[port] = True
                h = held[len(held) - 1]
                taken[held[h]] = False
                held[h] = port
                held[len(held) - 1] = (h + 1) % n
    return n


@njit(cache=True)
def cilium_growth_exact(taken, levels, start, end, mul, retries, sport_lo, sport_hi, nxt,
                        step, image, weight, out):
    """Fill the tuple with new connections only; at each level P(refused | taken)."""
    n = 0
    held = np.empty(0, np.int64)
    run = np.zeros(65536, np.int64)
    stack = np.zeros(65536, np.int64)
    for li in range(len(levels)):
        k = levels[li]
        n = fill_to(taken, held, n, k, start, end, mul, retries, sport_lo, sport_hi, nxt,
                    False, False)
        if n < k:
            out[li] = -1.0
            continue
        out[li] = cilium_refused_given(taken, start, end, step, image, weight, retries,
                                       sport_lo, sport_hi, nxt, run, stack)


# -- nf_nat with TIME_WAIT entries (Linux 6.18) ------------------------------------------
# ``state`` per port: NF_FREE, NF_HELD (an entry that blocks the port: established, or any
# UDP one) or NF_TIME_WAIT (a TCP entry in TIME_WAIT or CLOSE, source-NATed); ``tw_end``
# per port: the TIME_WAIT entry's last sequence number (td_end), a random u32.
NF_FREE, NF_HELD, NF_TIME_WAIT = 0, 1, 2
NF_HARDER_THRESH = 32  # nf_nat_core.c: NF_NAT_HARDER_THRESH = NF_NAT_MAX_ATTEMPTS / 4


@njit(cache=True, inline="always")
def nf_seq_has_advanced(isn, old_end) -> bool:
    """The new SYN's end (isn + 1) is past the old entry's, compared as s32."""
    diff = (isn + 1 - old_end) & 0xFFFFFFFF
    return 0 < diff < 0x80000000


@njit(cache=True)
def nf_attempt_tw(state, tw_end, start, end, sport_lo, sport_hi, nxt, advance=True) -> int:
    """One new TCP connection through nf_nat with TIME_WAIT entries about: its port, or -1.

    get_unique_tuple (nf_nat_core.c): the client's port is kept when it lies in the
    range and no entry holds it (``nf_nat_used_tuple``: a TIME_WAIT entry holds it too).
    nf_nat_l4proto_unique_tuple (nf_nat_proto.c): the rounds of :func:`nf_attempt`; in
    the last NF_NAT_HARDER_THRESH attempts of a round ``nf_nat_used_tuple_harder`` ends
    a TIME_WAIT/CLOSE entry and takes its port when the new SYN's sequence number is past
    the old entry's (``nf_seq_has_advanced``; the same pair gives the same answer when a
    later round meets the port again). The caller tells a takeover by
    ``state[port] == NF_TIME_WAIT``.
    """
    size = end - start + 1
    sport = nf_client_port(sport_lo, sport_hi, nxt, advance)
    if start <= sport <= end and state[sport] == NF_FREE:
        return sport
    isn = np.random.randint(0, 1 << 32)
    attempts = min(size, 128)
    while True:
        off = np.random.randint(0, 65536)
        for i in range(attempts):
            port = start + ((off + i) & 0xFFFF) % size
            s = state[port]
            if s == NF_FREE:
                return port
            if (s == NF_TIME_WAIT and attempts - i <= NF_HARDER_THRESH
                    and nf_seq_has_advanced(isn, tw_end[port])):
                return port
        if attempts >= size or attempts < 16:
            return -1
        attempts //= 2


@njit(cache=True)
def nf_refused_share(state, start, end, sport_lo, sport_hi, trials) -> float:
    """P(refusal) of one new connection on this arrangement of ``state`` (left as it
    is), over ``trials`` searches, each with fresh random TIME_WAIT sequence numbers
    and a random client port."""
    nxt = np.empty(0, np.int64)
    tw_end = np.zeros(len(state), np.int64)
    refused = 0
    for _ in range(trials):
        for p in range(start, end + 1):
            tw_end[p] = np.random.randint(0, 1 << 32)
        if nf_attempt_tw(state, tw_end, start, end, sport_lo, sport_hi, nxt) < 0:
            refused += 1
    return refused / trials


@njit(cache=True)
def _expire_time_wait(now, state, tw_expiry, q_port, q_expiry, q_head, q_size,
                      tw_count) -> tuple[int, int, int]:
    """Free the ports whose TIME_WAIT ended by ``now``: the queue holds (port, expiry) in
    the order they entered TIME_WAIT; an entry whose port was taken over, or went to
    TIME_WAIT again later, no longer matches its port's expiry and just leaves the queue.
    Returns the queue's new (head, size) and the TIME_WAIT count."""
    qlen = len(q_port)
    while q_size and q_expiry[q_head] <= now:
        p = q_port[q_head]
        if state[p] == 2 and tw_expiry[p] == q_expiry[q_head]:
            state[p] = 0
            tw_count -= 1
        q_head = (q_head + 1) % qlen
        q_size -= 1
    return q_head, q_size, tw_count


@njit(cache=True)
def nf_steady_tw(levels, tw_ratio, warm_factor, steps, start, end, sport_lo, sport_hi, nxt,
                 out, tw_out):
    """The steady curve of a Linux gateway whose closed connections linger in TIME_WAIT.

    At each level k the tuple holds k established connections; every new connection
    that gets a port ends the oldest, whose entry goes to TIME_WAIT for ``tw_ratio`` x k
    arrivals (TIME_WAIT's 120 s over the connections' hold time, at k / hold arrivals
    per second) with a random last sequence number, unless a new connection takes its
    port over first (:func:`nf_attempt_tw`). ``out[i]``: refusals of ``steps`` new
    connections at level i after a warm-up of ``warm_factor`` x k and one TIME_WAIT
    lifetime; -1 when the level was not reached. ``tw_out[i]``: mean TIME_WAIT entries.
    """
    state = np.zeros(65536, np.uint8)
    tw_end = np.zeros(65536, np.int64)
    tw_expiry = np.full(65536, -1, np.int64)
    top = levels[len(levels) - 1] if len(levels) else 0
    held = np.zeros(top + 1, np.int64)  # established ports, a ring in arrival order
    head = 0
    n = 0
    qlen = int(tw_ratio * top) + 2 * top + 2  # TIME_WAIT entries pushed within a lifetime
    q_port = np.zeros(qlen, np.int64)
    q_expiry = np.zeros(qlen, np.int64)
    q_head = 0
    q_size = 0
    tw_count = 0
    now = 0
    for li in range(len(levels)):
        k = levels[li]
        # Grow to k: new connections only (nothing ends, no TIME_WAIT is made).
        guard = 0
        while n < k and guard < 1000 * k + 1000:
            guard += 1
            now += 1
            q_head, q_size, tw_count = _expire_time_wait(now, state, tw_expiry, q_port,
                                                         q_expiry, q_head, q_size, tw_count)
            port = nf_attempt_tw(state, tw_end, start, end, sport_lo, sport_hi, nxt)
            if port >= 0:
                if state[port] == 2:
                    tw_count -= 1
                state[port] = 1
                held[(head + n) % len(held)] = port
                n += 1
        if n < k:
            out[li] = -1
            tw_out[li] = -1.0
            continue
        life = max(int(tw_ratio * k + 0.5), 1)
        refused = 0
        tw_sum = 0.0
        # As steady(): the first level warms for warm_factor x k, later ones (close to
        # their previous state) for warm_factor x k / 3; then one TIME_WAIT lifetime.
        warm = (int(warm_factor * k) if li == 0 else max(int(warm_factor * k / 3), 1000)) + life
        for step in range(warm + steps):
            now += 1
            q_head, q_size, tw_count = _expire_time_wait(now, state, tw_expiry, q_port,
                                                         q_expiry, q_head, q_size, tw_count)
            port = nf_attempt_tw(state, tw_end, start, end, sport_lo, sport_hi, nxt)
            if step >= warm:
                tw_sum += tw_count
                if port < 0:
                    refused += 1
            if port < 0:
                continue
            if state[port] == 2:  # taken over: the TIME_WAIT entry ends
                tw_count -= 1
            state[port] = 1
            # The oldest established connection ends into TIME_WAIT.
            old = held[head]
            held[(head + n) % len(held)] = port
            head = (head + 1) % len(held)
            state[old] = 2
            tw_count += 1
            tw_end[old] = np.random.randint(0, 1 << 32)
            tw_expiry[old] = now + life
            q_port[(q_head + q_size) % qlen] = old
            q_expiry[(q_head + q_size) % qlen] = now + life
            q_size += 1
        out[li] = refused
        tw_out[li] = tw_sum / steps
    return n
