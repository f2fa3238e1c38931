"""Helpers shared by the agent tests (no tests here): an in-memory datapath, policy files,
scraping."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from egressgw.errors import DatapathError
from egressgw.net import Family, NatEndpoint, Proto
from egressgw.rules import EgressRule

if TYPE_CHECKING:
    from egressgw.agent import Agent

T = TypeVar("T")
EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "egressgw" / "examples"
GATEWAY = "gateway-1"


class Clock:
    """A settable clock, injected as the agent's monotonic and wall clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class MemoryDatapath:
    """A datapath whose NAT table is a dict the test fills (a real Datapath, no traffic)."""

    def __init__(self) -> None:
        self.applied: list[list[EgressRule]] = []
        self.counts: dict[NatEndpoint, int] = {}
        self.failures: dict[str, int] = {}
        self.refuse = False
        self.cleaned = False

    def apply(self, rules: Sequence[EgressRule]) -> None:
        if self.refuse:
            raise DatapathError("refused by the test")
        self.applied.append(list(rules))

    def endpoint_counts(self) -> Mapping[NatEndpoint, int]:
        return dict(self.counts)

    def allocation_failures(self) -> Mapping[str, int]:
        return dict(self.failures)

    def cleanup(self) -> None:
        self.cleaned = True


def endpoint(egress: str, remote: str, port: int, proto: Proto = Proto.TCP) -> NatEndpoint:
    egress_ip = ipaddress.ip_address(egress)
    return NatEndpoint(Family.of(egress_ip), proto, egress_ip, ipaddress.ip_address(remote), port)


def copy_examples(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the example policies and inventory the test may edit."""
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES / "policies", policies)
    inventory = tmp_path / "inventory.yaml"
    shutil.copy(EXAMPLES / "inventory.yaml", inventory)
    return policies, inventory


def break_policy(policies: Path) -> Path:
    """Make one policy invalid (an unparseable destination CIDR); return its path."""
    path = policies / "shop-clients.yaml"
    text = path.read_text()
    assert "    - 198.51.100.0/24\n" in text
    path.write_text(text.replace("    - 198.51.100.0/24\n", "    - 198.51.100.0/33\n", 1))
    return path


def get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """GET ``url``: status, content type and body, also for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def scrape(base_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics by sample name: [(labels, value)]."""
    status, content_type, body = get(base_url + "/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def sample_value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
                 **labels: str) -> float | None:
    """The value of the one sample of ``name`` with ``labels``, None when absent."""
    matches = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x
                                                           for k, x in labels.items())]
    assert len(matches) <= 1, (name, labels, matches)
    return matches[0] if matches else None


class AgentProcess:
    """``egressgw agent`` running as a real process; its stderr log collected as it comes.

    ``argv_prefix`` runs it elsewhere (``ip netns exec NS``). The listen port is read from
    the agent's own "serving ... on URL" log line, so tests can pass ``--listen ...:0``.
    """

    @staticmethod
    def executable() -> str:
        """The ``egressgw`` script of the interpreter running the tests."""
        exe = shutil.which("egressgw", path=str(Path(sys.executable).parent))
        assert exe is not None
        return exe

    @classmethod
    def run_cleanup(cls, argv_prefix: Sequence[str] = ()) -> None:
        """``egressgw agent --cleanup`` (removes the kernel datapath's table)."""
        done = subprocess.run([*argv_prefix, cls.executable(), "agent", "--cleanup"],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr

    def __init__(self, args: Sequence[str], *, argv_prefix: Sequence[str] = ()) -> None:
        self.process = subprocess.Popen(
            [*argv_prefix, self.executable(), "agent", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_for_log("serving /metrics")
        match = re.search(r"on (http://\S+)", line)
        assert match, line
        self.url = match[1]

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_log(self, text: str, *, after: int = 0, timeout: float = 20.0) -> str:
        """The first log line from index ``after`` on that contains ``text``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line with {text!r}; log:\n" + "\n".join(
                        self.lines))
                self._changed.wait(min(left, 0.2))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of the agent's runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


def poll_until(check: Callable[[], T | None], *, timeout: float = 20.0,
               what: str = "condition") -> T:
    """Call ``check`` until it returns something other than None (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def settled(agent: Agent, passes: int, *, timeout: float = 20.0) -> None:
    """Wait until ``passes`` nat-stats passes are published and none is running: passes run
    on the agent's recount thread, so ``tick`` may return before its pass is published."""
    def done() -> bool | None:
        status = agent.state.recount
        thread = agent.recount_thread
        idle = thread is None or not thread.busy
        return True if status.passes_total >= passes and idle else None

    poll_until(done, timeout=timeout, what=f"{passes} published nat-stats passes")
