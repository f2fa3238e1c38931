"""Test helpers for real network namespaces (import with ``from netns import ...``).

Everything here is named uniquely per test run (pid + random suffix) and always removed,
even when a test fails. Use from a kernel test (``@pytest.mark.kernel``)::

    from netns import lab  # noqa: F401  (the module-scoped fixture)

    @pytest.mark.kernel
    def test_something(lab):
        lab.datapath(NodePortRange()).apply(lab_rules(lab.topology, ["203.0.113.10"]))
        assert lab.load("198.51.100.10:80", 3).succeeded == 3

or build your own::

    with built_lab(pods=2) as my_lab: ...
    with bare_netns() as ns: run_in(ns, ["ip", "link"])
    proc = popen_in(ns, [sys.executable, "-c", code])   # interactive, via stdin/stdout
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from egressgw.lab import Lab, LabSpec, remove_lab


def unique_name(prefix: str = "t") -> str:
    """A name no other test run uses: prefix, pid and a random suffix (lowercase)."""
    return f"{prefix}{os.getpid()}{secrets.token_hex(2)}"


@contextmanager
def built_lab(**spec: int) -> Iterator[Lab]:
    """A fresh lab (see LabSpec for sizes), removed afterwards whatever happens."""
    name = unique_name()
    try:
        yield Lab.up(LabSpec(name, **spec))  # type: ignore[arg-type]
    finally:
        remove_lab(name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A lab shared by the tests of one module (4 pods, 2 egress IPs, 2 servers)."""
    with built_lab() as built:
        yield built


@contextmanager
def bare_netns() -> Iterator[str]:
    """An empty network namespace (loopback up), deleted afterwards."""
    name = f"egw-{unique_name()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run_in(name, ["ip", "link", "set", "lo", "up"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def run_in(netns: str, argv: Sequence[str], *, check: bool = True,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command inside ``netns``; raise with its stderr when it fails and ``check``."""
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {netns} failed: {done.stderr.strip()}")
    return done


def popen_in(netns: str, argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start a command inside ``netns`` with text pipes on stdin and stdout (caller waits)."""
    return subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def python_in(netns: str, code: str) -> str:
    """Run Python ``code`` inside ``netns`` with this interpreter; return its stdout."""
    return run_in(netns, [sys.executable, "-c", code]).stdout
