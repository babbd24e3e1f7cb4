#!/usr/bin/env bash
# Installs the Node FHIR client the `atr serve` tests drive (tests/api_clients: @medplum/core's
# MedplumClient) from the committed lock file. Node comes from scripts/install/fhir_server.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here/tests/api_clients"
npm ci --prefer-offline --no-audit --no-fund --loglevel=error
node -e 'globalThis.WebSocket ??= class {}; require("@medplum/core"); console.log("api_clients.sh: ok, node " + process.version)'
