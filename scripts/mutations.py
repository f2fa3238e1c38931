#!/usr/bin/env python3
"""Semantic mutation testing, on demand: does the suite notice when a rule is broken?

Each mutation below changes one modelled rule the way a careless edit would (a ``>`` that
becomes ``>=``, two counters swapped, a default changed). For each, the source tree is
copied to a temporary directory, the mutation applied there, and the tests that should
notice are run against the copy. A mutation the tests pass is a *survivor*: a rule the
suite does not pin. The working tree is never touched.

    .venv/bin/python scripts/mutations.py              # every mutation
    .venv/bin/python scripts/mutations.py -k signal    # those whose name contains "signal"
    .venv/bin/python scripts/mutations.py --record docs/mutations.md

First the same tests run on an unmutated copy (the control): a test that fails anyway
would make every mutation look killed. Each killed mutation is reported with the test that
failed first.

Exit status: 0 when every mutation was killed, 1 when one survived, 2 when a mutation no
longer applies (its source text moved: update the mutation with the code) or the control
run failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "src/egressgw/datapath/model"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str  # exact source text, found exactly once
    new: str
    tests: tuple[str, ...]
    why: str  # the rule and where it comes from


MUTATIONS = (
    Mutation(
        "signal threshold > becomes >= (reference engine)",
        f"{MODEL}/reference.py",
        "if retries > config.signal_thres:",
        "if retries >= config.signal_thres:",
        ("tests/test_model_ct.py", "tests/test_model_semantics.py"),
        "nat.h snat_v4_new_mapping: nat_fill_up when retries > SNAT_SIGNAL_THRES",
    ),
    Mutation(
        "signal threshold > becomes >= (compiled engine)",
        f"{MODEL}/kernel_ports.py",
        "if retries > cfg[C_THRES]:",
        "if retries >= cfg[C_THRES]:",
        ("tests/test_model_ct.py", "tests/test_model_semantics.py"),
        "nat.h snat_v4_new_mapping: nat_fill_up when retries > SNAT_SIGNAL_THRES",
    ),
    Mutation(
        "OUT and IN eviction counters swapped (reference engine)",
        f"{MODEL}/reference.py",
        "self.counters.evictions_out += 1\n        else:\n"
        "            self.counters.evictions_in += 1",
        "self.counters.evictions_in += 1\n        else:\n"
        "            self.counters.evictions_out += 1",
        ("tests/test_model_semantics.py", "tests/test_model_fidelity.py",
         "tests/test_model_ct.py"),
        "an evicted OUT entry breaks the connection, an evicted IN entry drops its replies",
    ),
    Mutation(
        "an OUT eviction counted as an IN eviction (compiled engine)",
        f"{MODEL}/kernel_nat.py",
        "cnt[K_EVICT_OUT] += 1",
        "cnt[K_EVICT_IN] += 1",
        ("tests/test_model_ct.py", "tests/test_model_semantics.py"),
        "an evicted OUT entry breaks the connection, an evicted IN entry drops its replies",
    ),
    Mutation(
        "an IN eviction counted as an OUT eviction (compiled engine)",
        f"{MODEL}/kernel_nat.py",
        "cnt[K_EVICT_IN] += 1",
        "cnt[K_EVICT_OUT] += 1",
        ("tests/test_model_ct.py", "tests/test_model_semantics.py"),
        "an evicted OUT entry breaks the connection, an evicted IN entry drops its replies",
    ),
    Mutation(
        "OUT and IN eviction counters swapped (compiled engine's facade)",
        f"{MODEL}/compiled.py",
        "evictions_out=int(c[k.K_EVICT_OUT]),\n            evictions_in=int(c[k.K_EVICT_IN]),",
        "evictions_out=int(c[k.K_EVICT_IN]),\n            evictions_in=int(c[k.K_EVICT_OUT]),",
        ("tests/test_model_ct.py", "tests/test_model_semantics.py"),
        "an evicted OUT entry breaks the connection, an evicted IN entry drops its replies",
    ),
    Mutation(
        "nat-stats top-K default changed",
        "src/egressgw/config.py",
        "NAT_MAP_STATS_ENTRIES_DEFAULT = ",
        "NAT_MAP_STATS_ENTRIES_DEFAULT = 1 + ",
        ("tests/test_stats.py", "tests/test_net_config.py", "tests/test_cli_natstats.py"),
        "--nat-map-stats-entries default (pkg/maps/nat/stats)",
    ),
    Mutation(
        "nat-stats tie order reversed",
        "src/egressgw/stats/compute.py",
        "return (format_ip(endpoint.egress_ip), endpoint.remote_addr, endpoint.proto.label)",
        "return (endpoint.remote_addr, format_ip(endpoint.egress_ip), endpoint.proto.label)",
        ("tests/test_stats.py", "tests/test_cli_natstats.py"),
        "ties print in the order the seed document's table shows",
    ),
    Mutation(
        "dump reader's forked child always fails",
        "src/egressgw/dumps/cilium.py",
        "second_half = scan_range(read, middle, size, skip_invalid=skip_invalid)",
        "raise RuntimeError('mutated child')",
        ("tests/test_dumps_cilium.py",),
        "a failing child must be visible, not silently replaced by a rescan",
    ),
)


def _copy_tree(into: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", "__pycache__", "*.egg-info", ".git",
                                    ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                    ".hypothesis", "egressgw-demo*", "bench")
    shutil.copytree(ROOT, into, ignore=ignore, dirs_exist_ok=True)


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.path
    text = path.read_text()
    found = text.count(mutation.old)
    if found != 1:
        raise LookupError(f"{mutation.path}: the mutated text occurs {found} times, not once")
    path.write_text(text.replace(mutation.old, mutation.new))


def _pytest(tree: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("CI", None)  # no kernel tests: they need no mutation of the model
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "-m", "not kernel", *tests],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )


def _first_failure(output: str) -> str:
    """The test that failed first (pytest -q prints ``FAILED path::name - reason``)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ", 1)[0]
    return "(no FAILED line: see -v)"


