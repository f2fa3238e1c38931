"""CiliumEgressGatewayPolicy, parsed and validated: the values compile works with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from egressgw.net import IPAddress, IPNetwork
from egressgw.policy.labels import LabelSelector, Operator, Requirement

# Label keys Cilium gives every pod's security identity (pkg/k8s/apis/cilium.io).
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."


@dataclass(frozen=True, slots=True)
class EndpointSelector:
    """One entry of spec.selectors: which pods (and optionally on which nodes).

    Cilium turns a namespaceSelector into requirements on the pod's
    ``io.cilium.k8s.namespace.labels.<key>`` labels and ANDs it with the podSelector; an
    empty namespaceSelector means "any namespace" (``io.kubernetes.pod.namespace``
    exists).
    """

    pod_selector: LabelSelector | None
    namespace_selector: LabelSelector | None
    node_selector: LabelSelector | None = None

    def matches(
        self, identity_labels: Mapping[str, str], node_labels: Mapping[str, str] | None = None
    ) -> bool:
        """Whether a pod with these identity labels, on a node with these labels, matches.

        A nodeSelector needs the pod's node: a pod whose node is unknown does not match it.
        """
        if self.node_selector is not None and (
            node_labels is None or not self.node_selector.matches(node_labels)
        ):
            return False
        if self.pod_selector is not None and not self.pod_selector.matches(identity_labels):
            return False
        if self.namespace_selector is None:
            return True
        if self.namespace_selector.is_empty:
            return Requirement(POD_NAMESPACE_LABEL, Operator.EXISTS).matches(identity_labels)
        scoped = self.namespace_selector.with_key_prefix(NAMESPACE_LABELS_PREFIX)
        return scoped.matches(identity_labels)


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """spec.egressGateway or one entry of spec.egressGateways."""

    node_selector: LabelSelector
    interface: str | None = None
    egress_ip: IPAddress | None = None
    field: str = "spec.egressGateway"


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """A validated CiliumEgressGatewayPolicy.

    ``gateways`` holds spec.egressGateways when it has entries, else spec.egressGateway
    alone (Cilium ignores egressGateway once egressGateways is non-empty).
    """

    name: str
    selectors: tuple[EndpointSelector, ...]
    destination_cidrs: tuple[IPNetwork, ...]
    excluded_cidrs: tuple[IPNetwork, ...]
    gateways: tuple[GatewaySpec, ...]
    source: str = ""
    # CIDRs written with host bits (198.51.100.7/24), as Cilium shows them; the datapaths
    # match the masked network.
    cidr_spellings: Mapping[IPNetwork, str] = field(default_factory=dict)

    def selects(
        self, identity_labels: Mapping[str, str], node_labels: Mapping[str, str] | None = None
    ) -> bool:
        return any(selector.matches(identity_labels, node_labels) for selector in self.selectors)
