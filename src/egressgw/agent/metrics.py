"""/metrics: a Prometheus collector over the agent's last snapshot.

Every scrape reads the state the loop last published; nothing is computed on scrape, so a
scrape costs the same however big the NAT table is. The top-K gauges are rebuilt from the
snapshot each time, so a tuple that leaves the top K leaves /metrics with it, and the
label set stays bounded by 2 * --nat-map-stats-entries.

Every series carries a ``node`` label (the agent's --node), so a fleet of gateways can be
aggregated and alerted on by node and tuple without relying on scrape addresses (which
change when a pod is rescheduled). Scrape with ``honor_labels: true`` so a target label
``node`` (for ``up``) does not rename it to ``exported_node``; see docs/alerts.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from egressgw.net import format_addr
from egressgw.rules import RuleKind

from .state import AgentState

# The direction label of Cilium's drop metric: every drop the gateway makes is egress.
EGRESS = "EGRESS"
# The label naming the gateway node on every series.
NODE_LABEL = "node"


class AgentCollector(Collector):
    """Exports nat-stats, datapath failures and reconcile status from an AgentState."""

    def __init__(self, state: AgentState, info: Mapping[str, str]) -> None:
        self._state = state
        self._info = dict(info)

    def collect(self) -> Iterator[Metric]:
        node = self._info.get(NODE_LABEL, "")
        for family in self._families():
            yield with_label(family, NODE_LABEL, node)

    def _families(self) -> Iterator[Metric]:
        yield from self._info_metric()
        yield from self._nat_stats()
        yield from self._recounts()
        yield from self._failures()
        yield from self._reconcile()

    def _info_metric(self) -> Iterator[Metric]:
        # node is added to every series by collect(), this one included.
        names = sorted(k for k in self._info if k != NODE_LABEL)
        info = GaugeMetricFamily(
            "egressgw_agent_info",
            "The agent's node, datapath and version (value always 1).",
            labels=names,
        )
        info.add_metric([self._info[k] for k in names], 1.0)
        yield info

    def _nat_stats(self) -> Iterator[Metric]:
        counts = self._state.counts
        saturation = GaugeMetricFamily(
            "egressgw_nat_endpoint_max_connection",
            "Connections of the busiest {egress IP, remote endpoint} tuple divided by the "
            "NAT source ports available to it, ratio 0..1, per family (as Cilium's "
            "nat_endpoint_max_connection; absent for a family without rows). On Linux only "
            "entries that block a port count (not TIME_WAIT/CLOSE, which the kernel takes "
            "over).",
            labels=["family"],
        )
        top = GaugeMetricFamily(
            "egressgw_nat_endpoint_connections",
            "Connections holding a NAT source port, for each tuple in the current top K "
            "of its family (the rows of egressgw statedb nat-stats).",
            labels=["family", "proto", "egress_ip", "remote_addr"],
        )
        reusable = GaugeMetricFamily(
            "egressgw_nat_endpoint_reusable_connections",
            "Of egressgw_nat_endpoint_connections, entries whose port a new connection can "
            "take over (Linux: TCP in TIME_WAIT, CLOSE or SYN_SENT2); they do not count in "
            "the saturation ratio. Only for datapaths that report it (kernel).",
            labels=["family", "proto", "egress_ip", "remote_addr"],
        )
        entries = GaugeMetricFamily(
            "egressgw_nat_entries",
            "Masqueraded connections holding a NAT source port, over all tuples.",
            labels=["family"],
        )
        capacity = GaugeMetricFamily(
            "egressgw_nat_endpoint_port_capacity",
            "NAT source ports per tuple that the saturation ratio divides by.",
        )
        duration = GaugeMetricFamily(
            "egressgw_nat_stats_recount_duration_seconds",
            "How long the last nat-stats pass over the NAT table took.",
        )
        last = GaugeMetricFamily(
            "egressgw_nat_stats_last_recount_timestamp_seconds",
            "Unix time the last nat-stats pass finished.",
        )
        if counts is not None:
            stats = counts.stats
            for family, ratio in sorted(stats.saturation.items()):
                if any(row.family == family for row in stats.rows):
                    saturation.add_metric([family.value], ratio)
            for row in stats.rows:
                labels = [row.family.value, row.proto.label, str(row.egress_ip),
                          format_addr(row.remote_ip, row.remote_port)]
                top.add_metric(labels, float(row.count))
                if stats.takeover_known:
                    reusable.add_metric(labels, float(row.reusable))
            for family, n in sorted(counts.entries.items()):
                entries.add_metric([family.value], float(n))
            capacity.add_metric([], float(stats.divisor))
            duration.add_metric([], counts.duration)
            last.add_metric([], counts.taken_at)
        yield from (saturation, top, reusable, entries, capacity, duration, last)

    def _recounts(self) -> Iterator[Metric]:
        status = self._state.recount
        running = GaugeMetricFamily(
            "egressgw_nat_stats_recount_in_progress",
            "1 while a nat-stats pass over the NAT table runs (the other nat-stats series "
            "are those of the last finished pass).",
        )
        running.add_metric([], float(status.running_since is not None))
        passes = CounterMetricFamily(
            "egressgw_nat_stats_recounts", "nat-stats passes that finished and were published."
        )
        passes.add_metric([], float(status.passes_total))
        errors = CounterMetricFamily(
            "egressgw_nat_stats_recount_errors",
            "nat-stats passes that failed; the last good pass stays published.",
        )
        errors.add_metric([], float(status.errors_total))
        skipped = CounterMetricFamily(
            "egressgw_nat_stats_recount_skipped",
            "Periods of --nat-map-stats-interval without a pass of their own: the previous "
            "pass (or, with the pass on the loop, a long reconcile) was still running.",
        )
        skipped.add_metric([], float(status.skipped_total))
        yield from (running, passes, errors, skipped)

    def _failures(self) -> Iterator[Metric]:
        failures = self._state.failures
        allocation = CounterMetricFamily(
            "egressgw_nat_allocation_failures",
            "Failed connection attempts: connections whose first packet found no NAT source "
            "port, each tuple counted once however often the client retransmits, since the "
            "agent started (kernel: tuples refused and retried, from the nft table's failed "
            "counters; model: Cilium's refused connections). Packets are in "
            "egressgw_drop_count_total.",
            labels=["reason"],
        )
        for reason, n in sorted(failures.allocation_failures.items()):
            allocation.add_metric([reason], float(n))
        drops = CounterMetricFamily(
            "egressgw_drop_count",
            "Packets the datapath dropped, by reason, since the agent started; each packet "
            "once, retransmissions included (kernel: conntrack insert_failed, and the rest "
            "of conntrack drop).",
            labels=["reason", "direction"],
        )
        for reason, n in sorted(failures.drops.items()):
            drops.add_metric([reason, EGRESS], float(n))
        yield from (allocation, drops)

    def _reconcile(self) -> Iterator[Metric]:
        status = self._state.reconcile
        errors = CounterMetricFamily(
            "egressgw_reconcile_errors",
            "Reconciles rejected (malformed policy or inventory, refused apply); the rules "
            "in force were kept.",
        )
        errors.add_metric([], float(status.errors_total))
        applies = CounterMetricFamily(
            "egressgw_reconcile_applies", "Rule sets applied to the datapath."
        )
        applies.add_metric([], float(status.applies_total))
        failing = GaugeMetricFamily(
            "egressgw_reconcile_failing",
            "1 while the latest policy files are rejected and older rules are in force.",
        )
        failing.add_metric([], float(status.failing))
        yield from (errors, applies, failing)
        if status.last_success is not None:
            success = GaugeMetricFamily(
                "egressgw_reconcile_last_success_timestamp_seconds",
                "Unix time of the last reconcile that left the datapath matching the files.",
            )
            success.add_metric([], status.last_success)
            yield success
        rules = GaugeMetricFamily(
            "egressgw_rules", "Egress rules in force on this node, by kind.", labels=["kind"]
        )
        for kind in RuleKind:
            rules.add_metric([kind.value], float(status.rules.get(kind, 0)))
        yield rules


def with_label(family: Metric, name: str, value: str) -> Metric:
    """``family`` with ``name=value`` added to every sample (a label it set itself wins)."""
    family.samples = [
        Sample(s.name, {name: value, **s.labels}, s.value, s.timestamp, s.exemplar)
        for s in family.samples
    ]
    return family
