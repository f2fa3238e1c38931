"""The agent's loop, reconcile and nat-stats over an in-memory datapath, driven by a fake
clock; its HTTP API served for real on 127.0.0.1 and scraped over HTTP."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_support import (
    GATEWAY,
    MemoryDatapath,
    break_policy,
    copy_examples,
    endpoint,
    get,
    get_json,
    sample_value,
    scrape,
)
from egressgw.agent import Agent, AgentConfig, AgentHTTPServer, ListenAddress
from egressgw.agent.client import fetch_nat_stats_rows
from egressgw.agent.counters import CounterDeltas
from egressgw.config import NodePortRange
from egressgw.errors import ConfigError, DatapathError
from egressgw.net import NatEndpoint, Proto
from egressgw.policy import (
    EgressRule,
    compile_rules,
    load_inventory,
    load_policies,
    rules_for_gateway,
)
from fake_clock import FakeClock


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return copy_examples(tmp_path)


def make_agent(
    files: tuple[Path, Path],
    datapath: MemoryDatapath,
    clock: FakeClock,
    *,
    interval: float = 30.0,
    entries: int = 30,
    ports: NodePortRange | None = None,
) -> Agent:
    config = AgentConfig(
        policies=files[0],
        inventory=files[1],
        node=GATEWAY,
        datapath="kernel",
        node_port_range=ports or NodePortRange(),
        stats_interval=interval,
        stats_entries=entries,
    )
    return Agent(config, datapath, clock=clock, wall=clock.wall)


def expected_rules(files: tuple[Path, Path]) -> list[object]:
    return list(
        rules_for_gateway(compile_rules(load_policies(files[0]), load_inventory(files[1])),
                          GATEWAY)
    )


def touch(path: Path) -> None:
    """Make a change visible to mtime polling even within one clock tick."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def served() -> Iterator[list[AgentHTTPServer]]:
    servers: list[AgentHTTPServer] = []
    yield servers
    for server in servers:
        server.stop()


def serve(agent: Agent, servers: list[AgentHTTPServer], host: str = "127.0.0.1") -> str:
    server = AgentHTTPServer(ListenAddress(host, 0), agent.api)
    server.start()
    servers.append(server)
    return server.address.url()


# -- reconcile ------------------------------------------------------------------------


def test_start_applies_this_gateways_rules(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock)
    agent.start()
    expected = expected_rules(files)
    assert expected
    assert datapath.applied == [expected]
    status = agent.state.reconcile
    assert status.last_success == clock.wall()
    assert status.errors_total == 0
    assert sum(status.rules.values()) == len(expected)


def test_unchanged_files_are_not_reapplied_but_sighup_reapplies(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock)
    agent.start()
    agent.tick()
    agent.tick()
    assert len(datapath.applied) == 1
    agent.request_reload()
    agent.tick()
    assert len(datapath.applied) == 2
    assert datapath.applied[1] == datapath.applied[0]


def test_a_changed_policy_file_is_applied(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock)
    agent.start()
    before = datapath.applied[-1]
    (files[0] / "batch-jobs.yaml").unlink()
    agent.tick()
    assert len(datapath.applied) == 2
    after = datapath.applied[-1]
    assert after == expected_rules(files)
    assert len(after) < len(before)
    assert {r.egress_ip for r in after if r.egress_ip} < {r.egress_ip for r in before
                                                           if r.egress_ip}


def test_a_malformed_policy_is_rejected_and_the_rules_stay(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock)
    agent.start()
    broken = break_policy(files[0])
    touch(broken)
    with caplog.at_level(logging.ERROR, logger="egressgw.agent"):
        agent.tick()
    assert len(datapath.applied) == 1, "a rejected reconcile must not touch the datapath"
    status = agent.state.reconcile
    assert status.errors_total == 1
    assert status.failing
    assert status.last_error is not None
    # The message says which file, which document and which field is wrong.
    assert "shop-clients.yaml" in status.last_error
    assert "destinationCIDRs" in status.last_error
    assert "198.51.100.0/33" in status.last_error
    assert any("shop-clients.yaml" in r.getMessage() for r in caplog.records)
    # Polling again without a change does not count the same error twice.
    agent.tick()
    assert agent.state.reconcile.errors_total == 1
    # Fixing the file applies it and clears the failing state.
    broken.write_text(broken.read_text().replace("198.51.100.0/33", "198.51.100.0/24"))
    touch(broken)
    agent.tick()
    assert agent.state.reconcile.failing is False
    assert agent.state.reconcile.errors_total == 1
    assert agent.state.reconcile.last_success == clock.wall()


