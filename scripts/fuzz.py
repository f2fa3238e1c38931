"""The long fuzz run, on demand: every reader under atheris (coverage-guided libFuzzer).

Each target of tests/fuzz_targets.py runs in its own process for ``--seconds``, starting
from a corpus of the project's valid examples, with libFuzzer's per-input timeout
(``--timeout``, a hang) and memory limit (``--rss-mb``). Any exception other than the
reader's own one-line error, a longer or multi-line message, a hang or a memory blow-up
is a finding: libFuzzer stops that target and writes the input to
``fuzz-findings/<target>/``. At the end a table gives each target's executions and
findings, to be recorded in docs/reliability.md.

``--hypothesis N`` runs the Hypothesis suite (tests/test_fuzz_readers.py) with N
examples per target instead, for machines without atheris.

    .venv/bin/pip install -e '.[fuzz]'          # atheris, on demand; not a test dependency
    .venv/bin/python scripts/fuzz.py [--seconds 120] [--targets policies workload ...]
    .venv/bin/python scripts/fuzz.py --hypothesis 5000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def run_one(
    target: str, seconds: int, timeout: int, rss_mb: int, findings: Path
) -> dict[str, object]:
    """Fuzz one target in a child process (libFuzzer exits when done)."""
    sys.path.insert(0, str(TESTS))
    import fuzz_targets  # noqa: PLC0415

    corpus = Path(tempfile.mkdtemp(prefix=f"egressgw-corpus-{target}-"))
    for index, seed in enumerate(fuzz_targets.seeds(target)):
        (corpus / f"seed-{index}").write_bytes(seed)
    out_dir = findings / target
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, "--child", target, "--", f"-max_total_time={seconds}",
         f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}", f"-artifact_prefix={out_dir}/",
         "-print_final_stats=1", str(corpus)],
        capture_output=True, text=True, env=env, check=False,
    )
    shutil.rmtree(corpus, ignore_errors=True)
    log = done.stdout + done.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    executed = int(runs[-1]) if runs else max(
        [int(x) for x in re.findall(r"#(\d+)\s", log)] or [0])
    crashed = done.returncode != 0
    reason = ""
    if crashed:
        lines = [line for line in log.splitlines()
                 if "Uncaught Python exception" in line or "ERROR:" in line
                 or line.startswith(("Finding", "egressgw")) or "Error" in line]
        reason = lines[0][:200] if lines else f"exit {done.returncode}"
        (out_dir / "log.txt").write_text(log[-20000:])
    return {"target": target, "executions": executed, "findings": int(crashed),
            "reason": reason, "seconds": round(time.monotonic() - started)}


def child(target: str, libfuzzer_args: list[str]) -> None:
    import atheris  # noqa: PLC0415

    with atheris.instrument_imports(include=["egressgw"]):
        import fuzz_targets  # noqa: PLC0415

        fuzz_targets.TARGETS  # noqa: B018  (imports every reader under instrumentation)
    run = fuzz_targets.TARGETS[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], run)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=120, help="per target")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input: a hang")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory limit per target")
    parser.add_argument("--targets", nargs="*")
    parser.add_argument("--findings", type=Path, default=ROOT / "fuzz-findings")
    parser.add_argument("--hypothesis", type=int, metavar="N",
                        help="run the Hypothesis suite with N examples per target instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(args.child, [a for a in rest if a != "--"])
        return
    if args.hypothesis:
        env = dict(os.environ, EGRESSGW_FUZZ_EXAMPLES=str(args.hypothesis))
        code = subprocess.call([sys.executable, "-m", "pytest", str(TESTS / "test_fuzz_readers.py"),
                                "-q", "-p", "no:cacheprovider", "-o", "timeout=0",
                                "--hypothesis-show-statistics"], env=env, cwd=ROOT)
        sys.exit(code)
    sys.path.insert(0, str(TESTS))
    import fuzz_targets  # noqa: PLC0415

    targets = args.targets or sorted(fuzz_targets.TARGETS)
    results = []
    for target in targets:
        result = run_one(target, args.seconds, args.timeout, args.rss_mb, args.findings)
        results.append(result)
        print(f"{target:>13}: {result['executions']:>9,} inputs in {result['seconds']} s, "
              f"{result['findings']} findings {result['reason']}", flush=True)
    total = sum(int(r["executions"]) for r in results)  # type: ignore[call-overload]
    found = sum(int(r["findings"]) for r in results)  # type: ignore[call-overload]
    print(f"{'total':>13}: {total:,} inputs, {found} findings "
          f"({args.seconds} s per target, timeout {args.timeout} s, rss limit {args.rss_mb} MB)")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
