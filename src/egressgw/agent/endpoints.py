"""Where the agent's HTTP API lives: shared by the server and its clients."""

from __future__ import annotations

# 9967: a port no Cilium component uses. Cilium's Helm chart (v1.16-v1.18, values.yaml)
# gives 9962 to the agent's metrics, 9963 to the operator's, 9964 to cilium-envoy's (on
# the same host network as this agent), 9965 to Hubble's, 9966 to hubble-relay's, and
# 4244-4245, 9878-9881, 9893, 9901 to other listeners.
DEFAULT_PORT = 9967
DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"
METRICS_PATH = "/metrics"
NAT_STATS_PATH = "/v1/statedb/nat-stats"
HEALTH_PATH = "/healthz"
