"""Partitions: one per reporting month x source (mapping id)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import dagster as dg


def source_ids() -> list[str]:
    """Source ids: the mapping file names in ATR_MAPPINGS_DIR (default ./mappings), broken ones included.

    A mapping's id is its file name, so a broken YAML keeps its partitions (and asset keys stay
    stable); mapping_errors_sensor reports what is wrong with it.
    """
    folder = Path(os.environ.get("ATR_MAPPINGS_DIR") or "mappings")
    return sorted(p.stem for p in folder.glob("*.yaml"))


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
