"""Interned addresses: the model keys its tables by uint32 ids, not by addresses.

Ids make IPv4 and IPv6 cost the same and fit numpy columns. The top bit carries the
family (IPv6 ids have it set) so the datapath can pick the per-family NAT map from the id
alone, as Cilium keeps separate ``snat_v4_external`` and ``snat_v6_external`` maps.
"""

from __future__ import annotations

import ipaddress

from egressgw.net import IPAddress

V6_BIT = 0x8000_0000


def is_v6(address_id: int) -> bool:
    return bool(address_id & V6_BIT)


class AddressTable:
    """Assigns each address a stable id on first sight, and maps ids back."""

    __slots__ = ("_ids", "_v4", "_v6")

    def __init__(self) -> None:
        self._ids: dict[IPAddress, int] = {}
        self._v4: list[IPAddress] = []
        self._v6: list[IPAddress] = []

    def intern(self, ip: IPAddress) -> int:
        found = self._ids.get(ip)
        if found is not None:
            return found
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"expected an IP address, got {ip!r}")
        if max(len(self._v4), len(self._v6)) >= V6_BIT - 1:
            raise OverflowError("too many interned addresses")
        if ip.version == 4:
            new = len(self._v4)
            self._v4.append(ip)
        else:
            new = V6_BIT | len(self._v6)
            self._v6.append(ip)
        self._ids[ip] = new
        return new

    def address(self, address_id: int) -> IPAddress:
        if address_id & V6_BIT:
            return self._v6[address_id & ~V6_BIT]
        return self._v4[address_id]

    def __len__(self) -> int:
        return len(self._ids)
