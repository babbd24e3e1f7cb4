"""Kept trend counts (history/store.py ``trends``): a month is counted once per basis.

Every Dagster run shows the source's trend in its metadata; counting reloads each month's rows
and the one before, so without keeping the counts that metadata cost grew with every month of
history. Here: the kept counts equal a fresh count, a second call loads no rows, re-recording a
month counts that month and the next again (nothing else), and a read-only store keeps nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from test_history_cases import M1, M2, M3, MONTHS, SOURCE, lineage_for, month2

import atr_pipeline.history.store as store_module
from atr_pipeline.history.store import HistoryStore


@pytest.fixture()
def store(tmp_path: Path) -> HistoryStore:
    store = HistoryStore(tmp_path / "history.duckdb")
    for month in (M1, M2, M3):
        df = MONTHS[month]()
        store.record_snapshot(df, source_id=SOURCE, month=month, lineage=lineage_for(df))
    return store


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list:
    """The months whose rows trends() loads from the store."""
    seen: list = []
    real = store_module._load

    def spy(con, source_id, month, *args, **kwargs):
        seen.append(month)
        return real(con, source_id, month, *args, **kwargs)

    monkeypatch.setattr(store_module, "_load", spy)
    return seen


def fresh(store: HistoryStore, tmp_path: Path, contract: str | None = None) -> pl.DataFrame:
    """Counted from the rows alone: a copy of the store without its kept counts, read-only."""
    copy = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}.duckdb"
    shutil.copyfile(store.path, copy)
    with duckdb.connect(str(copy)) as con:
        con.execute("DROP TABLE IF EXISTS trend_counts")
        con.execute("DROP TABLE IF EXISTS trend_months")
    return HistoryStore(copy, read_only=True).trends(SOURCE, contract)


def test_kept_counts_equal_a_fresh_count_and_are_read_not_recounted(store, tmp_path, loads):
    expected = fresh(store, tmp_path)
    assert expected.height == 6 and loads == [M1, M2, M3]  # two contracts x three months, each month loaded once
    loads.clear()
    assert store.trends(SOURCE).equals(expected)
    assert loads == [M1, M2, M3]
    loads.clear()
    assert store.trends(SOURCE).equals(expected)
    assert store.trends(SOURCE, "C2").equals(expected.filter(pl.col("contract_id") == "C2"))
    assert loads == []  # kept: no month's rows read again


def test_a_month_recorded_anew_is_counted_again_with_the_month_after_it(store, tmp_path, loads):
    before = store.trends(SOURCE)
    corrected = month2(corrected=True)
    store.record_snapshot(corrected, source_id=SOURCE, month=M2, lineage=lineage_for(corrected, sha="f" * 64))
    loads.clear()
    after = store.trends(SOURCE)
    assert loads == [M1, M2, M3]  # M2 against M1, M3 against the M2 just loaded; M1 itself is kept
    assert after.equals(fresh(store, tmp_path))
    assert not after.equals(before)  # the correction changed the counts of M2 and M3
    unchanged = pl.col("month") == M1
    assert after.filter(unchanged).equals(before.filter(unchanged))


def test_a_read_only_store_counts_without_keeping(store, tmp_path, loads):
    reader = HistoryStore(store.path, read_only=True)
    assert reader.trends(SOURCE, "C1").equals(fresh(store, tmp_path, "C1"))
    loads.clear()
    reader.trends(SOURCE)
    assert loads == [M1, M2, M3]  # nothing was kept by the first call
    store.trends(SOURCE)
    loads.clear()
    assert reader.trends(SOURCE).equals(store.trends(SOURCE)) and loads == []  # what a writer kept, it reads
