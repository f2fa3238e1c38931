"""Network namespaces: run a command in one, or create a socket bound to one.

Python 3.11 has no ``os.setns``, so the thread enters the namespace through libc's
``setns(2)``, creates what it needs and returns to its own namespace. A netlink socket
stays bound to the namespace it was created in, which is all the conntrack reader needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from egressgw.errors import DatapathError, InputError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
# What `ip netns add` accepts and a path component allows.
NETNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

T = TypeVar("T")


def check_netns_name(name: str) -> str:
    """A namespace name as `ip netns` would create it under /run/netns."""
    if not NETNS_NAME.fullmatch(name):
        raise InputError(f"{name!r}: not a network namespace name", field="netns")
    return name


def netns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (unchanged when ``netns`` is None)."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", check_netns_name(netns), *argv]


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise DatapathError(f"setns: {os.strerror(errno)}")


@contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body with this thread in ``netns``, then return to the original namespace."""
    if netns is None:
        yield
        return
    path = os.path.join(NETNS_DIR, check_netns_name(netns))
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatapathError(f"network namespace {netns!r}: {exc.strerror}") from None
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


def call_in(netns: str | None, make: Callable[[], T]) -> T:
    """``make()`` called inside ``netns``: a socket it creates stays bound there."""
    with entered(netns):
        return make()
