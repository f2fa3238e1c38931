#!/usr/bin/env bash
# Create .venv and install egressgw into it with the simulation extra (and the test tools
# when given "test"). The core alone is `pip install egressgw` (docs/install.md).
# Sourced by demo.sh and test.sh; safe to run again (pip only installs what is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
        rm -rf .venv
        # Debian's python3 ships venv separately.
        if [ "$(id -u)" = 0 ]; then
            apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
            python3 -m venv .venv
        else
            echo "python3 -m venv failed: install Debian's python3-venv (apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi
# The demo needs the simulation extra (numba, matplotlib); the tests need everything.
extras="sim"
[ "${1:-}" = test ] && extras="sim,test"
.venv/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"