def control(tests: tuple[str, ...], *, verbose: bool) -> tuple[bool, float]:
    """Run the tests on an unmutated copy: a test that fails anyway would count every
    mutation as killed."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="egressgw-control-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        done = _pytest(tree, tests)
    if verbose or done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return done.returncode == 0, time.monotonic() - started


def run(mutation: Mutation, *, verbose: bool) -> tuple[str, str, float]:
    """'killed', 'survived' or 'stale', the first failing test, and the seconds it took."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="egressgw-mutant-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        try:
            apply(mutation, tree)
        except LookupError as exc:
            print(f"  stale: {exc}", file=sys.stderr)
            return "stale", "", time.monotonic() - started
        done = _pytest(tree, mutation.tests)
    if verbose:
        print(done.stdout[-3000:], done.stderr[-2000:], sep="\n")
    if done.returncode == 0:
        return "survived", "", time.monotonic() - started
    return "killed", _first_failure(done.stdout), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", default="", help="only mutations whose name has this")
    parser.add_argument("--record", type=Path, help="write the results as a markdown table")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the run of the same tests on an unmutated copy")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.select in m.name]
    load_before = os.getloadavg()[0]
    if not args.no_control:
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        print(f"control: {len(tests)} test files on an unmutated copy ...", flush=True)
        passed, seconds = control(tests, verbose=args.verbose)
        print(f"  {'passed' if passed else 'FAILED'} ({seconds:.0f} s)", flush=True)
        if not passed:
            print("the tests fail without a mutation: no verdict", file=sys.stderr)
            return 2
    results: list[tuple[Mutation, str, str, float]] = []
    for mutation in chosen:
        print(f"{mutation.name} ...", flush=True)
        verdict, killer, seconds = run(mutation, verbose=args.verbose)
        print(f"  {verdict} ({seconds:.0f} s){' by ' + killer if killer else ''}", flush=True)
        results.append((mutation, verdict, killer, seconds))
    killed = sum(v == "killed" for _, v, _, _ in results)
    summary = (f"{killed} of {len(results)} killed, {time.strftime('%Y-%m-%d')}, "
               f"{'control passed, ' if not args.no_control else 'no control run, '}"
               f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
               f"on {os.cpu_count()} CPUs")
    print(summary)
    if args.record:
        lines = [summary + ".", "",
                 "| mutation | rule | tests | result | first failing test | seconds |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {m.name} | {m.why} | {', '.join(m.tests)} | {v} | "
                  f"{f'`{k}`' if k else ''} | {s:.0f} |" for m, v, k, s in results]
        args.record.write_text(
            args.record.read_text().split("<!-- results -->")[0]
            + "<!-- results -->\n" + "\n".join(lines) + "\n"
        )
    verdicts = {v for _, v, _, _ in results}
    if "stale" in verdicts:
        return 2
    return 1 if "survived" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
