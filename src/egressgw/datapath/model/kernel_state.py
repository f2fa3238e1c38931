"""The compiled kernel's state, one named structure: what every kernel function receives.

``State`` is a ``NamedTuple`` of numpy arrays; numba compiles attribute access on it to a
field of a struct, so naming costs nothing at run time (bench/bench_sim.py, measured in
docs/model.md "The compiled engine"). Which word of an array means what is named by the
index constants of ``kernel_layout.py`` (``S_*`` into ``st``, ``R_*`` into a record row, ...).

The arrays are replaced when they grow, so a ``State`` is a snapshot of references:
``CompiledModel.state`` builds a new one after every growth.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
F64 = npt.NDArray[np.float64]


class State(NamedTuple):
    """Everything the kernel reads and writes.

    Scalars (one word per ``kernel`` index constant):

    - ``st``: int64 bookkeeping (``S_*``): free lists, LRU heads and tails, counts, heap
      size, the next event sequence number, the MT19937 index, pending GC signals.
    - ``fs``: float64 clock and GC state (``F_*``).
    - ``cfg`` / ``cfgf``: int64 / float64 settings (``C_*`` / ``T_*``), from ModelConfig.
    - ``cnt``: the counters of ModelCounters (``K_*``).
    - ``tries``: the histogram of the port search's retries (ModelCounters.tries).
    - ``mt``: the 624-word MT19937 state of the random source (index in ``st``).
    - ``lat``: the extra connect latency histogram (ModelCounters.delayed).

    Tables:

    - ``CR``: connection records, one uint32 row of ``CR_WORDS`` per CT key (``R_*``);
      ``CF`` is the same memory as float64 (the CT expiry is column ``CF_EXPIRY``).
    - ``CB``: the records' hash index (power of two buckets, chained through ``R_NEXT``).
    - ``NR``: IN NAT entries, one uint32 row of ``NR_WORDS`` (``E_*``).
    - ``NB``: the IN entries' hash index (chained through ``E_HNEXT``).
    - ``HI``: the pending-event heap, int64 rows of ``H_WORDS`` (``H_*``); ``HF`` is the
      same memory as float64 (the times).
    """

    st: I64
    fs: F64
    cfg: I64
    cfgf: F64
    cnt: I64
    tries: I64
    mt: U32
    lat: I64
    CR: U32
    CF: F64
    CB: U32
    NR: U32
    NB: U32
    HI: I64
    HF: F64


class BatchColumns(NamedTuple):
    """A ConnectionBatch's columns, as ``kernel.run`` reads them (one row per connection)."""

    start: F64
    duration: F64
    end: npt.NDArray[np.uint8]
    src: U32
    sport: npt.NDArray[np.uint16]
    dst: U32
    dport: npt.NDArray[np.uint16]
    proto: npt.NDArray[np.uint8]
    egress: U32
    keepalive: npt.NDArray[np.float32]
    retries: npt.NDArray[np.uint8]
    rto: npt.NDArray[np.float32]
