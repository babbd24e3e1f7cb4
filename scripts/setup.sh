#!/usr/bin/env bash
# Creates .venv and installs atr_pipeline with its pinned dependencies. Idempotent.
# Usage: bash scripts/setup.sh [test]   ("test" adds the test-only packages)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12))' 2>/dev/null; then
  echo "atr_pipeline needs Python 3.11 or 3.12 (found: $("$PY" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    # Debian ships venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$PY" -m venv .venv
    else
      echo "python3 -m venv failed: install python3-venv" >&2; exit 2
    fi
  fi
fi
extra=""
if [ "${1:-}" = "test" ]; then extra="[test]"; fi
.venv/bin/python -m pip install -q --upgrade "pip>=24" >/dev/null
.venv/bin/python -m pip install -q -e ".${extra}"
