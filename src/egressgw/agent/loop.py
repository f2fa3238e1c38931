"""The agent: reconcile on change, recount on a timer, serve the API, exit on a signal.

Three kinds of threads: the loop (reconciles, failure counters, the recount timer and the
start of each pass), the recount thread (the rest of each nat-stats pass, for every
datapath that offers a counter: kernel, bpf, model) and the HTTP workers (answer from the
published state). A reconcile never
waits for a pass, and a scrape never waits for either (docs/agent.md, "Threads").

Time is injected (a monotonic ``clock`` for timers, a ``wall`` clock for timestamps), so
tests drive :meth:`Agent.tick` step by step without sleeping. The loop itself only
waits on an event that signals (SIGHUP, SIGTERM) and the timers set.

Stopping never touches the datapath: the rules and every tracked connection stay in the
kernel, and the next agent converges to the same rules without breaking them. Only
``cleanup()`` (``egressgw agent --cleanup``) removes them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client.registry import CollectorRegistry

from egressgw import __version__
from egressgw.config import (
    NAT_MAP_STATS_ENTRIES_DEFAULT,
    NodePortRange,
    check_duration,
    check_stats_entries,
)
from egressgw.datapath.base import Datapath
from egressgw.datapath.kernel.interfaces import host_interfaces
from egressgw.errors import ConfigError
from egressgw.limits import PortLimit, cilium_limit, netfilter_rule_limit

from .counting import DatapathCounter, background_counter
from .endpoints import DEFAULT_PORT
from .guard import Guard
from .metrics import AgentCollector
from .reconcile import PolicySource, Reconciler
from .recount import Recounter
from .recountthread import RecountThread
from .server import AgentAPI, AgentHTTPServer, ListenAddress
from .state import AgentState

# The shortest intervals the agent accepts (0 still disables nat-stats).
MIN_STATS_INTERVAL = 1.0
MIN_POLL_INTERVAL = 0.1

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``egressgw agent`` is told on its command line."""

    policies: Path
    inventory: Path
    node: str
    datapath: str = "kernel"
    node_port_range: NodePortRange = field(default_factory=NodePortRange)
    # --nat-map-stats-interval in seconds; 0 disables nat-stats like in Cilium.
    stats_interval: float = 30.0
    stats_entries: int = NAT_MAP_STATS_ENTRIES_DEFAULT
    listen: ListenAddress = field(default_factory=lambda: ListenAddress("127.0.0.1",
                                                                        DEFAULT_PORT))
    # How often the policy files' mtimes and the failure counters are polled.
    poll_interval: float = 1.0
    # Count nat-stats on a thread of its own when the datapath allows it (all three); False
    # counts on the loop as before, where a reconcile waits for the pass (kept to
    # measure the difference: bench/bench_agent_recount.py).
    background_recount: bool = True

    def __post_init__(self) -> None:
        check_stats_entries(self.stats_entries)
        # Intervals below these would busy-loop the agent (a recount walks the whole
        # conntrack table; a poll stats every file): docs/reliability.md.
        check_duration(self.stats_interval, field="--nat-map-stats-interval",
                       minimum=MIN_STATS_INTERVAL)
        check_duration(self.poll_interval, field="--poll-interval", minimum=MIN_POLL_INTERVAL)
        if self.poll_interval == 0:
            raise ConfigError("must be positive", field="--poll-interval")

    @property
    def limit(self) -> PortLimit:
        """The ports one tuple can use, which saturation is a fraction of (egressgw.limits).

        The kernel datapath's nft rule ``snat to IP:MAX+1-65535`` can hand out every port
        of that range; the model reproduces Cilium, whose metric divides by
        65535 - (NodePortMax + 1) (32767 by default).
        """
        if self.datapath == "kernel":
            return netfilter_rule_limit(node_port_range=self.node_port_range)
        return cilium_limit(self.node_port_range)

    @property
    def saturation_divisor(self) -> int:
        return self.limit.ports


