"""The nat-stats pass beside the loop: a reconcile never waits for it, scrapes answer from
the last finished pass, and a failed or slow pass is reported without touching that one.

The pass is held on an Event the test controls, in the counter the agent's recount
thread calls; what it then reads is real (the kernel test: conntrack through
ctnetlink in a network namespace, rules through nft). Without the recount thread the
reconciles below would wait for the release: ``tick`` runs under a deadline here, so
the serial agent fails these tests instead of hanging them.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import random
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from agent_support import (
    GATEWAY,
    MemoryDatapath,
    copy_examples,
    endpoint,
    get_json,
    poll_until,
    sample_value,
    scrape,
    settled,
)
from bpf_support import fill_nat_map, synthetic_connections
from egressgw.agent import Agent, AgentConfig, AgentHTTPServer, ListenAddress
from egressgw.agent.counting import (
    BpfMapCounter,
    ConntrackCounter,
    EndpointCounter,
    ModelCounter,
    Usage,
)
from egressgw.agent.modeldp import ModelAgentDatapath, Verdict
from egressgw.config import NodePortRange
from egressgw.datapath.bpf import layout
from egressgw.datapath.bpf.datapath import BpfDatapath, BpfSettings
from egressgw.datapath.bpf.syscall import BpfMap
from egressgw.datapath.kernel import KernelDatapath
from egressgw.datapath.kernel.ctfill import fill, synthetic_entries
from egressgw.datapath.model import ConnectResult, ModelConfig, ModelDatapath
from egressgw.errors import DatapathError
from egressgw.net import Endpoint, FiveTuple, NatEndpoint, Proto
from fake_clock import FakeClock
from gateway_files import gateway_files, write_policy
from netns import bare_netns, run_in

DEADLINE = 10.0


class HeldCounter:
    """A pass whose reading step waits for the test to open the gate, then reads for real.

    ``take`` is the real counter's snapshot, run on the loop; its read runs once the gate
    opens (on the recount thread). ``waiting`` says a pass waits at the gate.
    """

    def __init__(self, take: Callable[[], Callable[[], Usage]]) -> None:
        self._take = take
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        self.fail_with: Exception | None = None
        self.passes = 0

    def snapshot(self) -> Callable[[], Usage]:
        read = self._take()
        return lambda: self._read_when_open(read)

    def _read_when_open(self, read: Callable[[], Usage]) -> Usage:
        self.waiting.set()
        try:
            if not self.gate.wait(60):
                raise DatapathError("the test never opened the gate")
        finally:
            self.waiting.clear()
        self.passes += 1
        if self.fail_with is not None:
            raise self.fail_with
        return read()

    def close(self) -> None:
        pass


class HeldMemoryDatapath(MemoryDatapath):
    """The in-memory datapath, counted in the background through a HeldCounter (what it
    reads is the dict as the gate opens)."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = HeldCounter(lambda: lambda: (dict(self.counts), None))

    def background_counter(self) -> EndpointCounter:
        return self.counter


