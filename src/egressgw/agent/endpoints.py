"""Where the agent's HTTP API lives: shared by the server and its clients."""

from __future__ import annotations

DEFAULT_PORT = 9964
DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"
METRICS_PATH = "/metrics"
NAT_STATS_PATH = "/v1/statedb/nat-stats"
HEALTH_PATH = "/healthz"
