"""HistoryStore: change types over three months, corrections, order, gaps, versions, status, trends."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_history_cases import (
    EXPECTED,
    M1,
    M2,
    M3,
    MONTHS,
    NPI,
    SOURCE,
    change_types,
    lineage_for,
    month1,
    month2,
    month3,
)

from atr_pipeline.canonical import CANONICAL_SCHEMA
from atr_pipeline.errors import AtrError
from atr_pipeline.history.store import TREND_SCHEMA, HistoryStore


def record(store: HistoryStore, month: date, df: pl.DataFrame | None = None) -> None:
    df = MONTHS[month]() if df is None else df
    store.record_snapshot(df, source_id=SOURCE, month=month, lineage=lineage_for(df))


@pytest.fixture()
def store(tmp_path: Path) -> HistoryStore:
    s = HistoryStore(tmp_path / "history.duckdb")
    for month in (M1, M2, M3):
        record(s, month)
    return s


def row(listed: pl.DataFrame, member: str, provider: str) -> dict:
    found = listed.filter((pl.col("member_id") == member) & (pl.col("provider_npi") == NPI[provider]))
    assert found.height == 1
    return found.row(0, named=True)


def test_change_types_per_entry_for_three_months(store: HistoryStore) -> None:
    for month in (M1, M2, M3):
        assert change_types(store.member_list(SOURCE, month)) == EXPECTED[month]


def test_member_list_columns_and_previous_month(store: HistoryStore) -> None:
    listed = store.member_list(SOURCE, M2)
    assert listed.columns == [*CANONICAL_SCHEMA.names(), "change_type", "inactive", "previous_month"]
    assert listed.schema["change_type"] == pl.String and listed.schema["inactive"] == pl.Boolean
    assert listed["previous_month"].unique().to_list() == [M1]
    assert store.member_list(SOURCE, M1)["previous_month"].null_count() == 10
    assert store.previous_month(SOURCE, M3) == M2
    assert store.previous_month(SOURCE, M1) is None


def test_dropped_once_inactive_with_end_date(store: HistoryStore) -> None:
    m2 = store.member_list(SOURCE, M2)
    assert m2.filter(pl.col("inactive"))["change_type"].unique().to_list() == ["dropped"]
    assert m2.filter(~pl.col("inactive"))["change_type"].unique().sort().to_list() == ["changed", "new", "nochange"]
    # null or later end -> last day of the previous month; the rest of the row is last month's
    assert row(m2, "M4", "A")["attribution_end"] == date(2026, 1, 31)
    assert row(m2, "M8", "C")["attribution_end"] == date(2026, 1, 31)
    assert row(m2, "M4", "A")["reporting_month"] == M2
    assert row(m2, "M4", "A")["file_name"] == "acme_202601.csv"
    m3 = store.member_list(SOURCE, M3)
    assert row(m3, "M7", "C")["attribution_end"] == date(2026, 2, 28)
    assert row(m3, "M11", "C")["attribution_end"] == date(2026, 1, 15)  # earlier end kept
    # dropped in month 2: not carried into month 3
    keys3 = set(change_types(m3))
    assert {("M4", "A"), ("M5", "B"), ("M8", "C")} & keys3 == set()
    assert m3.filter(pl.col("inactive")).height == 2


def test_contract_filter(store: HistoryStore) -> None:
    c2 = store.member_list(SOURCE, M3, contract_id="C2")
    assert change_types(c2) == {("M7", "C"): "dropped", ("M10", "C"): "new", ("M11", "C"): "dropped"}
    assert c2["contract_id"].unique().to_list() == ["C2"]


def test_correcting_middle_month_recomputes_month_three(store: HistoryStore) -> None:
    corrected = month2(corrected=True)
    record(store, M2, corrected)
    m2 = change_types(store.member_list(SOURCE, M2))
    assert m2[("M2", "A")] == "nochange"
    assert m2[("M6", "A")] == "nochange"
    m3 = change_types(store.member_list(SOURCE, M3))
    assert m3 == {**EXPECTED[M3], ("M2", "A"): "changed", ("M6", "A"): "nochange"}
    lineage = store.lineage(SOURCE, M2)
    assert [(d["file_name"], d["current"], d["rows"]) for d in lineage] == [
        ("acme_202602.csv", False, 8),
        ("acme_202602_v2.csv", True, 9),
    ]


def test_out_of_order_equals_in_order(store: HistoryStore, tmp_path: Path) -> None:
    other = HistoryStore(tmp_path / "out_of_order.duckdb")
    record(other, M3)
    assert set(change_types(other.member_list(SOURCE, M3)).values()) == {"new"}
    record(other, M1)
    assert other.member_list(SOURCE, M3)["previous_month"][0] == M1
    record(other, M2)
    assert other.months(SOURCE) == [M1, M2, M3]
    for month in (M1, M2, M3):
        assert_frame_equal(other.member_list(SOURCE, month), store.member_list(SOURCE, month))


def test_backfill_equals_monthly_runs(tmp_path: Path) -> None:
    monthly = HistoryStore(tmp_path / "monthly.duckdb")
    lists = {}
    for month in (M1, M2, M3):
        record(monthly, month)
        lists[month] = monthly.member_list(SOURCE, month)
    backfill = HistoryStore(tmp_path / "backfill.duckdb")
    for month in (M1, M2, M3):
        record(backfill, month)
    for month in (M1, M2, M3):
        assert_frame_equal(backfill.member_list(SOURCE, month), lists[month])
    assert_frame_equal(backfill.trends(SOURCE), monthly.trends(SOURCE))


def test_gap_month_diffs_against_nearest_earlier(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "gap.duckdb")
    record(s, M1)
    record(s, M3)
    m3 = s.member_list(SOURCE, M3)
    assert m3["previous_month"][0] == M1
    types = change_types(m3)
    assert types[("M6", "A")] == "nochange"  # present in 1 and 3: the gap is skipped, not empty
    assert types[("M9", "A")] == "new"
    assert types[("M8", "C")] == "dropped"
    assert row(m3, "M8", "C")["attribution_end"] == date(2026, 1, 31)  # last day of the month last seen
    record(s, M2)
    assert change_types(s.member_list(SOURCE, M3)) == EXPECTED[M3]


def test_rerecording_same_month_does_not_duplicate(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "twice.duckdb")
    record(s, M1)
    record(s, M1)
    assert s.snapshot(SOURCE, M1).height == 10
    assert s.member_list(SOURCE, M1).height == 10
    assert s.months(SOURCE) == [M1]
    assert len(s.lineage(SOURCE, M1)) == 1
    entry = s.lineage(SOURCE, M1)[0]
    assert entry["received_at"] == datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
    assert entry["file_name"] == "acme_202601.csv" and entry["rows"] == 10 and entry["current"] is True


def test_record_refuses_bad_frames(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "refuse.duckdb")
    df = month1()
    with pytest.raises(AtrError, match="2 rows share a member entry key"):
        record(s, M1, pl.concat([df, df.head(1)]))
    with pytest.raises(AtrError, match="10 rows of another reporting month"):
        s.record_snapshot(df, source_id=SOURCE, month=M2, lineage=lineage_for(df))
    with pytest.raises(AtrError, match="lacks canonical columns: mbi"):
        record(s, M1, df.drop("mbi"))
    with pytest.raises(AtrError, match="no snapshot recorded for source 'acme_csv' month 2026-01"):
        s.member_list(SOURCE, M1)
    assert s.months(SOURCE) == []


def test_group_versions_bump_only_on_change(store: HistoryStore) -> None:
    t1 = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    t2 = datetime(2026, 4, 3, 9, 0, tzinfo=UTC)
    first = store.publish_group_versions(SOURCE, M2, ["C1", "C2"], t1)
    assert {c: (v.version_id, v.bumped, v.status) for c, v in first.items()} == {
        "C1": ("1", True, "draft"), "C2": ("1", True, "draft")
    }
    again = store.publish_group_versions(SOURCE, M2, ["C1", "C2"], t2)
    assert {c: (v.version_id, v.bumped, v.last_updated) for c, v in again.items()} == {
        "C1": ("1", False, t1), "C2": ("1", False, t1)
    }
    third = store.publish_group_versions(SOURCE, M3, ["C1"], t2)
    assert (third["C1"].version_id, third["C1"].bumped, third["C1"].last_updated) == ("2", True, t2)
    # re-publishing an older month with its unchanged content returns its version as it was
    old = store.publish_group_versions(SOURCE, M2, ["C1"], t2)
    assert (old["C1"].version_id, old["C1"].bumped) == ("1", False)
    # a correction of month 3 changes C1's content: new version
    corrected = month3().with_columns(
        pl.when(pl.col("member_id") == "M1").then(pl.lit("F")).otherwise(pl.col("given_name")).alias("given_name")
    )
    record(store, M3, corrected)
    bumped = store.publish_group_versions(SOURCE, M3, ["C1"], t2)
    assert (bumped["C1"].version_id, bumped["C1"].bumped) == ("3", True)
    log = store.group_versions(SOURCE, "C1")
    assert log.select("month", "version_id").rows() == [(M2, "1"), (M3, "2"), (M3, "3")]


def test_group_versions_with_caller_hashes(store: HistoryStore) -> None:
    t = datetime(2026, 4, 2, tzinfo=UTC)
    a = store.publish_group_versions(SOURCE, M3, ["C1"], t, content_hashes={"C1": "aaa"})
    b = store.publish_group_versions(SOURCE, M3, ["C1"], t, content_hashes={"C1": "aaa"})
    c = store.publish_group_versions(SOURCE, M3, ["C1"], t, content_hashes={"C1": "bbb"})
    assert [a["C1"].version_id, b["C1"].version_id, c["C1"].version_id] == ["1", "1", "2"]
    assert c["C1"].content_hash == "bbb"


def test_finalize_sets_status_and_bumps(store: HistoryStore) -> None:
    t = datetime(2026, 4, 2, tzinfo=UTC)
    before = store.publish_group_versions(SOURCE, M3, ["C1", "C2"], t, content_hashes={"C1": "h1", "C2": "h2"})
    store.set_list_status(SOURCE, "C1", "final")
    assert store.list_status(SOURCE, "C1", M3) == "final"
    assert store.list_status(SOURCE, "C2", M3) == "draft"
    assert store.list_status(SOURCE, "C1", M2) == "draft"
    after = store.publish_group_versions(SOURCE, M3, ["C1", "C2"], t, content_hashes={"C1": "h1", "C2": "h2"})
    assert (before["C1"].version_id, after["C1"].version_id, after["C1"].status) == ("1", "2", "final")
    assert (after["C2"].version_id, after["C2"].bumped) == ("1", False)
    with pytest.raises(AtrError, match="list status must be one of draft, open, final"):
        store.set_list_status(SOURCE, "C1", "closed")
    with pytest.raises(AtrError, match="contract 'C9' has no rows"):
        store.set_list_status(SOURCE, "C9", "final")


def test_new_month_starts_at_default_status(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "status.duckdb", default_status="open")
    record(s, M1)
    s.set_list_status(SOURCE, "C1", "final")
    record(s, M2)
    assert (s.list_status(SOURCE, "C1", M1), s.list_status(SOURCE, "C1", M2)) == ("final", "open")
    with pytest.raises(AtrError, match="default list status"):
        HistoryStore(tmp_path / "status.duckdb", default_status="final")


def test_default_status_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATR_LIST_STATUS", "open")
    s = HistoryStore(tmp_path / "env.duckdb")
    record(s, M1)
    assert s.list_status(SOURCE, "C1", M1) == "open"


def test_trends_exact(store: HistoryStore) -> None:
    t = store.trends(SOURCE)
    assert t.schema == TREND_SCHEMA
    cols = ["contract_id", "month", "entries", "members", "new", "changed", "nochange", "dropped", "provider_switches"]
    assert t.select(cols).rows() == [
        ("C1", M1, 7, 6, 7, 0, 0, 0, 0),
        ("C1", M2, 6, 6, 2, 2, 2, 3, 2),
        ("C1", M3, 7, 7, 1, 1, 5, 0, 0),
        ("C2", M1, 3, 3, 3, 0, 0, 0, 0),
        ("C2", M2, 2, 2, 0, 0, 2, 1, 0),
        ("C2", M3, 1, 1, 1, 0, 0, 2, 0),
    ]
    assert t["previous_month"].to_list() == [None, M1, M2, None, M1, M2]
    assert store.trends(SOURCE, "C2").height == 3
    assert store.trends("nobody").height == 0
