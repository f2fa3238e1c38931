"""The kernel's hash of a key packed in three 32-bit words, and the buckets built on it.

Records are indexed by their tuple (``CB``); IN entries by their key without the port
plus the port (``NB``), so the ports one search walks sit in consecutive buckets.
"""

# ruff: noqa: ANN001, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model.kernel_jit import jit


@jit(inline=True)
def key_hash(a, b, c, mask) -> int:
    """Bucket of a key packed into three 32-bit words."""
    x = (np.uint64(a) << np.uint64(32)) | np.uint64(b)
    x ^= np.uint64(c) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return np.int64(x & np.uint64(mask))


@jit(inline=True)
def conn_bucket(CB, src, dst, ports, proto) -> int:
    key = (np.uint64(ports) << np.uint64(8)) | np.uint64(proto)
    return key_hash(src, dst, key, CB.shape[0] - 1)


@jit(inline=True)
def in_base(NB, egress, dst, dport, proto) -> int:
    """Hash of an IN key without its port: the bucket of port p is ``base + p``."""
    key = (np.uint64(dport) << np.uint64(8)) | np.uint64(proto)
    return key_hash(egress, dst, key, NB.shape[0] - 1)


@jit(inline=True)
def in_bucket(NB, egress, dst, port, dport, proto) -> int:
    # The ports of one {egress, remote, remote port, proto} sit in consecutive buckets, so
    # the port search's walk (port + 1 or + 2 per try) reads one index cache line per
    # eight or sixteen tries and hashes the key once.
    return (in_base(NB, egress, dst, dport, proto) + port) & (NB.shape[0] - 1)
