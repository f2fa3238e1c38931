"""The Cilium versions whose egress gateway egressgw follows (CRD schema and policy map).

Facts per version, read from Cilium's source at the release commits of the
github.com/cilium/cilium history ("Prepare for release v1.16.2", "... v1.17.6", and
"... v1.18.0-pre.3", the newest v1.18 release commit available here):

- v1.16 (pkg/egressgateway/manager.go, policy.go, endpoint.go): IPv4 only: one IPv4 policy
  map, endpoints contribute their IPv4 addresses only, the CRD's CIDR pattern is IPv4 only;
  one ``egressGateway``. A configured ``egressIP`` stays in the map even when no interface
  of the gateway holds it (``deriveFromPolicyGatewayConfig`` assigns it before looking the
  interface up, and only logs the error).
- v1.17: as v1.16, plus ``selectors[].nodeSelector`` in the CRD.
- v1.18: IPv4 and IPv6 maps, ``egressGateways[]`` and ``selectors[].nodeSelector``. In
  ``deriveFromPolicyGatewayConfig`` any failure leaves both egress IPs unspecified
  (0.0.0.0 and ``::``): an ``egressIP`` on no interface of the gateway, an ``interface``
  without an address of a family the policy needs, an IPv6 default route on another
  interface than the IPv4 one. An ``egressIP`` gives IPv6 destinations ``::`` (a TODO in
  the source), so that IPv6 traffic is dropped at the gateway.
- both: an excluded CIDR is stored with the gateway config's egress IP and gateway IP
  0.0.0.1 (``updateEgressRules*``, ``ExcludedCIDRIPv4``); on any node but the gateway the
  egress IP is unspecified.
"""

from __future__ import annotations

import enum


class CiliumVersion(enum.StrEnum):
    V1_16 = "1.16"
    V1_17 = "1.17"
    V1_18 = "1.18"

    @property
    def has_ipv6(self) -> bool:
        """IPv6 egress gateway, egressGateways[], and the v1.18 derivation of egress IPs."""
        return self is CiliumVersion.V1_18

    @property
    def has_selector_node_selector(self) -> bool:
        return self is not CiliumVersion.V1_16

    @property
    def release(self) -> str:
        """The release commit the facts were read at."""
        return {"1.16": "v1.16.2", "1.17": "v1.17.6", "1.18": "v1.18.0-pre.3"}[self.value]


DEFAULT_CILIUM_VERSION = CiliumVersion.V1_18
CILIUM_VERSIONS = tuple(v.value for v in CiliumVersion)
