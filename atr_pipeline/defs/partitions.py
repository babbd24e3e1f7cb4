"""Partitions: one per reporting month x source (mapping id).

The month dimension starts at the earliest source's first month: each mapping's ``first_month``
(mappings/<source>.yaml), or ATR_PARTITIONS_START (default 2025-01-01) for a mapping that does not
declare one. Dagster's multi-partitions are a grid, so a source that starts later than another
still shows the earlier months as empty cells; its schedule, its SFTP files and its lateness
check ignore months before its own first month (``first_month`` below).
"""

from __future__ import annotations

import os
from datetime import date

import dagster as dg

from atr_pipeline.config import mappings_dir_for
from atr_pipeline.layouts.spec import declared_first_month

DEFAULT_PARTITIONS_START = "2025-01-01"


def source_ids() -> list[str]:
    """Source ids: the mapping file names in ATR_MAPPINGS_DIR (default ./mappings), broken ones included.

    A mapping's id is its file name, so a broken YAML keeps its partitions (and asset keys stay
    stable); mapping_errors_sensor reports what is wrong with it.
    """
    return sorted(p.stem for p in mappings_dir_for().glob("*.yaml"))


def default_first_month() -> date:
    """ATR_PARTITIONS_START: the first month of a source whose mapping declares none."""
    raw = os.environ.get("ATR_PARTITIONS_START") or DEFAULT_PARTITIONS_START
    try:
        start = date.fromisoformat(raw if len(raw) > 7 else f"{raw}-01")
    except ValueError:
        raise ValueError(f"ATR_PARTITIONS_START is a month (YYYY-MM or YYYY-MM-01), got {raw!r}") from None
    return start.replace(day=1)


def first_month(source_id: str) -> date:
    """The first month a source has partitions for: its mapping's ``first_month``, else ATR_PARTITIONS_START."""
    return declared_first_month(mappings_dir_for() / f"{source_id}.yaml") or default_first_month()


def months_start() -> date:
    """The month dimension's first month: the earliest source's first month."""
    return min((first_month(s) for s in source_ids()), default=default_first_month())


MONTHS = dg.MonthlyPartitionsDefinition(
    start_date=f"{months_start():%Y-%m-%d}",
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
