"""Install size and time of the core and of the full (``[sim]``) install, and the start-up
of ``egressgw nat-stats`` from each: the core against the full install, side by side.

Builds the wheel of this tree once, then for each of ``--runs`` rounds creates a fresh venv
per variant and times ``pip install`` (pip's cache is warm after the first round: the
first round's time is the one with downloads/unpacking from the local index, reported
separately). Size is ``du`` of the venv. Start-up: ``egressgw nat-stats --from`` the seed
dump (9 lines), ``--repeat`` times per variant, alternating.

    .venv/bin/python bench/bench_install.py [--runs 3] [--repeat 15] [--quick]

``--quick`` is a smoke run of the procedure, not a measurement: the wheel is installed
with ``--no-deps`` into both venvs, which see this
interpreter's packages through a ``.pth`` file, one run and one start-up each (the
sizes and times it prints say nothing about the two installs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from benchutil import format_load, load_average

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "src" / "egressgw" / "examples" / "seed-node-nat-list.txt"


def size_mb(path: Path) -> float:
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            file = Path(base, name)
            if not file.is_symlink():
                total += file.stat().st_blocks * 512
    return total / 1e6


def install(wheel: Path, target: Path, extra: str, quick: bool) -> float:
    if target.exists():
        shutil.rmtree(target)
    venv.create(target, with_pip=not quick)
    spec = f"{wheel}[{extra}]" if extra else str(wheel)
    if quick:  # this interpreter's packages stand in for the dependencies
        [site] = target.glob("lib/python*/site-packages")
        (site / "bench-deps.pth").write_text("\n".join(p for p in sys.path if p) + "\n")
        command = [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"),
                   "install", "-q", "--no-deps", spec]
    else:
        command = [str(target / "bin" / "python"), "-m", "pip", "install", "-q", spec]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def startup(target: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(target / "bin" / "egressgw"), "nat-stats", "--from", str(SEED)],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def describe(values: list[float], unit: str) -> str:
    return (f"median {statistics.median(values):.2f} {unit} "
            f"(range {min(values):.2f}-{max(values):.2f}, n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a smoke run (see above)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeat = 1, 1
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="egw-install-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                        str(work), str(ROOT)], check=True, capture_output=True)
        [wheel] = work.glob("egressgw-*.whl")
        variants = {"core": "", "full": "sim"}
        times: dict[str, list[float]] = {name: [] for name in variants}
        sizes: dict[str, float] = {}
        for _ in range(args.runs):
            for name, extra in variants.items():
                times[name].append(install(wheel, work / name, extra, args.quick))
                sizes[name] = size_mb(work / name)
        starts: dict[str, list[float]] = {name: [] for name in variants}
        for name in variants:
            startup(work / name)  # first run writes the .pyc files
        for _ in range(args.repeat):
            for name in variants:
                starts[name].append(startup(work / name))
        print(format_load(load_before, load_average()))
        for name in variants:
            print(f"{name}: venv {sizes[name]:.0f} MB; pip install first {times[name][0]:.1f} s, "
                  f"then {describe(times[name][1:] or times[name], 's')}")
            print(f"{name}: nat-stats start-up {describe(starts[name], 's')}")
        print(f"size core/full: {sizes['core'] / sizes['full']:.2f}; start-up core/full: "
              f"{statistics.median(starts['core']) / statistics.median(starts['full']):.2f}")


if __name__ == "__main__":
    main()
