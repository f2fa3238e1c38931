"""What the kernel's LPM trie does with a key that has host bits, the fact behind showing
a policy's CIDR as written (egressgw.policy.listing): Cilium's egress policy map is an
LPM trie keyed by {prefix length, source IP, destination address}, and it stores
netip.ParsePrefix's address unmasked (pkg/maps/egressmap NewEgressPolicyKey4).

Checked here with bpf(2) on this kernel: a key inserted as 198.51.100.7/24 is dumped as
198.51.100.7, and a later key equal in its first 24 bits replaces it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import platform
import struct

import pytest

pytestmark = pytest.mark.kernel

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_GET_NEXT_KEY = 0, 1, 2, 4
BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC = 11, 1
KEY_SIZE = 12  # prefix length (u32), source IPv4, destination IPv4: Cilium's key4 layout


def bpf(command: int, attr: bytes) -> int:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: bpf(2) must be usable")
        pytest.skip("bpf(2) needs root (CI runs it)")
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    result = libc.syscall(_SYS_BPF[platform.machine()], command, buffer, 128)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return int(result)


def key(source: str, destination: str, prefix: int) -> ctypes.Array[ctypes.c_char]:
    data = (struct.pack("=I", 32 + prefix) + ipaddress.ip_address(source).packed
            + ipaddress.ip_address(destination).packed)
    return ctypes.create_string_buffer(data, KEY_SIZE)


def update(fd: int, k: ctypes.Array[ctypes.c_char], value: bytes) -> None:
    v = ctypes.create_string_buffer(value, 8)
    bpf(BPF_MAP_UPDATE_ELEM, struct.pack("=IIQQQ", fd, 0, ctypes.addressof(k),
                                         ctypes.addressof(v), 0))


def dump(fd: int) -> list[tuple[int, str, str, bytes]]:
    entries = []
    current: ctypes.Array[ctypes.c_char] | None = None
    while True:
        found = ctypes.create_string_buffer(KEY_SIZE)
        try:
            bpf(BPF_MAP_GET_NEXT_KEY, struct.pack(
                "=IIQQ", fd, 0, 0 if current is None else ctypes.addressof(current),
                ctypes.addressof(found)))
        except FileNotFoundError:
            return entries
        value = ctypes.create_string_buffer(8)
        bpf(BPF_MAP_LOOKUP_ELEM, struct.pack("=IIQQ", fd, 0, ctypes.addressof(found),
                                             ctypes.addressof(value)))
        raw = found.raw
        entries.append((struct.unpack("=I", raw[:4])[0] - 32, str(ipaddress.ip_address(raw[4:8])),
                        str(ipaddress.ip_address(raw[8:12])), value.raw))
        current = found


def test_the_lpm_trie_keeps_host_bits_and_equal_prefixes_replace() -> None:
    fd = bpf(BPF_MAP_CREATE, struct.pack("=IIIII", BPF_MAP_TYPE_LPM_TRIE, KEY_SIZE, 8, 16,
                                         BPF_F_NO_PREALLOC))
    try:
        update(fd, key("192.0.2.10", "198.51.100.7", 24), b"A" * 8)
        assert dump(fd) == [(24, "192.0.2.10", "198.51.100.7", b"A" * 8)]
        update(fd, key("192.0.2.10", "198.51.100.0", 24), b"B" * 8)
        assert dump(fd) == [(24, "192.0.2.10", "198.51.100.0", b"B" * 8)]
    finally:
        os.close(fd)


def test_a_dump_walks_the_trie_in_postorder() -> None:
    """cilium-dbg bpf egress list prints the map in its iteration order, unsorted
    (cilium-dbg/cmd/bpf_egress_list.go): the IPv4 map, then the IPv6 map, each as the
    kernel's get_next_key walks the LPM trie. Inserted in a scrambled order here, the dump
    comes out by source, and per source more specific prefixes before the ones holding
    them, lower addresses first: the order egress list prints (policy/listing.py)."""
    keys = [("192.0.2.10", "203.0.113.0", 24), ("192.0.2.10", "198.51.100.0", 24),
            ("192.0.2.10", "198.51.100.200", 32), ("192.0.2.9", "198.51.100.0", 24),
            ("192.0.2.10", "198.51.100.0", 30), ("192.0.2.10", "198.51.100.128", 25)]
    fd = bpf(BPF_MAP_CREATE, struct.pack("=IIIII", BPF_MAP_TYPE_LPM_TRIE, KEY_SIZE, 8, 16,
                                         BPF_F_NO_PREALLOC))
    try:
        for source, destination, prefix in keys:
            update(fd, key(source, destination, prefix), b"\0" * 8)
        dumped = [(source, f"{destination}/{prefix}") for prefix, source, destination, _ in
                  dump(fd)]
    finally:
        os.close(fd)
    assert dumped == [
        ("192.0.2.9", "198.51.100.0/24"),
        ("192.0.2.10", "198.51.100.0/30"),
        ("192.0.2.10", "198.51.100.200/32"),
        ("192.0.2.10", "198.51.100.128/25"),
        ("192.0.2.10", "198.51.100.0/24"),
        ("192.0.2.10", "203.0.113.0/24"),
    ]
    from egressgw.policy.listing import egress_list  # noqa: PLC0415
    from egressgw.rules import EgressRule, RuleKind  # noqa: PLC0415

    rules = [EgressRule(ipaddress.ip_address(s), ipaddress.ip_network(f"{d}/{p}"),
                        RuleKind.EXCLUDED) for s, d, p in keys]
    assert [(e.source_ip, e.destination_cidr) for e in egress_list(rules)] == dumped
