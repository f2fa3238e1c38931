"""numba's on-disk cache for the kernel, keyed on every source the compiled code depends on.

numba stamps a cached function with its own file only (numba 0.68: a SHA-256 of that
file; older releases: its mtime and size). Compiled code also freezes what it takes from
other modules: ``gcpacing.get_interval`` is linked into ``kernel_gc.gc``, ``LATENCY_STEP``
(types.py) becomes a constant of ``kernel.run``. Changing such a module left the cached
kernel running the old code. ``register`` installs a cache locator for the listed files
whose stamp is one digest over all of them, so changing any one recompiles every cached
function defined in any of them. Where the cache lives is unchanged (``__pycache__`` next
to the file, or ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from numba.core import caching


def _numba_class(name: str) -> Any:
    """numba 0.68 names these classes without a leading underscore, 0.59 (the lowest
    release pyproject.toml accepts) with one."""
    names = vars(caching)
    return names.get(name) or names[f"_{name}"]


_USER = _numba_class("UserProvidedCacheLocator")
_IN_TREE = _numba_class("InTreeCacheLocator")
_IMPL = _numba_class("CacheImpl")  # holds the list of locator classes, tried in order


def sources_digest(paths: tuple[Path, ...]) -> str:
    """One SHA-256 over the files' names and contents, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def register(paths: tuple[Path, ...]) -> None:
    """Cache functions defined in ``paths`` under one stamp over all of them.

    Call before the first ``@njit(cache=True)`` of those files runs (a locator is chosen
    when a function is decorated). Registering the same files again does nothing.
    """
    files = frozenset(str(path.resolve()) for path in paths)
    if any(getattr(cls, "kernel_files", None) == files for cls in _IMPL._locator_classes):
        return

    def stamp(_self: object) -> str:
        # Computed when a cache is read or written, so an edit made while the process
        # runs is seen by the next compile.
        return sources_digest(paths)

    def covers(py_file: str) -> bool:
        return str(Path(py_file).resolve()) in files

    def from_function(cls: Any, py_func: object, py_file: str) -> Any:
        if not covers(py_file):
            return None
        return super(cls, cls).from_function(py_func, py_file)

    classes = [
        type(f"Kernel{base.__name__.lstrip('_')}", (base,), {
            "kernel_files": files,
            "get_source_stamp": stamp,
            "from_function": classmethod(from_function),
        })
        for base in (_USER, _IN_TREE)  # NUMBA_CACHE_DIR first, as numba orders them
    ]  # fmt: skip
    _IMPL._locator_classes[0:0] = classes
