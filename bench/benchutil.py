"""What every benchmark in bench/ prints the same way: load, median and range, the CLI.

Imported by the benchmarks as a sibling module (``python bench/bench_x.py`` puts bench/
on ``sys.path``).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path


def egressgw_command(bin_dir: Path | None = None) -> list[str]:
    """The ``egressgw`` console script next to this interpreter, else ``python -m egressgw``
    (the package's ``__main__``; ``egressgw.cli`` is a package and cannot be run with -m)."""
    script = (bin_dir or Path(sys.executable).parent) / "egressgw"
    return [str(script)] if script.exists() else [sys.executable, "-m", "egressgw"]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def format_load(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    """The line every benchmark prints: 1, 5 and 15-minute load averages around the run."""
    return (f"load average (1, 5, 15 min): before {' '.join(f'{x:.2f}' for x in before)}, "
            f"after {' '.join(f'{x:.2f}' for x in after)}, on {os.cpu_count()} CPUs")


def spread(values: Sequence[float], fmt: str = ",.0f", unit: str = "") -> str:
    """``median M (range A-B, n=N)`` of repeated measurements."""
    median = statistics.median(values)
    return (f"median {median:{fmt}}{unit} (range {min(values):{fmt}}-{max(values):{fmt}}{unit}, "
            f"n={len(values)})")