def test_a_refused_apply_counts_as_a_reconcile_error(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock)
    agent.start()
    datapath.refuse = True
    agent.request_reload()
    agent.tick()
    assert agent.state.reconcile.errors_total == 1
    assert agent.state.reconcile.last_error == "refused by the test"


def test_a_malformed_policy_at_start_leaves_the_agent_running_not_ready(
    files: tuple[Path, Path], served: list[AgentHTTPServer]
) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    break_policy(files[0])
    agent = make_agent(files, datapath, clock)
    url = serve(agent, served)
    agent.start()
    assert datapath.applied == []
    status, _, body = get(url + "/healthz")
    assert status == 503
    assert "198.51.100.0/33" in body


# -- recounting -----------------------------------------------------------------------


def test_recounts_on_the_interval_only(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    tcp = endpoint("203.0.113.10", "198.51.100.1", 443)
    datapath.counts = {tcp: 5}
    agent = make_agent(files, datapath, clock, interval=30)
    agent.start()
    first = agent.state.counts
    assert first is not None
    assert [row.count for row in first.stats.rows] == [5]
    datapath.counts = {tcp: 9}
    clock.now += 29
    assert agent.tick() == pytest.approx(1.0)  # wakes up for the next pass
    assert agent.state.counts is first
    clock.now += 1
    agent.tick()
    counts = agent.state.counts
    assert counts is not None
    assert [row.count for row in counts.stats.rows] == [9]
    assert counts.taken_at == clock.wall()


def test_interval_zero_disables_nat_stats(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    datapath.counts = {endpoint("203.0.113.10", "198.51.100.1", 443): 5}
    agent = make_agent(files, datapath, clock, interval=0)
    agent.start()
    clock.now += 3600
    assert agent.tick() == 1.0
    assert agent.state.counts is None


def test_counter_deltas_start_at_zero_and_survive_resets() -> None:
    deltas = CounterDeltas()
    assert deltas.update({"insert_failed": 40, "drop": 7}) == {"insert_failed": 0, "drop": 0}
    assert deltas.update({"insert_failed": 45, "drop": 7}) == {"insert_failed": 5, "drop": 0}
    # The kernel counter went back (netns recreated): count from zero again.
    assert deltas.update({"insert_failed": 2, "drop": 7}) == {"insert_failed": 7, "drop": 0}
    # A reason seen for the first time counts in full.
    assert deltas.update({"insert_failed": 2, "drop": 7, "early_drop": 3}) == {
        "insert_failed": 7, "drop": 0, "early_drop": 3}


def test_listen_addresses() -> None:
    assert ListenAddress.parse("127.0.0.1:9967") == ListenAddress("127.0.0.1", 9967)
    assert ListenAddress.parse("[::1]:0") == ListenAddress("::1", 0)
    assert ListenAddress.parse("[::1]:9967").url() == "http://[::1]:9967"
    for bad in ("127.0.0.1", "::1:9967", "host:port", ":9967", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match="--listen"):
            ListenAddress.parse(bad)


# -- the HTTP API ---------------------------------------------------------------------


def test_metrics_follow_the_top_k_and_the_families_with_rows(
    files: tuple[Path, Path], served: list[AgentHTTPServer]
) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    ports = NodePortRange(30000, 65471)  # 64 NAT ports
    a = endpoint("203.0.113.10", "198.51.100.1", 443)
    b = endpoint("203.0.113.10", "198.51.100.2", 443)
    c = endpoint("203.0.113.11", "198.51.100.1", 443)
    v6 = endpoint("2001:db8:203::10", "2001:db8:100::1", 80)
    datapath.counts = {a: 48, b: 16, v6: 8}
    agent = make_agent(files, datapath, clock, interval=1, entries=2, ports=ports)
    url = serve(agent, served)
    agent.start()

    samples = scrape(url)
    name = "egressgw_nat_endpoint_max_connection"
    assert sample_value(samples, name, family="ipv4") == 48 / 64
    assert sample_value(samples, name, family="ipv6") == 8 / 64
    top = "egressgw_nat_endpoint_connections"
    assert sample_value(samples, top, family="ipv4", egress_ip="203.0.113.10",
                        remote_addr="198.51.100.2:443", proto="TCP") == 16
    assert sample_value(samples, top, family="ipv6", remote_addr="[2001:db8:100::1]:80") == 8
    assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 64
    assert sample_value(samples, "egressgw_nat_endpoint_port_capacity") == 64

    # b falls out of the top 2 and IPv6 has no connections left.
    datapath.counts = {a: 64, b: 16, c: 30}
    clock.now += 1
    agent.tick()
    samples = scrape(url)
    assert sample_value(samples, name, family="ipv4") == 1.0
    assert sample_value(samples, name, family="ipv6") is None
    assert sample_value(samples, top, remote_addr="198.51.100.2:443") is None
    assert sample_value(samples, top, egress_ip="203.0.113.11") == 30
    assert len(samples[top]) == 2
    assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 110
    assert sample_value(samples, "egressgw_nat_entries", family="ipv6") == 0


def test_metrics_export_failures_and_reconcile_status(
    files: tuple[Path, Path], served: list[AgentHTTPServer]
) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    datapath.failures = {"insert_failed": 40, "drop": 40}
    agent = make_agent(files, datapath, clock)
    url = serve(agent, served)
    agent.start()
    samples = scrape(url)
    failures = "egressgw_nat_allocation_failures_total"
    assert sample_value(samples, failures, reason="insert_failed") == 0
    assert sample_value(samples, "egressgw_reconcile_errors_total") == 0
    assert sample_value(samples, "egressgw_reconcile_failing") == 0
    assert sample_value(samples, "egressgw_reconcile_last_success_timestamp_seconds") == (
        clock.wall())
    assert sample_value(samples, "egressgw_agent_info", node=GATEWAY, datapath="kernel") == 1

    datapath.failures = {"insert_failed": 43, "drop": 43}
    touch(break_policy(files[0]))
    clock.now += 1
    agent.tick()
    samples = scrape(url)
    assert sample_value(samples, failures, reason="insert_failed") == 3
    assert sample_value(samples, "egressgw_drop_count_total", reason="drop",
                        direction="EGRESS") == 3
    assert sample_value(samples, "egressgw_reconcile_errors_total") == 1
    assert sample_value(samples, "egressgw_reconcile_failing") == 1
    assert sample_value(samples, "egressgw_reconcile_last_success_timestamp_seconds") == (
        clock.wall() - 1)
    assert sample_value(samples, "egressgw_rules", kind="masquerade") == sum(
        1 for r in datapath.applied[-1] if r.kind.value == "masquerade")


def test_nat_stats_endpoint_serves_every_field(
    files: tuple[Path, Path], served: list[AgentHTTPServer]
) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    datapath.counts = {
        endpoint("203.0.113.10", "198.51.100.1", 443): 294,
        endpoint("203.0.113.10", "198.51.100.7", 0, Proto.ICMP): 1,
        endpoint("2001:db8:203::10", "2001:db8:100::1", 4240): 2,
    }
    agent = make_agent(files, datapath, clock)
    url = serve(agent, served)
    doc = get_json(url + "/v1/statedb/nat-stats")
    assert doc["rows"] == [] and doc["updatedAt"] is None and doc["divisor"] == 32768
    agent.start()
    doc = get_json(url + "/v1/statedb/nat-stats")
    assert doc["updatedAt"] == clock.wall()
    assert doc["entries"] == 30
    assert doc["divisor"] == 32768
    assert doc["saturation"] == {"ipv4": 294 / 32768, "ipv6": 2 / 32768}
    assert doc["rows"][0] == {
        "family": "ipv4", "proto": "ICMP", "egressIP": "203.0.113.10",
        "remoteIP": "198.51.100.7", "remotePort": 0, "remoteAddr": "198.51.100.7",
        "count": 1, "rank": 2,
    }
    assert doc["rows"][2]["remoteAddr"] == "[2001:db8:100::1]:4240"
    counts = agent.state.counts
    assert counts is not None
    assert fetch_nat_stats_rows(url) == list(counts.stats.rows)


def test_healthz_and_unknown_paths(files: tuple[Path, Path], served: list[AgentHTTPServer]
                                   ) -> None:
    agent = make_agent(files, MemoryDatapath(), FakeClock())
    url = serve(agent, served)
    assert get(url + "/healthz")[0] == 503
    agent.start()
    status, content_type, body = get(url + "/healthz")
    assert status == 200
    assert content_type == "application/json"
    assert '"status": "ok"' in body
    assert get(url + "/v2/nothing")[0] == 404


def test_serves_on_ipv6_loopback(files: tuple[Path, Path], served: list[AgentHTTPServer]
                                 ) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    agent = make_agent(files, MemoryDatapath(), FakeClock())
    agent.start()
    url = serve(agent, served, host="::1")
    assert url.startswith("http://[::1]:")
    assert sample_value(scrape(url), "egressgw_reconcile_errors_total") == 0


def test_a_busy_port_is_a_clear_config_error(files: tuple[Path, Path]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        agent = make_agent(files, MemoryDatapath(), FakeClock())
        with pytest.raises(ConfigError, match=f"--listen: cannot listen on 127.0.0.1:{port}"):
            AgentHTTPServer(ListenAddress("127.0.0.1", port), agent.api)


def test_a_node_missing_from_the_inventory_is_rejected(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    config = AgentConfig(policies=files[0], inventory=files[1], node="gateway-l")
    agent = Agent(config, datapath, clock=clock, wall=clock.wall)
    agent.start()
    assert datapath.applied == []
    assert agent.state.reconcile.last_error == (
        f"{files[1]}: --node: node 'gateway-l' is not in the inventory "
        "(nodes: gateway-1, worker-1)")


def test_a_removed_policy_directory_is_an_error_not_a_crash(files: tuple[Path, Path]) -> None:
    datapath, clock = MemoryDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock)
    agent.start()
    shutil.rmtree(files[0])
    agent.tick()
    status = agent.state.reconcile
    assert status.errors_total == 1
    assert status.last_error == f"{files[0]}: no such file or directory"
    assert len(datapath.applied) == 1


class BuggyDatapath(MemoryDatapath):
    def endpoint_counts(self) -> dict[NatEndpoint, int]:
        raise RuntimeError("a bug in a datapath")

    def apply(self, rules: Sequence[EgressRule]) -> None:
        if self.applied:
            raise RuntimeError("another bug")
        super().apply(rules)


def test_a_bug_in_the_datapath_does_not_stop_the_agent(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    datapath, clock = BuggyDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock, interval=1)
    with caplog.at_level(logging.ERROR, logger="egressgw.agent"):
        agent.start()
        agent.request_reload()
        clock.now += 1
        agent.tick()
    assert agent.state.counts is None
    assert agent.state.reconcile.last_error == "internal error: RuntimeError('another bug')"
    assert any("counting nat-stats failed unexpectedly" in r.getMessage()
               for r in caplog.records)
    assert all(r.exc_info for r in caplog.records if "unexpectedly" in r.getMessage())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["insert_failed", "drop", "early_drop"]),
                                st.integers(0, 1000)), min_size=1, max_size=12))
