#!/usr/bin/env bash
# Set everything up and run the whole test suite: lint, types, unit, property, golden and
# (as root) kernel tests in real network namespaces. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && ! { command -v nft && command -v conntrack && command -v ip && command -v promtool \
        && command -v clang && command -v bpftool && [ -e /usr/include/bpf/bpf_helpers.h ]; } >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # promtool (alert rule tests) comes with Debian's prometheus package.
    # clang, llvm, libbpf-dev and bpftool build and load the BPF datapath's tc program.
    apt-get install -y -q nftables conntrack iproute2 prometheus clang llvm libbpf-dev bpftool >/dev/null
    # The package may start a Prometheus server; the tests only need promtool.
    (systemctl stop prometheus prometheus-node-exporter || service prometheus stop) >/dev/null 2>&1 || true
fi

bash scripts/setup.sh test

.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
