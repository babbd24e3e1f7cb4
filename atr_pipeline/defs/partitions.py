"""Partitions: one per reporting month x source (mapping id)."""

from __future__ import annotations

import os
from datetime import date

import dagster as dg

from atr_pipeline.layouts.spec import load_mappings


def source_ids() -> list[str]:
    """Source ids from the mappings folder (ATR_MAPPINGS_DIR, default ./mappings)."""
    folder = os.environ.get("ATR_MAPPINGS_DIR") or "mappings"
    try:
        return sorted(load_mappings(folder))
    except Exception:  # an invalid mapping shows up when it is used, not as a broken code location
        return sorted(p.rsplit("/", 1)[-1].removesuffix(".yaml") for p in _yaml_files(folder))


def _yaml_files(folder: str) -> list[str]:
    from pathlib import Path

    return [str(p) for p in Path(folder).glob("*.yaml")]


MONTHS = dg.MonthlyPartitionsDefinition(
    start_date=os.environ.get("ATR_PARTITIONS_START", "2025-01-01"),
    # Payers deliver a month's list during that month: the current month needs a partition now.
    end_offset=1,
)
SOURCES = dg.StaticPartitionsDefinition(source_ids() or ["none"])
PARTITIONS = dg.MultiPartitionsDefinition({"month": MONTHS, "source": SOURCES})


def partition_key(month: date, source_id: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"month": f"{month:%Y-%m-01}", "source": source_id})


def parse_partition(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> tuple[date, str]:
    return parse_key(context.partition_key)


def parse_key(key: str) -> tuple[date, str]:
    """(month, source) of a partition key; dimensions are ordered by name: month|source."""
    if isinstance(key, dg.MultiPartitionKey):
        keys = key.keys_by_dimension
        month_str, source = keys["month"], keys["source"]
    else:
        month_str, source = str(key).split("|", 1)
    y, m, _ = month_str.split("-")
    return date(int(y), int(m), 1), source
