"""Create and pin the maps, load the program into them, attach it with tc (clsact).

Maps are created here over bpf(2) (sized by ``--bpf-nat-global-max``) and pinned first;
``bpftool prog loadall`` then loads the object reusing them (``map name X pinned P``) and
pins the two programs; ``tc filter ... bpf da object-pinned`` attaches them to the uplink's
clsact hooks. A restarted agent finds the pins and the attached filters and touches
neither, so the NAT map and every connection in it survive.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from egressgw.errors import DatapathError

from .compiler import build
from .layout import MapSpec, map_specs
from .syscall import BpfMap

PROGRAMS = {"egress": "egw_egress", "ingress": "egw_ingress"}
# Our filters' preference on the uplink's clsact hooks (others may use other prefs).
TC_PREF = 7
TC_HANDLE = 1


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                              check=False)
    except FileNotFoundError as exc:
        package = {"bpftool": "bpftool", "tc": "iproute2"}.get(str(exc.filename), "")
        hint = f": install Debian's {package}" if package else ""
        raise DatapathError(f"{exc.filename}: not installed{hint}") from None
    if check and done.returncode != 0:
        raise DatapathError(f"{' '.join(argv[:8])}: {done.stderr.strip() or 'failed'}")
    return done


def _tc(netns: str | None, *args: str) -> list[str]:
    return ["tc", *(("-n", netns) if netns else ()), *args]


class PinnedMaps:
    """The program's maps, pinned under one directory, open in this process."""

    def __init__(self, pin_dir: Path, maps: dict[str, BpfMap]) -> None:
        self.pin_dir = pin_dir
        self.maps = maps

    def __getitem__(self, name: str) -> BpfMap:
        return self.maps[name]

    @classmethod
    def open_or_create(cls, pin_dir: Path, nat_max: int, *, distributed_lru: bool = False
                       ) -> PinnedMaps:
        """Open the pinned maps; create and pin the missing ones.

        A pinned NAT map of another size is an error: resizing means losing every
        connection, which only ``--cleanup`` may do.
        """
        pin_dir.mkdir(parents=True, exist_ok=True)
        maps: dict[str, BpfMap] = {}
        try:
            for spec in map_specs(nat_max, distributed_lru=distributed_lru):
                maps[spec.name] = _open_or_create(pin_dir, spec)
        except BaseException:
            for m in maps.values():
                m.close()
            raise
        return cls(pin_dir, maps)

    @classmethod
    def open_existing(cls, pin_dir: Path) -> PinnedMaps:
        """Open the pinned maps only (readers: ``egressgw bpf nat list``)."""
        maps: dict[str, BpfMap] = {}
        for spec in map_specs(1):
            path = pin_dir / spec.name
            if path.exists():
                maps[spec.name] = BpfMap.open_pinned(str(path))
        if "snat_v4" not in maps:
            raise DatapathError(f"no BPF datapath pinned at {pin_dir} (is the agent running "
                                "with --datapath bpf?)")
        return cls(pin_dir, maps)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()


def _open_or_create(pin_dir: Path, spec: MapSpec) -> BpfMap:
    path = pin_dir / spec.name
    if path.exists():
        m = BpfMap.open_pinned(str(path))
        info = m.info
        shape = (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)
        want = (spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags)
        if shape != want:
            m.close()
            field = (" (--bpf-nat-global-max, --bpf-distributed-lru)"
                     if spec.name.startswith("snat_v") else "")
            raise DatapathError(
                f"{path}: pinned map has {info.max_entries} entries of {info.key_size}+"
                f"{info.value_size} bytes, flags {info.map_flags}, expected "
                f"{spec.max_entries}, flags {spec.flags}{field}; "
                "`egressgw agent --datapath bpf --cleanup` removes it")
        return m
    m = BpfMap.create(spec.name, spec.type, spec.key_size, spec.value_size,
                      max_entries=spec.max_entries, flags=spec.flags)
    try:
        m.pin(str(path))
    except BaseException:
        m.close()
        raise
    return m


def programs_dir(pin_dir: Path) -> Path:
    return pin_dir / "progs"


def load_programs(pin_dir: Path) -> None:
    """Build (if needed) and load the object into the pinned maps; pin its programs."""
    obj = build()
    progs = programs_dir(pin_dir)
    unpin_programs(pin_dir)
    reuse: list[str] = []
    for spec in map_specs(1):
        reuse += ["map", "name", spec.name, "pinned", str(pin_dir / spec.name)]
    done = _run(["bpftool", "prog", "loadall", str(obj), str(progs), "type", "classifier",
                 *reuse], check=False)
    if done.returncode != 0:
        unpin_programs(pin_dir)
        log = done.stderr.strip()
        raise DatapathError(f"bpftool prog loadall {obj.name}: {log[-3000:]}")


def unpin_programs(pin_dir: Path) -> None:
    progs = programs_dir(pin_dir)
    if progs.exists():
        for pin in progs.iterdir():
            pin.unlink()
        progs.rmdir()


def attached(device: str, netns: str | None) -> bool:
    """Whether both of our filters are on the device's clsact hooks."""
    for hook, prog in PROGRAMS.items():
        done = _run(_tc(netns, "-j", "filter", "show", "dev", device, hook), check=False)
        if done.returncode != 0:
            return False
        try:
            filters = json.loads(done.stdout or "[]")
        except json.JSONDecodeError:
            return False
        names = [str(f.get("options", {}).get("bpf_name", "")) for f in filters
                 if f.get("pref") == TC_PREF]
        if not any(name.startswith(prog) for name in names):
            return False
    return True


def attach(pin_dir: Path, device: str, netns: str | None) -> None:
    """Put the pinned programs on ``device``'s clsact egress and ingress hooks."""
    qdiscs = _run(_tc(netns, "qdisc", "show", "dev", device)).stdout
    if "clsact" not in qdiscs:
        _run(_tc(netns, "qdisc", "add", "dev", device, "clsact"))
    for hook, prog in PROGRAMS.items():
        _run(_tc(netns, "filter", "replace", "dev", device, hook, "pref", str(TC_PREF),
                 "handle", str(TC_HANDLE), "bpf", "da", "object-pinned",
                 str(programs_dir(pin_dir) / prog)))


def detach(device: str, netns: str | None) -> None:
    """Remove our filters (and the clsact qdisc when nothing else uses it)."""
    for hook in PROGRAMS:
        _run(_tc(netns, "filter", "del", "dev", device, hook, "pref", str(TC_PREF)),
             check=False)
    remaining = [
        _run(_tc(netns, "filter", "show", "dev", device, hook), check=False).stdout.strip()
        for hook in PROGRAMS
    ]
    if not any(remaining):
        _run(_tc(netns, "qdisc", "del", "dev", device, "clsact"), check=False)


def remove_pins(pin_dir: Path) -> None:
    """Unpin the programs and maps and remove the directory (kernel objects go with the
    last reference)."""
    if pin_dir.exists():
        shutil.rmtree(pin_dir)
