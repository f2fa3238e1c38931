"""``egressgw statedb nat-stats`` against a real agent API served on 127.0.0.1."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent_support import GATEWAY, Clock, MemoryDatapath, copy_examples, endpoint
from egressgw.agent import Agent, AgentConfig, AgentHTTPServer, ListenAddress
from egressgw.agent.client import fetch_nat_stats_rows
from egressgw.agent.watch import REPRINT_HEADER_EVERY, watch
from egressgw.errors import AgentError
from egressgw.net import Proto
from egressgw.stats import NatStatsRow, compute_nat_stats, render_table


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, MemoryDatapath, Clock, str]]:
    policies, inventory = copy_examples(tmp_path)
    datapath, clock = MemoryDatapath(), Clock()
    datapath.counts = {
        endpoint("203.0.113.10", "198.51.100.4", 6443): 50,
        endpoint("203.0.113.10", "198.51.100.3", 4240): 1,
        endpoint("203.0.113.10", "198.51.100.3", 0, Proto.ICMP): 1,
        endpoint("2001:db8:203::10", "2001:db8:100::3", 4240): 1,
    }
    config = AgentConfig(policies, inventory, GATEWAY, stats_interval=1.0)
    agent = Agent(config, datapath, clock=clock, wall=clock)
    agent.start()
    server = AgentHTTPServer(ListenAddress("127.0.0.1", 0), agent.api)
    server.start()
    try:
        yield agent, datapath, clock, server.address.url()
    finally:
        server.stop()


def egressgw(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("egressgw", path=str(Path(sys.executable).parent))
    assert exe is not None
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=30,
                          check=False)


def test_table_is_cilium_dbgs(agent: tuple[Agent, MemoryDatapath, Clock, str]) -> None:
    running, _, _, url = agent
    result = egressgw("statedb", "nat-stats", "--server", url)
    assert result.returncode == 0, result.stderr
    counts = running.state.counts
    assert counts is not None
    assert result.stdout == render_table(counts.stats.rows)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "IPFamily", "Proto", "EgressIP", "RemoteAddr", "Count"]
    assert [line.split() for line in lines[1:]] == [
        ["ipv4", "ICMP", "203.0.113.10", "198.51.100.3", "1"],
        ["ipv4", "TCP", "203.0.113.10", "198.51.100.3:4240", "1"],
        ["ipv4", "TCP", "203.0.113.10", "198.51.100.4:6443", "50"],
        ["ipv6", "TCP", "[2001:db8:203::10]", "[2001:db8:100::3]:4240", "1"],
    ]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_documents_carry_every_field(agent: tuple[Agent, MemoryDatapath, Clock, str],
                                     fmt: str) -> None:
    _, _, _, url = agent
    result = egressgw("statedb", "nat-stats", "-o", fmt, "--server", url)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    assert [r["count"] for r in doc["rows"]] == [1, 1, 50, 1]
    top = doc["rows"][2]
    assert top == {"family": "ipv4", "proto": "TCP", "egressIP": "203.0.113.10",
                   "remoteIP": "198.51.100.4", "remotePort": 6443,
                   "remoteAddr": "198.51.100.4:6443", "count": 50, "rank": 1}
    assert doc["saturation"]["ipv4"] == 50 / 32768


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_agent_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = egressgw("statedb", "nat-stats", "--server", url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"egressgw: error: cannot reach the egressgw agent at {url}/v1/statedb/nat-stats"
    )
    assert len(result.stderr.splitlines()) == 1


def test_something_else_answering_is_an_error(agent: tuple[Agent, MemoryDatapath, Clock, str]
                                              ) -> None:
    _, _, _, url = agent
    with pytest.raises(AgentError, match="HTTP 404"):
        fetch_nat_stats_rows(url + "/v2")
    result = egressgw("statedb", "nat-stats", "--server", url + "/healthz?")
    assert result.returncode == 1
    assert "egressgw: error:" in result.stderr


def test_watch_with_json_is_refused() -> None:
    result = egressgw("statedb", "nat-stats", "-w", "1s", "-o", "json")
    assert result.returncode == 2
    assert "--watch is not supported with json output" in result.stderr


def test_watch_prints_the_rows_that_changed(agent: tuple[Agent, MemoryDatapath, Clock, str]
                                            ) -> None:
    running, datapath, clock, url = agent
    busy = endpoint("203.0.113.10", "198.51.100.4", 6443)
    new = endpoint("203.0.113.11", "198.51.100.9", 443)
    changes = [{busy: 60}, {busy: 60, new: 2}, {}]

    def next_pass(interval: float) -> None:
        assert interval == 2.5
        datapath.counts.update(changes.pop(0))
        clock.now += 1
        running.tick()

    out = io.StringIO()
    watch(lambda: fetch_nat_stats_rows(url), out, interval=2.5, sleep=next_pass, rounds=4)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("# IPFamily")
    assert len(lines) == 1 + 4 + 1 + 1
    assert lines[5].split() == ["ipv4", "TCP", "203.0.113.10", "198.51.100.4:6443", "60"]
    assert lines[6].split() == ["ipv4", "TCP", "203.0.113.11", "198.51.100.9:443", "2"]
    assert not changes


def test_watch_repeats_the_header_like_cilium_dbg() -> None:
    tuples = [endpoint("203.0.113.12", "198.51.100.1", port) for port in range(1, 61)]
    passes = iter(range(1, 4))
    current: list[NatStatsRow] = []

    def next_pass(_interval: float) -> None:
        count = next(passes)
        stats = compute_nat_stats(dict.fromkeys(tuples, count), entries=100)
        current[:] = stats.rows

    next_pass(0)
    out = io.StringIO()
    # Every pass changes all 60 rows: 60 and 120 lines since the header, then a header.
    watch(lambda: current, out, interval=1, sleep=next_pass, rounds=3)
    lines = out.getvalue().splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("# IPFamily")]
    assert 60 < REPRINT_HEADER_EVERY < 120
    assert headers == [0, 121]
    assert len(lines) == 2 + 180


def test_watch_command_prints_changes_as_they_come(
    agent: tuple[Agent, MemoryDatapath, Clock, str]
) -> None:
    running, datapath, clock, url = agent
    exe = shutil.which("egressgw", path=str(Path(sys.executable).parent))
    assert exe is not None
    watcher = subprocess.Popen([exe, "statedb", "nat-stats", "-w", "0.1s", "--server", url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        first = [watcher.stdout.readline() for _ in range(5)]
        assert first[0].startswith("# IPFamily")
        assert first[3].split()[-2:] == ["198.51.100.4:6443", "50"]
        datapath.counts[endpoint("203.0.113.10", "198.51.100.4", 6443)] = 51
        clock.now += 1
        running.tick()
        assert watcher.stdout.readline().split()[-2:] == ["198.51.100.4:6443", "51"]
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=10)
    assert watcher.returncode == 130
