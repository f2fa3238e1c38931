"""Entries of a ``conntrack -L`` dump whose port the kernel can take over.

nf_nat takes over the port of a source-NATed TCP entry in TIME_WAIT, CLOSE or SYN_SENT2
when its port search gets hard (egressgw.limits.TAKEOVER_TCP_STATES, measured on this
kernel). Such entries are still listed, and counted in Cilium's columns, but they do not
block a new connection. This picks the TCP lines in those states (default and
``-o extended`` output, where the state is the word after the timeout) and counts them
with the ordinary conntrack reader, so both counts follow the same rules.
"""

from __future__ import annotations

import re

from egressgw.dumps.base import normalize
from egressgw.dumps.conntrack import FORMAT, count_conntrack
from egressgw.limits import TAKEOVER_TCP_STATES
from egressgw.net import NatEndpoint

_STATES = b"|".join(name.encode() for name in TAKEOVER_TCP_STATES.values())
_TAKEOVER_LINE = re.compile(
    rb"^(?:ipv[46]\s+\d+\s+)?tcp\s+6\s+\d+\s+(?:" + _STATES + rb")\s[^\n]*\n", re.MULTILINE
)


def takeover_counts(data: bytes, *, source: str) -> dict[NatEndpoint, int]:
    """Per nat-stats key, the connections of a conntrack dump in a takeover state.

    Lines the main pass could not parse are skipped here (it already reported them).
    """
    lines = b"".join(_TAKEOVER_LINE.findall(normalize(data)))
    if not lines:
        return {}
    return dict(count_conntrack(lines, source=source, skip_invalid=True).counts)


__all__ = ["FORMAT", "takeover_counts"]
