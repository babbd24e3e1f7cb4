"""Where history stores come from: one DuckDB file per source, ``ATR_HOME/history/<source>.duckdb``.

In: ``Settings`` (or an ATR_HOME) and a source id.
Out: that source's ``HistoryStore`` (``history_store``: created on first use, after the home's
format was checked and upgraded; ``read_only_history_store``: creates nothing), the sources that
have history (``recorded_sources``), and the split of a pre-format-3 single history file into
per-source files (``split_legacy_history``, run by home.py's upgrade).
Refused (``AtrError``): a source id that is not a plain file name; a legacy table that has no
``source_id`` column (it could not be split).

Why a file per source: DuckDB lets one process write a file, and while it writes no other
process can even read it. With one file for every source, partitions of different sources (separate
Dagster runs, separate processes) queued on one writer lock. Every ``HistoryStore`` method takes a
``source_id`` and reads or writes only that source's rows, so the split changes no query: months
of one source still share a file and its locks (they must run in month order anyway), and other
sources never wait for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atr_pipeline.config import Settings, history_dir_for, legacy_history_path_for
from atr_pipeline.errors import AtrError
from atr_pipeline.history.store import HistoryStore

SUFFIX = ".duckdb"
_UPGRADING = ".upgrading"


def _file_name(source_id: str) -> str:
    # Source ids come from mapping file names (layouts/spec.py allows [a-z0-9_]); this only keeps
    # an id typed on a command line from naming a file outside the history folder.
    if not source_id or source_id.startswith(".") or Path(source_id).name != source_id or os.sep in source_id:
        raise AtrError(f"{source_id!r} is not a source id (a mapping's file name, e.g. acme_commercial)")
    return source_id + SUFFIX


def history_store(settings: Settings, source_id: str, *, create: bool = True, **options: Any) -> HistoryStore:
    """The writable history of ``source_id`` (``options`` go to ``HistoryStore``).

    The home is checked first (``home.ensure_home``): an older home is upgraded (its single
    history file split) before any per-source file is created beside it. With ``create=False`` a
    source without history is refused (``AtrError``) instead of getting an empty file.
    """
    from atr_pipeline.home import ensure_home
    from atr_pipeline.private import private_dir

    name = _file_name(source_id)
    ensure_home(settings)
    path = settings.history_dir / name
    if not create and not path.exists():
        known = recorded_sources(settings.home)
        raise AtrError(f"source {source_id!r} has no history in {settings.history_dir}"
                       + (f"; sources with history: {', '.join(known)}" if known else "; nothing is recorded yet (run `atr run` first)"))
    private_dir(settings.history_dir)
    return HistoryStore(path, **options)


def read_only_history_store(home: Path, source_id: str) -> HistoryStore | None:
    """``source_id``'s history opened read-only (creates nothing), or None when none is recorded.

    A home not upgraded yet (written before format 3, e.g. a read-only copy) is read from its
    single history file: that file holds every source, and the store's queries select one.
    """
    try:
        path = history_dir_for(home) / _file_name(source_id)
    except AtrError:
        return None
    if path.exists():
        return HistoryStore(path, read_only=True)
    legacy = legacy_history_path_for(home)
    return HistoryStore(legacy, read_only=True) if legacy.exists() else None


def recorded_sources(home: Path) -> list[str]:
    """Sources with a history file (and, in a home not upgraded yet, those of its single file)."""
    found = {p.name[: -len(SUFFIX)] for p in history_dir_for(home).glob(f"*{SUFFIX}")}
    legacy = legacy_history_path_for(home)
    if legacy.exists():
        found.update(HistoryStore(legacy, read_only=True).sources())
    return sorted(found)


def history_files(home: Path) -> list[Path]:
    """Every per-source history file of the home, by source id."""
    return sorted(history_dir_for(home).glob(f"*{SUFFIX}"))


def split_legacy_history(legacy: Path, history_dir: Path, *, lock_timeout: float = 600.0) -> list[str]:
    """Copy each source's rows of the single ``legacy`` file into ``history_dir/<source>.duckdb``;
    then delete ``legacy`` (the caller backed it up). Returns the sources split out.

    Each file is written under a temporary name and renamed when complete, and ``legacy`` is
    deleted only after the last rename: a crash leaves ``legacy`` whole and the split runs again.
    Rows keep their stored order (``ORDER BY rowid``): reads rely on a month's rows being stored
    in file line order. Every table of the current schema is split by its ``source_id`` column, so
    a table added later is carried over without a change here.
    """
    import duckdb

    from atr_pipeline.history.locking import file_lock, lock_path_for
    from atr_pipeline.private import private_dir, restrict_umask

    if not legacy.exists():
        return []
    private_dir(history_dir)
    restrict_umask()
    HistoryStore(legacy).upgrade()  # an older schema gains the current tables first (takes its own lock)
    with file_lock(lock_path_for(legacy), exclusive=True, timeout=lock_timeout):
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET threads = 1")  # one thread keeps each INSERT in scan (rowid) order
            con.execute(f"ATTACH '{_sql_text(legacy)}' AS legacy (READ_ONLY)")
            columns = _columns(con, "legacy")
            where = {t: _source_rows(t, cols, columns) for t, cols in columns.items() if t != "store_meta"}
            unsplittable = sorted(t for t, condition in where.items() if condition is None)
            if unsplittable:
                raise AtrError(f"{legacy}: table(s) {', '.join(unsplittable)} have no source_id column; they cannot be split per source")
            found: set[str] = set()
            for table, cols in columns.items():
                if table != "store_meta" and "source_id" in cols:
                    found.update(r[0] for r in con.execute(f'SELECT DISTINCT source_id FROM legacy."{table}"').fetchall() if r[0])
            sources = sorted(found)
            for source_id in sources:
                target = history_dir / _file_name(source_id)
                partial = target.with_name(target.name + _UPGRADING)
                for leftover in (partial, partial.with_name(partial.name + ".wal")):
                    leftover.unlink(missing_ok=True)
                HistoryStore(partial)  # creates the current schema, keys included
                con.execute(f"ATTACH '{_sql_text(partial)}' AS target")
                try:
                    for table in _columns(con, "target"):
                        if table in where:
                            con.execute(f'INSERT INTO target."{table}" BY NAME SELECT * FROM legacy."{table}" '
                                        f"WHERE {where[table]} ORDER BY rowid", [source_id])
                    con.execute("CHECKPOINT target")  # the file alone is complete: no WAL to carry along
                finally:
                    con.execute("DETACH target")
                partial.replace(target)
                partial.with_name(partial.name + ".lock").unlink(missing_ok=True)
        finally:
            con.close()
        for path in (legacy, legacy.with_name(legacy.name + ".wal")):
            path.unlink(missing_ok=True)
    return sources


def _source_rows(table: str, columns: set[str], tables: dict[str, set[str]]) -> str | None:
    """The SQL condition picking one source's rows of a legacy table (``?`` is the source id).

    A request's entries belong to its request's source (their canonical columns are the rows as
    sent); other tables carry ``source_id`` themselves. None: the table cannot be split.
    """
    if "request_id" in columns and table != "list_requests" and "source_id" in tables.get("list_requests", set()):
        return "request_id IN (SELECT request_id FROM legacy.list_requests WHERE source_id = ?)"
    return "source_id = ?" if "source_id" in columns else None


def _columns(con: Any, database: str) -> dict[str, set[str]]:
    """table -> column names of an attached database's main schema."""
    out: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = 'main'", [database]
    ).fetchall():
        out.setdefault(table, set()).add(column)
    return out


def _sql_text(path: Path) -> str:
    return str(path).replace("'", "''")
