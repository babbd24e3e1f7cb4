"""Where history stores come from (history/stores.py): one file per source, and the split of a
single pre-format-3 history file, including a split interrupted halfway and run again."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from test_history_cases import M1, M2, MONTHS, SOURCE, lineage_for

from atr_pipeline.canonical import CANONICAL_SCHEMA
from atr_pipeline.errors import AtrError
from atr_pipeline.history.adjustments import ACTION_COLUMN, REMOVE
from atr_pipeline.history.store import HistoryStore, ListRequest
from atr_pipeline.history.stores import read_only_history_store, recorded_sources, split_legacy_history

OTHER = "other_source"


def _as(source: str, month) -> pl.DataFrame:
    return MONTHS[month]().with_columns(pl.lit(source).alias("source_id"))


def _legacy(path: Path) -> HistoryStore:
    """A single history file holding two sources, two months each, with versions and a status."""
    store = HistoryStore(path)
    for source in (SOURCE, OTHER):
        for month in (M1, M2):
            df = _as(source, month)
            store.record_snapshot(df, source_id=source, month=month, lineage=lineage_for(df))
        store.publish_group_versions(source, M2, ["C1", "C2"], datetime(2026, 3, 1, tzinfo=UTC))
    store.set_list_status(OTHER, "C1", "final")
    # A provider's request on OTHER's list, with the entries it removes (request_rows has no
    # source of its own beyond the rows' columns: it follows its request).
    rows = store.member_list(OTHER, M2).head(2).select(*CANONICAL_SCHEMA.names()).with_columns(pl.lit(REMOVE).alias(ACTION_COLUMN))
    store.record_request(ListRequest("req-1", OTHER, "C1", M2, "g-1", "member-remove", "client-1",
                                     datetime(2026, 3, 2, tzinfo=UTC), "{}", None, "queued", channel="api"), rows)
    return store


def _content(store: HistoryStore, source: str) -> tuple:
    requests = store.list_requests(source)
    return (store.months(source), store.member_list(source, M2), store.group_versions(source),
            store.list_status(source, "C1", M2), store.lineage(source, M2), store.trends(source),
            requests, [store.request_rows(r.request_id) for r in requests])


def _same(a: tuple, b: tuple) -> bool:
    def eq(x, y) -> bool:
        if isinstance(x, list) and x and isinstance(x[0], pl.DataFrame):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y, strict=True))
        return x.equals(y) if isinstance(x, pl.DataFrame) else x == y
    return all(eq(x, y) for x, y in zip(a, b, strict=True))


def test_split_gives_each_source_its_own_file_with_the_same_history(tmp_path: Path) -> None:
    legacy = tmp_path / "history.duckdb"
    store = _legacy(legacy)
    before = {s: _content(store, s) for s in (SOURCE, OTHER)}
    assert split_legacy_history(legacy, tmp_path / "history") == sorted([SOURCE, OTHER])
    assert not legacy.exists()
    for source in (SOURCE, OTHER):
        store = read_only_history_store(tmp_path, source)
        assert store is not None and store.path == tmp_path / "history" / f"{source}.duckdb"
        assert store.sources() == [source]
        assert _same(_content(store, source), before[source])
    assert [len(r) for r in before[OTHER][-1]] == [2] and before[SOURCE][-2] == []  # the request went with its source
    assert recorded_sources(tmp_path) == sorted([SOURCE, OTHER])


def test_a_split_interrupted_halfway_leaves_the_single_file_and_runs_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = tmp_path / "history.duckdb"
    store = _legacy(legacy)
    before = {s: _content(store, s) for s in (SOURCE, OTHER)}
    renames: list[str] = []
    real_replace = Path.replace

    def crash_on_second(self: Path, target):  # the process dies after the first source's rename
        renames.append(self.name)
        if len(renames) == 2:
            raise OSError("simulated crash")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", crash_on_second)
    with pytest.raises(OSError, match="simulated crash"):
        split_legacy_history(legacy, tmp_path / "history")
    monkeypatch.undo()
    assert legacy.exists() and list((tmp_path / "history").glob("*.upgrading"))  # nothing lost, a partial left
    # Until the split completes, readers of the second source still find it in the single file.
    assert read_only_history_store(tmp_path, sorted([SOURCE, OTHER])[1]).path == legacy  # type: ignore[union-attr]
    assert split_legacy_history(legacy, tmp_path / "history") == sorted([SOURCE, OTHER])
    assert not legacy.exists() and not list((tmp_path / "history").glob("*.upgrading*"))
    for source in (SOURCE, OTHER):
        assert _same(_content(read_only_history_store(tmp_path, source), source), before[source])  # type: ignore[arg-type]


def test_a_source_id_naming_another_folder_is_refused(tmp_path: Path) -> None:
    from atr_pipeline.config import load_settings
    from atr_pipeline.history.stores import history_store

    with pytest.raises(AtrError, match="is not a source id"):
        history_store(load_settings(tmp_path / "home"), "../elsewhere")
    assert read_only_history_store(tmp_path, "../elsewhere") is None