class Agent:
    """The agent's state machine; :meth:`run` is its loop, :meth:`tick` one step of it."""

    def __init__(
        self,
        config: AgentConfig,
        datapath: Datapath,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.datapath = datapath
        self.state = AgentState()
        self._clock = clock
        self.reconciler = Reconciler(
            PolicySource(config.policies, config.inventory, config.node,
                         host_interfaces=host_interfaces if config.datapath == "kernel"
                         else None),
            datapath,
            self.state,
            wall=wall,
        )
        counter = background_counter(datapath) if config.background_recount else None
        self.recounter = Recounter(
            datapath,
            self.state,
            counter=counter or DatapathCounter(datapath),
            entries=config.stats_entries,
            limit=config.limit,
            clock=clock,
            wall=wall,
        )
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(
            AgentCollector(
                self.state,
                {"node": config.node, "datapath": config.datapath, "version": __version__},
            )
        )
        self.api = AgentAPI(self.state, self.registry, config.stats_entries, config.limit)
        self._wake = threading.Event()
        self._reload = False
        self._stopping = False
        self._started = False
        self._next_count: float | None = None
        self._sampling = Guard("sampling failure counters")
        # None: passes run on the loop (the datapath cannot be counted beside it).
        self.recount_thread = RecountThread() if counter is not None else None
        # Set while passes overrun the interval (reported once): the start of the running
        # pass (thread) or how long the last one took (loop).
        self._slow_pass: float | None = None

    # Requests, safe to call from signal handlers and other threads.

    def request_reload(self) -> None:
        """Re-read and re-apply the policy files now (SIGHUP)."""
        self._reload = True
        self._wake.set()

    def request_stop(self) -> None:
        """Leave the loop after the current step (SIGTERM, SIGINT)."""
        self._stopping = True
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # The steps.

    def start(self) -> None:
        """The first step: apply the files, take the counters' baseline, ask for the first
        pass (on the recount thread it is published when done, not before this returns)."""
        self._started = True
        if self.recount_thread is not None:
            self.recount_thread.start()
        self.reconciler.reconcile(force=True)
        self._sampling.run(self.recounter.sample_failures)
        if self.config.stats_interval > 0:
            self._next_count = self._clock()
        self._count_if_due()

    def tick(self) -> float:
        """One step: reconcile if asked or changed, sample counters, count if due.

        Returns how long the loop may wait before the next step.
        """
        if not self._started:
            self.start()
        elif self._reload:
            self._reload = False
            log.info("reload requested: re-reading %s and %s", self.config.policies,
                     self.config.inventory)
            self.reconciler.reconcile(force=True)
        elif self.reconciler.files_changed():
            log.info("policy files changed: reconciling")
            self.reconciler.reconcile()
        self._sampling.run(self.recounter.sample_failures)
        self._count_if_due()
        wait = self.config.poll_interval
        if self._next_count is not None:
            wait = min(wait, max(0.0, self._next_count - self._clock()))
        return wait

    def _count_if_due(self) -> None:
        if self._next_count is None:
            return
        now = self._clock()
        if now < self._next_count:
            return
        if self.recount_thread is None:
            snapshot = self.recounter.run_pass()
            if snapshot is not None:
                self._report_inline_pass(snapshot.duration)
        elif self.recount_thread.request(self.recounter.begin_pass):
            self._slow_pass = None
        else:
            # The previous pass still runs: skip this period rather than queue behind it.
            self.state.recount_skipped()
            # A pass asked for but not begun yet has no start time: -1 stands for it.
            running_since = self.state.recount.running_since
            key = -1.0 if running_since is None else running_since
            if self._slow_pass != key:
                self._slow_pass = key
                log.warning("nat-stats pass still running after --nat-map-stats-interval "
                            "%gs: this period is skipped; /metrics and nat-stats serve the "
                            "last finished pass meanwhile", self.config.stats_interval)
        interval = self.config.stats_interval
        self._next_count += interval
        now = self._clock()
        if self._next_count <= now:
            # The loop was held (a pass on the loop, a long reconcile): skip the periods
            # it missed, do not pile passes up.
            self.state.recount_skipped(int((now - self._next_count) // interval) + 1)
            self._next_count = now + interval

    def _report_inline_pass(self, took: float) -> None:
        """Warn when a pass on the loop overran the interval (once until one fits again)."""
        interval = self.config.stats_interval
        if took > interval and self._slow_pass is None:
            self._slow_pass = took
            log.warning("nat-stats pass took %.1fs, longer than --nat-map-stats-interval "
                        "%gs: the periods it overran are skipped", took, interval)
        elif took <= interval and self._slow_pass is not None:
            self._slow_pass = None
            log.info("nat-stats passes fit --nat-map-stats-interval again (%.1fs)", took)

    def close(self) -> None:
        """Stop the recount thread (after the pass it runs) and close its socket."""
        if self.recount_thread is not None and not self.recount_thread.stop():
            log.warning("a nat-stats pass is still running at exit; left to end with "
                        "the process")
            return
        self.recounter.close()

    def run(self, wait: Callable[[float], object] | None = None) -> None:
        """Loop until :meth:`request_stop`; ``wait(seconds)`` sleeps unless woken."""
        wait = wait or self._wake.wait
        while not self._stopping:
            timeout = self.tick()
            if self._stopping:
                break
            wait(timeout)
            self._wake.clear()
        log.info("stopping; the egress rules stay in force")


@contextmanager
def stop_on_signals(agent: Agent) -> Iterator[None]:
    """SIGTERM/SIGINT stop the agent cleanly, SIGHUP reloads; restored on exit."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        agent.request_stop()

    def reload(_signum: int, _frame: FrameType | None) -> None:
        agent.request_reload()

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
        signal.SIGINT: signal.signal(signal.SIGINT, stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, reload),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_agent(config: AgentConfig, datapath: Datapath) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT (the CLI's entry)."""
    agent = Agent(config, datapath)
    server = AgentHTTPServer(config.listen, agent.api)
    log.info("egressgw agent %s for node %s, %s datapath, nat-stats every %gs (top %d)",
             __version__, config.node, config.datapath, config.stats_interval,
             config.stats_entries)
    server.start()
    try:
        with stop_on_signals(agent):
            agent.run()
    finally:
        server.stop()
        agent.close()
