#!/usr/bin/env bash
# Two partitions (sources) of one month, one after the other and then as two concurrent
# `atr run` processes sharing one ATR_HOME (one history file, one landing ledger).
#   bash benchmarks/bench_two_sources.sh [MEMBERS]   (default 250000; synthetic data only)
# Prints both wall times and the sha256 of every non-Group NDJSON file per home (Group differs by
# its publish time). Asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
members=${1:-250000}
py=${PYTHON:-.venv/bin/python}
atr=${ATR:-.venv/bin/atr}
work=$(mktemp -d "${TMPDIR:-/tmp}/atr-two-sources.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ATR_ID_KEY=two-sources-benchmark
"$py" - "$work" "$members" <<'PY'
import sys
from datetime import date
from pathlib import Path
from atr_pipeline.layouts.spec import load_mapping
from atr_pipeline.synthetic import write_synthetic
work, members = Path(sys.argv[1]), int(sys.argv[2])
for source in ("acme_commercial", "statewide_medicaid"):
    spec = load_mapping(Path(f"mappings/{source}.yaml"))
    write_synthetic(spec, members=members, month=date(2026, 9, 1), out_dir=work / "in" / source, seed=7)
PY
run() { "$atr" run --mapping "mappings/$1.yaml" --inbox "$work/in/$1" --home "$2" > "$2.$1.log" 2>&1 || { echo "$1 failed:"; cat "$2.$1.log"; exit 1; }; }
now() { date +%s.%N; }
t0=$(now); run acme_commercial "$work/seq"; run statewide_medicaid "$work/seq"; t1=$(now)
run acme_commercial "$work/par" & a=$!; run statewide_medicaid "$work/par" & b=$!; wait $a; wait $b; t2=$(now)
"$py" -c "import sys; s, c = float(sys.argv[2]) - float(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'{int(sys.argv[4]):,} members per source: sequential {s:.1f} s, concurrent {c:.1f} s ({s / c:.2f}x)')" "$t0" "$t1" "$t2" "$members"
for home in seq par; do
  printf '%s non-Group NDJSON sha256: ' "$home"
  (cd "$work/$home/exports" && find . -name '*.ndjson' ! -name 'Group*' | sort | xargs cat | sha256sum | cut -c1-16)
done
