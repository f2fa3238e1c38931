"""How kernel code is compiled (``jit``), and the sources its numba cache is keyed on.

numba caches a compiled function on disk keyed on its own file only, yet the kernel's
functions take code and constants from each other's modules. ``SOURCES`` lists every
file whose code or constants compiled kernel code takes in, and ``kernel_cache.register``
keys every function defined in any of them on one digest over all of them, so editing any
one recompiles all (kernel_cache.py). The registration has to happen before the first
decorator of those files runs; ``jit`` is that decorator, and it refuses a function
whose file is not listed, so a new kernel module cannot be left out of the key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from numba import njit

from egressgw.datapath.model import kernel_cache

_HERE = Path(__file__).parent

SOURCES: tuple[Path, ...] = tuple(
    _HERE / name
    for name in (
        "kernel.py",  # the bulk engine (run) and the entry points
        "kernel_jit.py",
        "kernel_layout.py",
        "kernel_random.py",
        "kernel_hash.py",
        "kernel_records.py",
        "kernel_nat.py",
        "kernel_ports.py",
        "kernel_packets.py",
        "kernel_gc.py",
        "kernel_heap.py",
        "kernel_views.py",
        "kernel_prefetch.py",
        "kernel_state.py",
        "gcpacing.py",  # get_interval is compiled into kernel_gc.gc
        "types.py",  # LATENCY_STEP is a constant of kernel.run
    )
)
kernel_cache.register(SOURCES)
_FILES = frozenset(path.resolve() for path in SOURCES)


def jit(*, inline: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """numba's ``njit``, cached on disk under the kernel's key, without reference counting
    (``_nrt=False``: no kernel function allocates, and a call then pays no atomic
    operations per array argument); ``inline``: inlined into its callers at numba IR level
    (small hot helpers)."""

    def decorate(function: Callable[..., Any]) -> Any:
        source = Path(function.__code__.co_filename).resolve()
        if source not in _FILES:
            raise RuntimeError(
                f"{source.name}: compiles kernel code but is not in kernel_jit.SOURCES"
            )
        options: dict[str, Any] = {"cache": True, "_nrt": False}
        if inline:
            options["inline"] = "always"
        return njit(**options)(function)

    return decorate
