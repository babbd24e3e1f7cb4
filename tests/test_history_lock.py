"""One writer at a time: the flock on <db>.lock, exercised by real separate processes.

History is one file per source (history/stores.py): a process holding one source's locks keeps
that source's writers waiting, and another source records, reads and diffs meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from test_history_cases import M1, M2, M3, MONTHS, SOURCE, lineage_for, month1

from atr_pipeline.config import load_settings
from atr_pipeline.history.locking import HistoryLocked, source_lock
from atr_pipeline.history.store import HistoryStore
from atr_pipeline.history.stores import history_store

TESTS_DIR = Path(__file__).parent

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from atr_pipeline.history.store import HistoryStore
    store = HistoryStore(Path(sys.argv[1]))
    with store.write_lock():
        print("locked", flush=True)
        sys.stdin.readline()  # hold the lock until the parent says so
    print("released", flush=True)
    """
)

# A partition of one source in the middle of its history step: both locks it holds there.
SOURCE_HOLDER = textwrap.dedent(
    """
    import sys
    from atr_pipeline.config import load_settings
    from atr_pipeline.history.locking import source_lock
    from atr_pipeline.history.stores import history_store
    settings = load_settings(sys.argv[1])
    store = history_store(settings, sys.argv[2])
    with source_lock(settings.home, sys.argv[2]), store.write_lock():
        print("locked", flush=True)
        sys.stdin.readline()
    """
)

WRITER = textwrap.dedent(
    """
    import sys
    from datetime import date
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_history_cases import MONTHS, SOURCE, lineage_for
    from atr_pipeline.history.store import HistoryStore
    month = date.fromisoformat(sys.argv[2])
    df = MONTHS[month]()
    store = HistoryStore(Path(sys.argv[1]), lock_timeout=120)
    for _ in range(5):  # several transactions each, so the two writers interleave
        store.record_snapshot(df, source_id=SOURCE, month=month, lineage=lineage_for(df))
    print("ok", flush=True)
    """
)


def test_second_writer_waits_then_times_out(tmp_path: Path) -> None:
    db = tmp_path / "history.duckdb"
    HistoryStore(db)  # create the schema first
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        blocked = HistoryStore(db, lock_timeout=0.3)
        df = month1()
        with pytest.raises(HistoryLocked, match="write lock not obtained within 0.3 s"):
            blocked.record_snapshot(df, source_id=SOURCE, month=M1, lineage=lineage_for(df))
        with pytest.raises(HistoryLocked, match="read lock not obtained"):
            blocked.months(SOURCE)  # readers wait for the writer too (DuckDB would refuse to open)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.wait(timeout=30)
    blocked.record_snapshot(df, source_id=SOURCE, month=M1, lineage=lineage_for(df))
    assert blocked.months(SOURCE) == [M1]


def test_two_writer_processes_are_serialised(tmp_path: Path) -> None:
    db = tmp_path / "history.duckdb"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), month.isoformat(), str(TESTS_DIR)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for month in (M2, M3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, results, strict=True)] == [(0, "ok"), (0, "ok")], results
    store = HistoryStore(db)
    assert store.months(SOURCE) == [M2, M3]
    assert store.snapshot(SOURCE, M2).height == 8
    assert store.snapshot(SOURCE, M3).height == 8


def test_another_source_records_while_one_source_holds_its_write_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATR_ID_KEY", "test-key")
    monkeypatch.delenv("ATR_HISTORY_DIR", raising=False)
    home, other = tmp_path / "home", "other_source"
    settings = load_settings(home)
    df = month1()
    theirs = df.with_columns(pl.lit(other).alias("source_id"))
    holder = subprocess.Popen([sys.executable, "-c", SOURCE_HOLDER, str(home), SOURCE],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        # The held source's writers wait (here: give up after 0.3 s)...
        with pytest.raises(HistoryLocked, match="write lock not obtained within 0.3 s"):
            history_store(settings, SOURCE, lock_timeout=0.3).record_snapshot(df, source_id=SOURCE, month=M1, lineage=lineage_for(df))
        # ...while another source takes its own locks and records, reads and diffs two months meanwhile.
        store = history_store(settings, other, lock_timeout=0.3)
        with source_lock(home, other, timeout=0.3):
            store.record_snapshot(theirs, source_id=other, month=M1, lineage=lineage_for(theirs))
            m2 = MONTHS[M2]().with_columns(pl.lit(other).alias("source_id"))
            store.record_snapshot(m2, source_id=other, month=M2, lineage=lineage_for(m2))
        assert store.months(other) == [M1, M2]
        assert store.member_list(other, M2).height >= m2.height
        assert holder.poll() is None  # the holder still held its locks all along
        holder.stdin.write("\n")
        holder.stdin.flush()
    finally:
        holder.wait(timeout=30)
    assert sorted(p.name for p in settings.history_dir.glob("*.duckdb")) == sorted([f"{other}.duckdb", f"{SOURCE}.duckdb"])
