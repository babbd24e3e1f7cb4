#!/usr/bin/env bash
# Quickstart command 1: install everything, then run the pipeline on the bundled fixtures with
# the embedded defaults (fixtures as the local inbox, DuckDB under .atr_home/demo, exports in
# .atr_home/demo/exports) and print a short summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/atr demo "$@"
