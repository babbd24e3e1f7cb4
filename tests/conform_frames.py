"""Pipeline-built (id, json) frames of a synthetic month, for the conformance fast-path tests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from atr_pipeline.canonical import conform_columns
from atr_pipeline.fhir.build import BuildContext, build_resources
from atr_pipeline.layouts.spec import load_mapping
from atr_pipeline.synthetic import population

ROOT = Path(__file__).resolve().parents[1]
CHANGES = ["new", "changed", "nochange", "dropped", "cancelled"]


def built_frames(members: int, seed: int) -> dict[str, pl.DataFrame]:
    """Every resource type of ``members`` synthetic members, every change type represented."""
    spec = load_mapping(ROOT / "mappings" / "acme_commercial.yaml")
    rows = population(spec, members=members, month=date(2026, 9, 1), seed=seed)
    i = pl.int_range(0, rows.height)
    rows = rows.with_columns(
        pl.lit("acme_commercial").alias("source_id"),
        pl.lit("acme_202609.csv").alias("file_name"),
        pl.lit("0" * 64).alias("file_sha256"),
        (i + 2).cast(pl.Int64).alias("line_number"),
        pl.lit(date(2026, 9, 1)).alias("reporting_month"),
        pl.lit("ACME01").alias("payer_id"),
        pl.lit("Acme Health Plan (synthetic)").alias("payer_name"),
    )
    rows = conform_columns(rows, keep_issues=False).with_columns(
        pl.Series("change_type", [CHANGES[k % 5] for k in range(rows.height)]),
        pl.Series("inactive", [k % 5 in (3, 4) and k % 2 == 0 for k in range(rows.height)]),
    )
    ctx = BuildContext(id_key=b"test-key", systems=spec.identifier_systems, transaction_time=datetime(2026, 9, 5, tzinfo=UTC))
    return build_resources(rows, ctx)