def test_counter_deltas_never_go_down_and_add_up_the_increases(
    readings: list[dict[str, int]]
) -> None:
    deltas = CounterDeltas()
    previous_totals: dict[str, int] = {}
    last: dict[str, int] = dict(readings[0])
    expected = dict.fromkeys(readings[0], 0)
    for i, reading in enumerate(readings):
        totals = deltas.update(reading)
        if i:
            for name, value in reading.items():
                before = last.get(name)
                increase = value if before is None or value < before else value - before
                expected[name] = expected.get(name, 0) + increase
                last[name] = value
        assert totals == expected
        assert all(totals[k] >= v for k, v in previous_totals.items())
        previous_totals = totals


def test_a_lasting_datapath_error_is_logged_once_and_its_end_too(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyDatapath(MemoryDatapath):
        broken = True

        def allocation_failures(self) -> dict[str, int]:
            if self.broken:
                raise DatapathError("conntrack statistics: Operation not permitted")
            return {}

    datapath, clock = FlakyDatapath(), FakeClock()
    agent = make_agent(files, datapath, clock)
    with caplog.at_level(logging.INFO, logger="egressgw.agent"):
        agent.start()
        for _ in range(5):
            clock.now += 1
            agent.tick()
        datapath.broken = False
        agent.tick()
        agent.tick()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(
        "sampling failure counters failed: conntrack statistics: Operation not permitted") == 1
    assert messages.count("sampling failure counters works again") == 1
