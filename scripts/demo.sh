#!/usr/bin/env bash
# Set egressgw up and run its main job: the demo on the built-in model datapath (no root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/egressgw demo "$@"