def within_deadline(step: Callable[[], object]) -> None:
    """Run ``step`` on a thread; fail if it has not returned within DEADLINE seconds."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(DEADLINE), "the step waited for the nat-stats pass"
    if errors:
        raise errors[0]


def pass_running(agent: Agent) -> bool:
    """Whether a pass was asked for and has not ended (on the loop: never after tick)."""
    return agent.recount_thread is not None and agent.recount_thread.busy


def wait_for(check: Callable[[], bool], what: str) -> None:
    poll_until(lambda: True if check() else None, timeout=DEADLINE, what=what)


@pytest.fixture
def served() -> Iterator[list[AgentHTTPServer]]:
    servers: list[AgentHTTPServer] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for agent in made:
        # Never leave a pass held: the thread ends after it.
        counter = getattr(agent.datapath, "counter", None)
        if isinstance(counter, HeldCounter):
            counter.gate.set()
        agent.close()


def serve(agent: Agent, servers: list[AgentHTTPServer]) -> str:
    server = AgentHTTPServer(ListenAddress("127.0.0.1", 0), agent.api)
    server.start()
    servers.append(server)
    return server.address.url()


def memory_agent(tmp_path: Path, datapath: MemoryDatapath, clock: FakeClock,
                 agents: list[Agent], **config: object) -> Agent:
    policies, inventory = copy_examples(tmp_path)
    agent = Agent(AgentConfig(policies, inventory, GATEWAY, stats_interval=30.0,
                              **config),  # type: ignore[arg-type]
                  datapath, clock=clock, wall=clock.wall)
    agents.append(agent)
    return agent


def edit_policy(policies: Path) -> None:
    """A valid change: one destination fewer for the shop clients."""
    path = policies / "shop-clients.yaml"
    text = path.read_text()
    assert "    - 198.51.100.0/24\n" in text
    path.write_text(text.replace("    - 198.51.100.0/24\n", "", 1))


def test_a_policy_change_is_applied_while_a_pass_is_held_and_scrapes_serve_the_last_one(
    tmp_path: Path, served: list[AgentHTTPServer], agents: list[Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    datapath, clock = HeldMemoryDatapath(), FakeClock()
    first = endpoint("203.0.113.10", "198.51.100.10", 443)
    datapath.counts = {first: 7}
    agent = memory_agent(tmp_path, datapath, clock, agents)
    url = serve(agent, served)
    agent.start()
    wait_for(lambda: agent.state.recount.passes_total == 1, "the first pass")
    # Published, but the thread may still be finishing it: a request then would be a skip.
    wait_for(lambda: not pass_running(agent), "the first pass to end")

    # The next pass is due and held inside the counter.
    datapath.counter.gate.clear()
    datapath.counts = {first: 9, endpoint("203.0.113.11", "198.51.100.11", 80): 3}
    clock.now += 30
    within_deadline(agent.tick)
    assert datapath.counter.waiting.wait(DEADLINE)

    # A policy change now: applied at once, the pass still held.
    edit_policy(agent.config.policies)
    within_deadline(agent.tick)
    assert len(datapath.applied) == 2
    assert datapath.applied[1] != datapath.applied[0]
    assert agent.state.reconcile.applies_total == 2
    assert datapath.counter.waiting.is_set()
    assert agent.state.recount.running_since == clock.wall()

    # Scrapes answer meanwhile, from the pass before.
    samples = scrape(url)
    assert sample_value(samples, "egressgw_nat_stats_recount_in_progress") == 1
    assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 7
    assert sample_value(samples, "egressgw_nat_stats_recounts_total") == 1
    doc = get_json(url + "/v1/statedb/nat-stats")
    assert [(r["remoteAddr"], r["count"]) for r in doc["rows"]] == [("198.51.100.10:443", 7)]

    # A period later the pass still runs: that period is skipped and said so, once.
    with caplog.at_level(logging.WARNING, logger="egressgw.agent"):
        clock.now += 30
        within_deadline(agent.tick)
        clock.now += 30
        within_deadline(agent.tick)
    assert agent.state.recount.skipped_total == 2
    slow = [r for r in caplog.records if "still running" in r.getMessage()]
    assert len(slow) == 1
    assert sample_value(scrape(url), "egressgw_nat_stats_recount_skipped_total") == 2

    # Released: the held pass publishes what it read.
    datapath.counter.gate.set()
    wait_for(lambda: agent.state.recount.passes_total == 2, "the held pass to publish")
    samples = scrape(url)
    assert sample_value(samples, "egressgw_nat_stats_recount_in_progress") == 0
    assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 12
    assert datapath.counter.passes == 2


def test_a_failed_pass_is_counted_and_keeps_the_last_good_snapshot(
    tmp_path: Path, served: list[AgentHTTPServer], agents: list[Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    datapath, clock = HeldMemoryDatapath(), FakeClock()
    datapath.counts = {endpoint("203.0.113.10", "198.51.100.10", 443): 5}
    agent = memory_agent(tmp_path, datapath, clock, agents)
    url = serve(agent, served)
    agent.start()
    wait_for(lambda: agent.state.recount.passes_total == 1, "the first pass")
    good = agent.state.counts
    assert good is not None

    datapath.counter.fail_with = DatapathError("ctnetlink dump: no answer from the kernel")
    datapath.counts = {}
    with caplog.at_level(logging.INFO, logger="egressgw.agent"):
        for expected_errors in (1, 2):
            wait_for(lambda: not pass_running(agent), "the previous pass to end")
            clock.now += 30
            within_deadline(agent.tick)
            wait_for(lambda n=expected_errors: agent.state.recount.errors_total == n,  # type: ignore[misc]
                     "the failed pass")
        assert agent.state.counts is good
        status = agent.state.recount
        assert status.running_since is None
        assert status.last_error == "ctnetlink dump: no answer from the kernel"
        samples = scrape(url)
        assert sample_value(samples, "egressgw_nat_stats_recount_errors_total") == 2
        assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 5
        assert sample_value(samples, "egressgw_nat_stats_recount_in_progress") == 0

        datapath.counter.fail_with = None
        wait_for(lambda: not pass_running(agent), "the failed pass to end")
        clock.now += 30
        within_deadline(agent.tick)
        wait_for(lambda: agent.state.recount.passes_total == 2, "a pass that works")
        # The thread logs "works again" after publishing: wait until it is idle.
        wait_for(lambda: not pass_running(agent), "the pass that works to end")
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(
        "counting nat-stats failed: ctnetlink dump: no answer from the kernel") == 1
    assert messages.count("counting nat-stats works again") == 1
    assert agent.state.counts is not good
    assert agent.state.recount.last_error is None


def test_the_serial_agent_counts_on_its_loop(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """background_recount=False is the old behaviour: the pass runs inside ``tick``, so
    when ``tick`` returns the snapshot is already the new one."""
    datapath, clock = HeldMemoryDatapath(), FakeClock()
    datapath.counts = {endpoint("203.0.113.10", "198.51.100.10", 443): 4}
    agent = memory_agent(tmp_path, datapath, clock, agents, background_recount=False)
    assert agent.recount_thread is None
    agent.start()
    snapshot = agent.state.counts
    assert snapshot is not None and snapshot.entries
    datapath.counts[endpoint("203.0.113.10", "198.51.100.10", 443)] = 6
    clock.now += 30
    agent.tick()
    after = agent.state.counts
    assert after is not None and after is not snapshot
    assert sum(after.entries.values()) == 6
    # MemoryDatapath's own counts were not read: the agent took a DatapathCounter, and
    # the background counter it was offered stayed unused.
    assert datapath.counter.passes == 0


def test_a_pass_on_the_loop_that_overruns_skips_the_periods_it_missed(
    tmp_path: Path, agents: list[Agent], caplog: pytest.LogCaptureFixture
) -> None:
    """Serial: a pass that takes 2.5 intervals (on the fake clock) misses the 2 periods
    that fell due meanwhile; they are counted, not run back to back, and said once."""
    clock = FakeClock()

    class SlowDatapath(MemoryDatapath):
        slow = True

        def endpoint_counts(self) -> dict[NatEndpoint, int]:
            if self.slow:
                clock.now += 75
            return dict(self.counts)

    datapath = SlowDatapath()
    agent = memory_agent(tmp_path, datapath, clock, agents, background_recount=False)
    with caplog.at_level(logging.INFO, logger="egressgw.agent"):
        agent.start()  # the first pass: due at 100, ends at 175
        assert agent.state.recount.skipped_total == 2  # 130 and 160 were missed
        clock.now = 205
        agent.tick()  # due at 205: ends at 280, missing 235 and 265
        assert agent.state.recount.skipped_total == 4
        assert agent.state.recount.passes_total == 2
        datapath.slow = False
        clock.now = 310
        agent.tick()
    assert agent.state.recount.skipped_total == 4
    assert agent.state.recount.passes_total == 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("nat-stats pass took 75.0s, longer than --nat-map-stats-interval "
                          "30s: the periods it overran are skipped") == 1
    assert messages.count("nat-stats passes fit --nat-map-stats-interval again (0.0s)") == 1


def test_a_failed_snapshot_on_the_loop_is_counted_and_the_next_pass_runs(
    tmp_path: Path, agents: list[Agent], caplog: pytest.LogCaptureFixture
) -> None:
    """The loop's step of a pass (BPF: handling signals; model: copying keys) can fail
    too: logged once, counted, the last good pass kept, the thread free for the next."""
    datapath, clock = HeldMemoryDatapath(), FakeClock()
    datapath.counts = {endpoint("203.0.113.10", "198.51.100.10", 443): 3}
    broken: list[str] = []

    def take() -> Callable[[], Usage]:
        if broken:
            raise DatapathError(broken[0])
        counts = dict(datapath.counts)
        return lambda: (counts, None)

    datapath.counter = HeldCounter(take)
    agent = memory_agent(tmp_path, datapath, clock, agents)
    agent.start()
    settled(agent, 1)
    good = agent.state.counts
    broken.append("signals ring buffer: bad record")
    with caplog.at_level(logging.ERROR, logger="egressgw.agent"):
        for _ in range(2):
            clock.now += 30
            within_deadline(agent.tick)
    status = agent.state.recount
    assert status.errors_total == 2 and status.running_since is None
    assert status.last_error == "signals ring buffer: bad record"
    assert agent.state.counts is good
    assert agent.recount_thread is not None and not agent.recount_thread.busy
    assert [r.getMessage() for r in caplog.records].count(
        "taking the nat-stats snapshot failed: signals ring buffer: bad record") == 1
    broken.clear()
    datapath.counts = {endpoint("203.0.113.10", "198.51.100.10", 443): 5}
    clock.now += 30
    within_deadline(agent.tick)
    settled(agent, 2)
    after = agent.state.counts
    assert after is not None and sum(after.entries.values()) == 5


def test_a_snapshot_cannot_be_changed_after_it_is_published(
    tmp_path: Path, agents: list[Agent]
) -> None:
    datapath, clock = HeldMemoryDatapath(), FakeClock()
    datapath.counts = {endpoint("203.0.113.10", "198.51.100.10", 443): 4}
    agent = memory_agent(tmp_path, datapath, clock, agents)
    agent.start()
    wait_for(lambda: agent.state.counts is not None, "the first pass")
    snapshot = agent.state.counts
    assert snapshot is not None
    with pytest.raises(TypeError):
        snapshot.entries[next(iter(snapshot.entries))] = 0  # type: ignore[index]


# -- the kernel: real conntrack, real nftables ------------------------------------------

EGRESS = ("203.0.113.10", "203.0.113.11")
REMOTES = ("198.51.100.10", "198.51.100.11")


class HeldKernelDatapath(KernelDatapath):
    """The kernel datapath in ``netns``, whose background pass waits for the test's gate
    and then reads conntrack for real (its own ctnetlink socket)."""

    def __init__(self, netns: str) -> None:
        super().__init__(NodePortRange(), netns=netns)
        self._conntrack_counter = ConntrackCounter(netns)
        self.counter = HeldCounter(self._conntrack_counter.snapshot)

    def background_counter(self) -> EndpointCounter:
        return self.counter


def kernel_files(directory: Path, node: str, egress_ip: str) -> tuple[Path, Path]:
    return gateway_files(directory, node=node, egress_ip=egress_ip, egress_addresses=EGRESS)


def per_tuple(entries: int) -> Mapping[tuple[str, str], int]:
    """What synthetic_entries spreads over the 2 egress IPs x 2 remotes: entry i goes to
    remote i % 2 behind egress (i // 2) % 2 (its docstring), so each tuple gets a
    quarter of ``entries`` when 4 divides it."""
    assert entries % 4 == 0
    return {(e, r): entries // 4 for e in EGRESS for r in REMOTES}


def chain(egress_ip: str) -> str:
    """The name of the chain that source-NATs to ``egress_ip`` (ruleset.py's scheme)."""
    return f"chain snat4_{egress_ip.replace('.', '_')} {{"


def nft_table(netns: str) -> str:
    return run_in(netns, ["nft", "list", "table", "inet", "egressgw"]).stdout


@pytest.mark.kernel
def test_kernel_a_policy_change_reaches_nftables_while_a_conntrack_pass_is_held(
    tmp_path: Path, served: list[AgentHTTPServer], agents: list[Agent]
) -> None:
    with bare_netns() as ns:
        run_in(ns, ["ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext1"])
        for ip in EGRESS:
            run_in(ns, ["ip", "addr", "add", f"{ip}/24", "dev", "ext0"])
        run_in(ns, ["ip", "link", "set", "ext0", "up"])
        fill(synthetic_entries(1000, egress_ips=EGRESS, remotes=REMOTES), netns=ns)
        datapath = HeldKernelDatapath(ns)
        clock = FakeClock()
        policies, inventory = kernel_files(tmp_path, "gateway-1", EGRESS[0])
        agent = Agent(AgentConfig(policies, inventory, "gateway-1", stats_interval=30.0),
                      datapath, clock=clock, wall=clock.wall)
        agents.append(agent)
        try:
            url = serve(agent, served)
            agent.start()
            assert chain(EGRESS[0]) in nft_table(ns)
            wait_for(lambda: agent.state.recount.passes_total == 1, "the first pass")
            wait_for(lambda: not pass_running(agent), "the first pass to end")
            first = agent.state.counts
            assert first is not None
            rows = {(str(r.egress_ip), str(r.remote_ip)): r.count for r in first.stats.rows}
            assert rows == per_tuple(1000)

            # 500 more connections, then a pass held before it reads them.
            fill(synthetic_entries(1500, egress_ips=EGRESS, remotes=REMOTES)[1000:],
                 netns=ns)
            datapath.counter.gate.clear()
            clock.now += 30
            within_deadline(agent.tick)
            assert datapath.counter.waiting.wait(DEADLINE)

            kernel_files(tmp_path, "gateway-1", EGRESS[1])
            within_deadline(agent.tick)
            table = nft_table(ns)
            assert chain(EGRESS[1]) in table
            assert chain(EGRESS[0]) not in table
            assert datapath.counter.waiting.is_set()
            samples = scrape(url)
            assert sample_value(samples, "egressgw_nat_stats_recount_in_progress") == 1
            assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 1000

            datapath.counter.gate.set()
            wait_for(lambda: agent.state.recount.passes_total == 2, "the held pass")
            samples = scrape(url)
            assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 1500
            second = agent.state.counts
            assert second is not None
            rows = {(str(r.egress_ip), str(r.remote_ip)): r.count for r in second.stats.rows}
            assert rows == per_tuple(1500)
        finally:
            datapath.counter.gate.set()
            agent.close()
            agents.remove(agent)
            datapath.cleanup()
            datapath._conntrack_counter.close()


@pytest.mark.kernel
def test_kernel_the_background_counter_reads_what_was_filled(tmp_path: Path) -> None:
    """The agent's own ConntrackCounter (not the datapath's socket) on a real table."""
    with bare_netns() as ns:
        fill(synthetic_entries(400, egress_ips=EGRESS, remotes=REMOTES), netns=ns)
        counter = ConntrackCounter(ns)
        try:
            counts, reusable = counter.usage()
            again, _ = counter.usage()
        finally:
            counter.close()
    assert {(str(k.egress_ip), str(k.remote_ip)): n for k, n in counts.items()} == per_tuple(400)
    assert all(k.remote_port == 443 for k in counts)
    assert again == counts
    # synthetic entries are ESTABLISHED: none of their ports can be taken over.
    assert reusable is not None and sum(reusable.values()) == 0



# -- the model: its NAT keys copied on the loop, counted on the thread -------------------

SHOP_CLIENT = "192.0.2.10"  # client-1 of the example inventory, behind 203.0.113.10
MODEL_REMOTES = tuple(f"198.51.100.{5 + i}" for i in range(8))


class HeldModelDatapath(ModelAgentDatapath):
    """The model datapath, its pass held between the snapshot (taken on the loop) and the
    count (on the thread), which then counts for real."""

    def __init__(self, model: ModelDatapath) -> None:
        super().__init__(model)
        self.counter = HeldCounter(ModelCounter(model).snapshot)

    def background_counter(self) -> HeldCounter:  # type: ignore[override]
        return self.counter


def connect_many(datapath: ModelAgentDatapath, first: int, count: int) -> Counter[str]:
    """``count`` TCP connections of the shop client, to the remotes in turn; connections
    that got a NAT port per remote (the test's own count of what went in)."""
    got: Counter[str] = Counter()
    for i in range(first, first + count):
        remote = MODEL_REMOTES[i % len(MODEL_REMOTES)]
        tup = FiveTuple(Proto.TCP, Endpoint(ipaddress.ip_address(SHOP_CLIENT), 10000 + i),
                        Endpoint(ipaddress.ip_address(remote), 443))
        result = datapath.connect(tup)
        assert isinstance(result, ConnectResult) and result.port is not None, result
        got[remote] += 1
    return got


def exported_connections(url: str) -> dict[str, float]:
    """egressgw_nat_endpoint_connections by remote address, from a real scrape."""
    return {labels["remote_addr"]: value for labels, value in
            scrape(url).get("egressgw_nat_endpoint_connections", [])}


def test_model_a_reconcile_completes_while_a_pass_counts_its_snapshot(
    tmp_path: Path, served: list[AgentHTTPServer], agents: list[Agent]
) -> None:
    datapath, clock = HeldModelDatapath.for_node_ports(NodePortRange(), seed=3), FakeClock()
    assert isinstance(datapath, HeldModelDatapath)
    policies, inventory = copy_examples(tmp_path)
    agent = Agent(AgentConfig(policies, inventory, GATEWAY, datapath="model",
                              stats_interval=30.0), datapath, clock=clock, wall=clock.wall)
    agents.append(agent)
    url = serve(agent, served)
    agent.start()
    settled(agent, 1)
    assert sample_value(scrape(url), "egressgw_nat_entries", family="ipv4") == 0

    first = connect_many(datapath, 0, 8000)
    datapath.counter.gate.clear()
    clock.now += 30
    within_deadline(agent.tick)  # the snapshot: taken now, on this (the loop's) thread
    assert datapath.counter.waiting.wait(DEADLINE)

    # While the pass is held: more connections, and a policy change, both on the loop.
    later = connect_many(datapath, 8000, 800)
    edit_policy(agent.config.policies)
    within_deadline(agent.tick)
    assert agent.state.reconcile.applies_total == 2
    moved = FiveTuple(Proto.TCP, Endpoint(ipaddress.ip_address(SHOP_CLIENT), 60000),
                      Endpoint(ipaddress.ip_address(MODEL_REMOTES[0]), 443))
    assert datapath.connect(moved) is Verdict.PASSED  # 198.51.100.0/24 left the policy
    assert datapath.counter.waiting.is_set()
    assert sample_value(scrape(url), "egressgw_nat_stats_recount_in_progress") == 1

    # Released: the pass publishes the NAT map as it was when the pass began.
    datapath.counter.gate.set()
    settled(agent, 2)
    assert exported_connections(url) == {f"{r}:443": float(n) for r, n in first.items()}
    assert sample_value(scrape(url), "egressgw_nat_entries", family="ipv4") == 8000

    clock.now += 30
    agent.tick()
    settled(agent, 3)
    both = first + later
    assert exported_connections(url) == {f"{r}:443": float(n) for r, n in both.items()}
    assert sample_value(scrape(url), "egressgw_nat_entries", family="ipv4") == 8800
    # The same counts as the datapath's own endpoint_counts (the serial agent's read).
    counts, reusable = ModelCounter(datapath.model).snapshot()()
    assert counts == datapath.endpoint_counts() and reusable is None


# -- bpf: a real NAT map in a network namespace, walked through bpf(2) -------------------

BPF_CONNECTIONS = 65536  # 131,072 entries: 16 batch lookups of the v4 map


class GatedMap(BpfMap):
    """A pinned map (a real fd) whose walk stops after its first batch until the gate
    opens: a pass held in the middle of walking the NAT map."""

    gate: threading.Event
    walking: threading.Event

    def lookup_batch(self, keys: ctypes.Array[ctypes.c_char],
                     values: ctypes.Array[ctypes.c_char], count: int,
                     token_in: ctypes.Array[ctypes.c_char] | None,
                     token_out: ctypes.Array[ctypes.c_char]) -> tuple[int, bool]:
        got, done = super().lookup_batch(keys, values, count, token_in, token_out)
        if got and not done and not self.gate.is_set():
            self.walking.set()
            if not self.gate.wait(60):
                raise DatapathError("the test never opened the gate")
        return got, done


class GatedBpfDatapath(BpfDatapath):
    """The BPF datapath in a netns; its background pass walks the pinned maps through
    GatedMap fds of its own."""

    def __init__(self, settings: BpfSettings) -> None:
        super().__init__(settings)
        self.gate = threading.Event()
        self.gate.set()
        self.walking = threading.Event()
        self.counter = BpfMapCounter(self, open_map=self._open_gated)

    def _open_gated(self, path: str) -> BpfMap:
        nat_map = GatedMap.open_pinned(path)
        assert isinstance(nat_map, GatedMap)
        nat_map.gate, nat_map.walking = self.gate, self.walking
        return nat_map

    def background_counter(self) -> BpfMapCounter:
        return self.counter


def policy_egress_ips(datapath: BpfDatapath) -> set[str]:
    """The egress IPs in the program's IPv4 policy map, read back through bpf(2)."""
    policy = datapath.maps["egress_v4"]
    found = set()
    for key in policy.all_keys():
        value = policy.lookup(key)
        assert value is not None
        egress, _action = layout.POLICY_VALUE4.unpack(value)
        found.add(str(ipaddress.IPv4Address(egress)))
    return found


@pytest.mark.kernel
def test_bpf_a_reconcile_completes_while_a_large_nat_map_is_walked(
    tmp_path: Path, served: list[AgentHTTPServer], agents: list[Agent]
) -> None:
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        reason = "the BPF datapath needs clang and bpftool (scripts/test.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run kernel tests, but {reason}")
        pytest.skip(f"{reason}; CI runs them")
    with bare_netns() as ns:
        run_in(ns, ["ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext1"])
        for ip in EGRESS:
            run_in(ns, ["ip", "addr", "add", f"{ip}/24", "dev", "ext0"])
        run_in(ns, ["ip", "link", "set", "ext0", "up"])
        datapath = GatedBpfDatapath(BpfSettings(NodePortRange(), device="ext0", netns=ns))
        clock = FakeClock()
        policies, inventory = kernel_files(tmp_path, "gateway-1", EGRESS[0])
        agent = Agent(AgentConfig(policies, inventory, "gateway-1", datapath="bpf",
                                  stats_interval=30.0),
                      datapath, clock=clock, wall=clock.wall)
        agents.append(agent)
        try:
            url = serve(agent, served)
            agent.start()
            assert policy_egress_ips(datapath) == {EGRESS[0]}
            settled(agent, 1)
            assert sample_value(scrape(url), "egressgw_nat_entries", family="ipv4") == 0

            inserted = synthetic_connections(BPF_CONNECTIONS, EGRESS, REMOTES)
            with BpfMap.open_pinned(str(datapath.pin_dir / "snat_v4")) as nat_map:
                fill_nat_map(nat_map, inserted)
            expected = Counter((egress, f"{remote}:{port}")
                               for _pod, _pport, remote, port, egress, _nat in inserted)

            datapath.gate.clear()
            clock.now += 30
            within_deadline(agent.tick)
            assert datapath.walking.wait(DEADLINE)  # one batch read, the rest waits

            write_policy(policies, EGRESS[1])
            within_deadline(agent.tick)
            assert agent.state.reconcile.applies_total == 2
            assert policy_egress_ips(datapath) == {EGRESS[1]}
            assert not datapath.gate.is_set() and agent.recount_thread is not None
            assert agent.recount_thread.busy
            samples = scrape(url)
            assert sample_value(samples, "egressgw_nat_stats_recount_in_progress") == 1
            assert sample_value(samples, "egressgw_nat_stats_recounts_total") == 1

            datapath.gate.set()
            settled(agent, 2)
            samples = scrape(url)
            assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == BPF_CONNECTIONS
            exported = {(labels["egress_ip"], labels["remote_addr"]): value for labels, value
                        in samples["egressgw_nat_endpoint_connections"]}
            assert exported == {key: float(n) for key, n in expected.items()}
            # The same counts as the datapath's own endpoint_counts (the serial agent's).
            counts, _ = BpfMapCounter(datapath).snapshot()()
            assert counts == datapath.endpoint_counts()
        finally:
            datapath.gate.set()
            agent.close()
            agents.remove(agent)
            datapath.cleanup()


@pytest.mark.parametrize(
    ("engine", "settings"),
    [("reference", {}), ("reference", {"nat_lru": "kernel"}), ("compiled", {}),
     ("compiled", {"datapath_model": "netfilter"})],
    ids=["reference", "reference-kernel-lru", "compiled", "netfilter"],
)
def test_model_counts_later_are_the_counts_when_taken(engine: str, settings: dict[str, str]
                                                      ) -> None:
    """Every engine: the deferred count equals endpoint_counts() when it was taken, and
    connections opened after it are not in it (they are in the next one)."""
    model = ModelDatapath(ModelConfig(**settings), random.Random(5),  # type: ignore[arg-type]
                          engine=engine)  # type: ignore[arg-type]
    egress = ipaddress.ip_address("203.0.113.10")

    def open_some(first: int, count: int) -> Counter[str]:
        opened: Counter[str] = Counter()
        for i in range(first, first + count):
            remote = MODEL_REMOTES[i % 3]
            tup = FiveTuple(Proto.TCP, Endpoint(ipaddress.ip_address(SHOP_CLIENT), 10000 + i),
                            Endpoint(ipaddress.ip_address(remote), 443))
            assert model.connect(tup, egress).port is not None
            opened[remote] += 1
        return opened

    first = open_some(0, 300)
    later = model.endpoint_counts_later()
    now = model.endpoint_counts()
    more = open_some(300, 90)
    counted = later()
    assert counted == now
    assert {str(k.remote_ip): n for k, n in counted.items()} == dict(first)
    assert {str(k.remote_ip): n for k, n in model.endpoint_counts().items()} == dict(first + more)
