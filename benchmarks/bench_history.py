"""Benchmark: record two synthetic 1M-row months in the history store and diff them.

Run: ``python benchmarks/bench_history.py [--rows 1000000] [--dir /tmp/x]``.
Prints wall and CPU seconds of each step, rows/s and the peak RSS; target: member_list of month 2
(the diff of two 1M-row snapshots, dropped entries included) in <= 5 s on a 2-core machine.
Also times the per-contract content hashes (history.hashes) that version the Groups.
All data is synthetic (generated ids and names), never real members.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

import polars as pl

from atr_pipeline.canonical import CANONICAL_SCHEMA, conform_columns
from atr_pipeline.history.hashes import contract_content_hashes
from atr_pipeline.history.store import HistoryStore, SnapshotLineage

SOURCE = "bench"
M1, M2 = date(2026, 1, 1), date(2026, 2, 1)


def synthetic_month(rows: int, month: date, *, shift: int) -> pl.DataFrame:
    """``rows`` entries; month 2 shifts the member range (new + dropped) and edits every 50th address."""
    i = pl.int_range(shift, rows + shift, eager=True)
    df = pl.DataFrame({"i": i}).with_columns(
        pl.lit(SOURCE).alias("source_id"),
        pl.lit(f"bench_{month:%Y%m}.csv").alias("file_name"),
        pl.lit("0" * 64).alias("file_sha256"),
        (pl.col("i") - shift + 2).cast(pl.Int64).alias("line_number"),
        pl.lit(month).alias("reporting_month"),
        pl.lit("PAYER1").alias("payer_id"),
        pl.lit("Bench Health").alias("payer_name"),
        pl.format("C{}", pl.col("i") % 20).alias("contract_id"),
        pl.lit("PLAN1").alias("plan_id"),
        pl.lit("mediadv").alias("product_type"),
        pl.format("MEM{}", pl.col("i")).alias("member_id"),
        pl.format("MEM{}", pl.col("i")).alias("subscriber_id"),
        pl.lit("self").alias("relationship"),
        pl.format("Fam{}", pl.col("i") % 5000).alias("family_name"),
        pl.format("Giv{}", pl.col("i") % 3000).alias("given_name"),
        pl.lit("female").alias("gender"),
        (pl.lit(date(1940, 1, 1)) + pl.duration(days=pl.col("i") % 20000)).alias("birth_date"),
        pl.when((pl.col("i") % 50 == 0) & pl.lit(shift > 0))
        .then(pl.lit("1 Moved Rd"))
        .otherwise(pl.format("{} Main St", pl.col("i") % 997))
        .alias("address_line1"),
        pl.lit("Springfield").alias("city"),
        pl.lit("IL").alias("state"),
        pl.lit("62701").alias("postal_code"),
        pl.format("1{}", (pl.col("i") % 900_000_000 + 100_000_000).cast(pl.String)).alias("provider_npi"),
        pl.lit(date(2026, 1, 1)).alias("attribution_start"),
        pl.lit(1.0).alias("risk_score"),
    )
    out = conform_columns(df.drop("i"), keep_issues=False)
    assert out.schema == CANONICAL_SCHEMA
    return out


def timed(label: str, rows: int, fn):  # noqa: ANN001, ANN202
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{label:<42} {seconds:7.2f} s wall {cpu:7.2f} s cpu  {rows / seconds / 1e6:6.2f} M rows/s")
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    rows = args.rows
    # The machine is shared: the load average says how far wall-clock figures are inflated.
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench_history_"))
    db = workdir / "history.duckdb"
    db.unlink(missing_ok=True)
    month1 = synthetic_month(rows, M1, shift=0)
    month2 = synthetic_month(rows, M2, shift=rows // 100)  # 1% dropped, 1% new
    store = HistoryStore(db)
    received = datetime(2026, 2, 2, tzinfo=UTC)
    for month, df in ((M1, month1), (M2, month2)):
        lineage = SnapshotLineage(f"bench_{month:%Y%m}.csv", "0" * 64, received, df.height)
        timed(f"record_snapshot {month:%Y-%m} ({rows:,} rows)", rows, lambda df=df, month=month, lineage=lineage: store.record_snapshot(
            df, source_id=SOURCE, month=month, lineage=lineage))
    timed("record_snapshot 2026-02 again (replace)", rows, lambda: store.record_snapshot(
        month2, source_id=SOURCE, month=M2, lineage=SnapshotLineage("bench_202602.csv", "1" * 64, received, rows)))
    listed, seconds = timed("member_list 2026-02 (diff of two months)", 2 * rows, lambda: store.member_list(SOURCE, M2))
    counts = dict(listed.group_by("change_type").len().sort("change_type").iter_rows())
    print(f"  change types: {counts}")
    # partial, not a lambda: a closure over `listed` would name it after the `del` below
    hashes, _ = timed("contract_content_hashes of that list", listed.height, partial(contract_content_hashes, listed))
    print(f"  {len(hashes)} contracts hashed")
    del listed
    _, one = timed("member_list 2026-02 one contract", 2 * rows // 20, lambda: store.member_list(SOURCE, M2, "C7"))
    timed("trends (2 months, 20 contracts)", 2 * rows, lambda: store.trends(SOURCE))
    print(f"member_list target <= 5 s: {'met' if seconds <= 5 else 'MISSED'} ({seconds:.2f} s)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"db size: {db.stat().st_size / 1e6:.0f} MB")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
