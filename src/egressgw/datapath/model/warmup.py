"""Whether the compiled model must be compiled before it runs (numba's disk cache).

numba caches each compiled function in ``__pycache__`` next to kernel.py, in an index
named after the function and the line it starts on (``kernel.run-808.py311.nbi``), and
recompiles when kernel.py or a module it takes code from changed (kernel.SOURCES). The
first run after installing or changing egressgw therefore spends about 20 s compiling
(docs/performance.md); commands say so on stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMPILE_NOTICE = "egressgw: compiling the model, about 20 s, once (cached afterwards)"


def model_needs_compiling() -> bool:
    """True when numba has no cache for the model kernel's entry point newer than it.

    With ``NUMBA_CACHE_DIR`` set the cache lives elsewhere: then nothing is claimed.
    """
    if os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("NUMBA_DISABLE_JIT"):
        return False
    from egressgw.datapath.model import kernel  # noqa: PLC0415 - imports numba

    source = Path(kernel.__file__)
    line = kernel.run.py_func.__code__.co_firstlineno
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    index = source.parent / "__pycache__" / f"{source.stem}.run-{line}.{tag}.nbi"
    # The cache is keyed on every kernel source (kernel_cache.py): any newer one recompiles.
    helpers = (path for path in kernel.SOURCES if path.name != source.name)
    try:
        newest = max(path.stat().st_mtime for path in (source, *helpers))
        return index.stat().st_mtime < newest
    except FileNotFoundError:
        return True
