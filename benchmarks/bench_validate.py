"""Validation cost against a plain polars CSV read of the same rows.

Builds N valid canonical rows (a small varied frame repeated, with unique member ids and line
numbers), writes them to CSV, then times ``pl.read_csv`` of that file and ``validate_rows`` on the
rows. Prints both and the ratio; the target is validate <= ~2x read. Run:

    python benchmarks/bench_validate.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

from atr_pipeline.canonical import ISSUE_DTYPE, conform_columns
from atr_pipeline.layouts.spec import parse_mapping
from atr_pipeline.validate.rules import validate_rows

SPEC = parse_mapping(
    {
        "source_id": "bench_payer",
        "file": {"pattern": r"bench_(?P<yyyymm>\d{6})\.csv"},
        "format": {"kind": "delimited", "delimiter": ",", "header_row": True},
        "fields": {"member_id": {"column": "member_id"}, "payer_id": {"constant": "P1"}, "contract_id": {"column": "contract_id"}},
        "identifier_systems": {"member_id": "urn:bench:member", "payer_id": "urn:bench:payer", "contract_id": "urn:bench:contract"},
    }
)
NPIS = ["1234567893", "9941339100", "1003000126", "1497758544", "1881697878"]
GENDERS = ["female", "male", "other", "unknown"]
STATES = ["MA", "NY", "CA", "TX", "PR", "DC"]


def canonical_rows(n: int) -> pl.DataFrame:
    i = pl.int_range(0, n, eager=True).alias("i")
    base = pl.DataFrame(i).with_columns(
        source_id=pl.lit("bench_payer"),
        file_name=pl.lit("bench_202601.csv"),
        file_sha256=pl.lit("0" * 64),
        line_number=pl.col("i") + 2,
        reporting_month=pl.lit(date(2026, 1, 1)),
        payer_id=pl.lit("P1"),
        payer_name=pl.lit("Bench Health"),
        contract_id=pl.format("C{}", pl.col("i") % 7),
        contract_start=pl.lit(date(2025, 1, 1)),
        contract_end=pl.lit(date(2026, 12, 31)),
        plan_id=pl.format("PL{}", pl.col("i") % 3),
        product_type=pl.lit("commppo"),
        coverage_start=pl.lit(date(2024, 1, 1)),
        member_id=pl.format("M{}", pl.col("i")),
        subscriber_id=pl.format("S{}", pl.col("i")),
        relationship=pl.lit("self"),
        mbi=pl.lit("1EG4TE5MK73"),
        family_name=pl.format("Family{}", pl.col("i") % 1000),
        given_name=pl.format("Given{}", pl.col("i") % 500),
        gender=pl.lit(pl.Series(GENDERS)).gather(pl.col("i") % 4),
        birth_date=pl.lit(date(1940, 1, 1)) + pl.duration(days=pl.col("i") % 25000),
        address_line1=pl.format("{} Main St", pl.col("i") % 9999),
        city=pl.lit("Springfield"),
        state=pl.lit(pl.Series(STATES)).gather(pl.col("i") % 6),
        postal_code=pl.format("{}", (pl.col("i") % 89999 + 10000)),
        phone=pl.lit("555-0100"),
        provider_npi=pl.lit(pl.Series(NPIS)).gather(pl.col("i") % 5),
        provider_tin=pl.lit("123456789"),
        provider_org_npi=pl.lit("1234567893"),
        attribution_start=pl.lit(date(2025, 1, 1)),
        attribution_end=pl.lit(date(2025, 12, 31)),
        risk_score=(pl.col("i") % 300) / 100.0,
    )
    return conform_columns(base).with_columns(pl.lit([], dtype=ISSUE_DTYPE).alias("_issues"))


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(n: int = 1_000_000) -> None:
    rows = canonical_rows(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_202601.csv"
        rows.drop("_issues").write_csv(path)
        size_mb = path.stat().st_size / 1e6
        t_read = best_of(lambda: pl.read_csv(path, infer_schema=False))
    result = validate_rows(rows, SPEC, today=date(2026, 2, 1))
    assert result.rows_rejected == 0, result.counts_by_rule
    t_validate = best_of(lambda: validate_rows(rows, SPEC, today=date(2026, 2, 1)))
    print(f"rows: {n:,}  csv: {size_mb:.0f} MB  columns: {rows.width - 1}")
    print(f"pl.read_csv:   {t_read:.3f} s")
    print(f"validate_rows: {t_validate:.3f} s")
    print(f"ratio validate/read: {t_validate / t_read:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
