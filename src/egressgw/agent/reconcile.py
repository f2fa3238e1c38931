"""Reconcile: make the datapath enforce what the policy files say, or change nothing.

Policies and the inventory are read, compiled and narrowed to this node's rules; only
then is the datapath touched, in one atomic apply. Any error on the way (a malformed
document, an unknown node, a refused apply) is logged with where it is, counted, and
leaves the rules in force as they were, so a bad edit never takes a gateway down.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from egressgw.datapath.base import Datapath
from egressgw.datapath.kernel.interfaces import HostInterfaces
from egressgw.errors import EgressgwError, InputError
from egressgw.policy import compile_rules, load_policies
from egressgw.policy.cilium import DEFAULT_CILIUM_VERSION, CiliumVersion
from egressgw.policy.kubernetes import load_inventories, with_node_interfaces
from egressgw.rules import EgressRule, RuleKind, rules_for_gateway

from .state import AgentState

log = logging.getLogger(__name__)

# What identifies a version of a file cheaply: inode, size and modification time.
Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(*paths: Path) -> Fingerprint:
    """A cheap identity of the files (and of the files in directories) under ``paths``.

    It changes when a file is written, replaced (rename over it) or removed. A missing
    path is part of the fingerprint too, so that it appearing is noticed.
    """
    parts: list[tuple[str, int, int, int]] = []
    for path in paths:
        try:
            members = sorted(path.iterdir()) if path.is_dir() else [path]
        except OSError:  # removed or unreadable between the two calls: a change too
            members = [path]
        for member in members:
            try:
                st = os.stat(member)
            except OSError:
                parts.append((str(member), -1, -1, -1))
            else:
                parts.append((str(member), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where the agent's desired state comes from."""

    policies: Path
    inventory: Path
    node: str
    cilium_version: CiliumVersion = DEFAULT_CILIUM_VERSION
    # Where this node's interfaces come from when the inventory does not say (Kubernetes
    # input): the kernel's, for an agent running on the node (kernel datapath).
    host_interfaces: Callable[[], HostInterfaces] | None = None

    def load_rules(self) -> list[EgressRule]:
        """Read, validate and compile the files into this node's rules (no side effects)."""
        policies = load_policies(self.policies, self.cilium_version)
        # An egressgw inventory file or Kubernetes objects (kubectl get nodes,pods -o yaml).
        inventory = load_inventories([self.inventory])
        if inventory.node(self.node) is None:
            # A typo in --node would otherwise apply no masquerade at all, silently.
            known = ", ".join(node.name for node in inventory.nodes()) or "none"
            raise InputError(f"node {self.node!r} is not in the inventory (nodes: {known})",
                             source=str(self.inventory), field="--node")
        own = inventory.node(self.node)
        if own is not None and not own.interfaces_known and self.host_interfaces is not None:
            host = self.host_interfaces()
            inventory = with_node_interfaces(inventory, self.node, host.interfaces,
                                             host.default_route_interface)
        return rules_for_gateway(compile_rules(policies, inventory), self.node)


class Reconciler:
    """Applies the policy files to a datapath when they change or when asked to."""

    def __init__(
        self,
        source: PolicySource,
        datapath: Datapath,
        state: AgentState,
        *,
        wall: Callable[[], float],
    ) -> None:
        self._source = source
        self._datapath = datapath
        self._state = state
        self._wall = wall
        self._seen: Fingerprint | None = None
        self._applied: list[EgressRule] | None = None

    @property
    def rules(self) -> Sequence[EgressRule] | None:
        """The rules this agent last applied, or None before its first apply."""
        return self._applied

    def files_changed(self) -> bool:
        """Whether the files differ from the version the last reconcile read."""
        return fingerprint(self._source.policies, self._source.inventory) != self._seen

    def reconcile(self, *, force: bool = False) -> bool:
        """Apply the files' rules; return whether the datapath now matches the files.

        Unchanged rules are not re-applied unless ``force`` (SIGHUP, the first run), which
        also repairs rules someone changed behind the agent's back.
        """
        # Read the fingerprint before the files, so a write racing with this read is seen
        # as a change on the next poll rather than lost.
        self._seen = fingerprint(self._source.policies, self._source.inventory)
        try:
            rules = self._source.load_rules()
            apply = force or rules != self._applied
            if apply:
                self._datapath.apply(rules)
        except (EgressgwError, OSError) as exc:
            log.error("reconcile rejected, the rules in force stay as they were: %s", exc)
            self._state.record_error(str(exc))
            return False
        except Exception as exc:
            # A bug, not bad input; still no reason to stop a gateway's agent. Say so loudly.
            log.exception("reconcile failed unexpectedly, the rules in force stay as they were")
            self._state.record_error(f"internal error: {exc!r}")
            return False
        if apply:
            self._applied = rules
        self._state.record_success(self._wall(), Counter(r.kind for r in rules), applied=apply)
        if apply:
            log.info("applied %d rules for node %s (%s)", len(rules), self._source.node,
                     _describe(rules))
        return True


def _describe(rules: Sequence[EgressRule]) -> str:
    kinds = Counter(rule.kind for rule in rules)
    return ", ".join(f"{kinds.get(kind, 0)} {kind.value}" for kind in RuleKind)
