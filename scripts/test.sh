#!/usr/bin/env bash
# Quickstart command 2: install everything the tests need (test servers included) and run the
# whole suite. .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/install/sshd.sh
bash scripts/install/fhir_server.sh
bash scripts/install/api_clients.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
