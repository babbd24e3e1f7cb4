#!/usr/bin/env bash
# The codebase checks itself: ruff (E, F, B, I, UP; settings in pyproject.toml [tool.ruff]) and
# mypy (pyproject.toml [tool.mypy]). Exit non-zero on any finding. Both are pinned in the
# `test` extra: `bash scripts/setup.sh test` installs them.
# Usage: bash scripts/lint.sh            check everything
#        bash scripts/lint.sh --fix      let ruff fix what it can first, then check
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
if [ ! -x "$BIN/ruff" ] || [ ! -x "$BIN/mypy" ]; then
  echo "ruff and mypy are not in .venv: run 'bash scripts/setup.sh test' first" >&2
  exit 2
fi
status=0
if [ "${1:-}" = "--fix" ]; then
  "$BIN/ruff" check --fix . || true
fi
echo "== ruff check"
"$BIN/ruff" check . || status=1
echo "== mypy"
# The cache lives outside the tree so a fresh clone and CI start from the same place.
"$BIN/mypy" --cache-dir "${MYPY_CACHE_DIR:-${TMPDIR:-/tmp}/atr_pipeline-mypy-cache}" || status=1
exit $status
