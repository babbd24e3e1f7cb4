#!/usr/bin/env bash
# Quickstart command 2: install everything the tests need (test servers included) and run the
# whole suite. .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/install/sshd.sh
bash scripts/install/fhir_server.sh
bash scripts/install/api_clients.sh
# Lint gate (ruff + mypy, zero findings) before the suite: a finding fails CI (set -e) without
# waiting for the tests. `bash scripts/lint.sh --fix` fixes what ruff can.
bash scripts/lint.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
