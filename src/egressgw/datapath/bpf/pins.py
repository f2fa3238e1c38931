"""Where the program and its maps are pinned, and the bpffs they are pinned on.

Pins live on a bpffs mounted at ``/run/egressgw/bpffs``, not ``/sys/fs/bpf``: ``ip netns
exec`` (how the agent runs on a lab gateway) gives its command a private mount namespace
with a fresh /sys, so /sys/fs/bpf there is empty and pins made there vanish with the
command. A bpffs mounted under /run in the host's mount namespace is copied into those
namespaces, and its pins are shared by all of them. Each gateway (network namespace)
gets its own directory: ``/run/egressgw/bpffs/<netns name or "host">/``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path

from egressgw.datapath.kernel.netns import NETNS_DIR, check_netns_name
from egressgw.errors import DatapathError

BPFFS_DIR = Path("/run/egressgw/bpffs")
BPF_FS_MAGIC = 0xCAFE4A11
HOST = "host"


class _Statfs(ctypes.Structure):
    _fields_ = (("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120))


def is_bpffs(path: Path) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = _Statfs()
    if libc.statfs(os.fsencode(str(path)), ctypes.byref(buf)) != 0:
        return False
    return bool((buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC)


def current_netns_name() -> str | None:
    """The ``ip netns`` name of this process's network namespace, if it has one."""
    try:
        own = os.stat("/proc/self/ns/net")
        names = os.listdir(NETNS_DIR)
    except OSError:
        return None
    for name in sorted(names):
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev):
            return name
    return None


def pin_name(netns: str | None) -> str:
    """The gateway's directory name: its netns (given, or the one we run in) or host."""
    if netns is not None:
        return check_netns_name(netns)
    return current_netns_name() or HOST


def ensure_bpffs(root: Path = BPFFS_DIR) -> None:
    """Mount a bpffs at ``root`` unless one is there.

    Inside a named network namespace (``ip netns exec``) the mount would be private to
    this process and the pins would vanish with it, so that case is an error that says
    what to run outside.
    """
    if is_bpffs(root):
        return
    if current_netns_name() is not None:
        raise DatapathError(
            f"no bpffs at {root} in the host's mount namespace; pins made inside "
            f"`ip netns exec` would vanish: run `mkdir -p {root} && mount -t bpf bpf {root}` "
            "outside it first (`egressgw lab up` does)")
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise DatapathError(f"mount -t bpf bpf {root}: {done.stderr.strip()}")


def uplink_state_path(pin_dir: Path) -> Path:
    """Where the device the program was attached to is recorded (for --cleanup)."""
    return pin_dir.parent.parent / f"{pin_dir.name}.uplink.json"


def remove_gateway_pins(netns: str, root: Path = BPFFS_DIR) -> None:
    """Unpin everything of gateway ``netns`` (its maps and programs go with the last
    reference) and forget its uplink."""
    pin_dir = root / check_netns_name(netns)
    if pin_dir.exists():
        shutil.rmtree(pin_dir)
    uplink_state_path(pin_dir).unlink(missing_ok=True)
