"""The agent: reconcile on change, recount on a timer, serve the API, exit on a signal.

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
from egressgw.errors import ConfigError, EgressgwError
from egressgw.limits import PortLimit, cilium_limit, netfilter_rule_limit

from .endpoints import DEFAULT_PORT
from .metrics import AgentCollector
from .reconcile import PolicySource, Reconciler
from .recount import Recounter
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
        self.recounter = Recounter(
            datapath,
            self.state,
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
        # Periodic steps that are failing, with their last error (logged once).
        self._failing: dict[str, str] = {}

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
        """The first step: apply the files, take the counters' baseline, count once."""
        self._started = True
        self.reconciler.reconcile(force=True)
        self._guarded("sampling failure counters", self.recounter.sample_failures)
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
        self._guarded("sampling failure counters", self.recounter.sample_failures)
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
        self._guarded("counting nat-stats", self.recounter.count)
        interval = self.config.stats_interval
        self._next_count += interval
        if self._next_count <= now:
            # A pass slower than the interval: skip the missed passes, do not pile up.
            self._next_count = now + interval

    def _guarded(self, what: str, step: Callable[[], object]) -> None:
        """Run a periodic step; a datapath hiccup is logged, the next period retries.

        The same error repeating every poll is logged once (and its end once), so a
        lasting problem does not bury the rest of the log.
        """
        try:
            step()
        except (EgressgwError, OSError) as exc:
            if self._failing.get(what) != str(exc):
                log.error("%s failed: %s", what, exc)
            self._failing[what] = str(exc)
        except Exception as exc:
            if self._failing.get(what) != repr(exc):
                log.exception("%s failed unexpectedly", what)
            self._failing[what] = repr(exc)
        else:
            if self._failing.pop(what, None) is not None:
                log.info("%s works again", what)

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
