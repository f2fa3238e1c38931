"""Readers for NAT table dumps taken on real nodes.

Two formats: ``cilium-dbg bpf nat list`` (Cilium's BPF SNAT map) and ``conntrack -L``
(the Linux kernel's conntrack table, where masqueraded connections are the NAT table).

Two ways to read them:

- :func:`count_endpoints`, the bulk path: connections per :class:`~egressgw.net.NatEndpoint`
  straight from the bytes, for nat-stats on dumps with millions of lines;
- :func:`iter_entries`, the entry path: one :class:`~egressgw.net.NatEntry` per NAT entry,
  every field parsed, for tests and tools.
"""

from egressgw.dumps.base import DUMP_FORMATS, DumpCounts, read_source
from egressgw.dumps.reader import count_endpoints, count_file, detect_format, iter_entries

__all__ = [
    "DUMP_FORMATS",
    "DumpCounts",
    "count_endpoints",
    "count_file",
    "detect_format",
    "iter_entries",
    "read_source",
]
