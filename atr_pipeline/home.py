"""The format of an ``ATR_HOME`` as a whole: checked at start, upgraded after a backup.

In: ``Settings`` (the home, its ledger and history paths).
Out: a home in ``HOME_FORMAT``; the format number is kept in ``<home>/home_format``.
Refused (``NewerHome``): a home written by a newer release than this code knows.

Formats:
  1. the release up to commit bf5ae19: no ``home_format`` file, the ledger stores absolute paths,
     history schema 1.
  2. the ledger stores paths relative to the home (a home may be moved or restored elsewhere);
     history schema 2 (``published_builds``: month-ordered rebuilds).
  3. history in one DuckDB file per source (``history/<source>.duckdb``) instead of one
     ``history.duckdb`` for all, so partitions of different sources never wait for one writer
     (history/stores.py). The upgrade splits the old file by ``source_id`` and deletes it.

An older home is upgraded on first use, under ``<home>/locks/home.lock``, after a consistent
copy of the ledger (sqlite's backup API) and of the history (every file checkpointed, copied under
its writer lock) is written to ``<home>/backups/<UTC time>-format-<old>/``. Landed files, rejects
and exports are not copied: no upgrade changes them. See docs/OPERATIONS.md.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path

from atr_pipeline.config import Settings
from atr_pipeline.errors import AtrError

log = logging.getLogger(__name__)

HOME_FORMAT = 3
FORMAT_FILE = "home_format"
BACKUPS_DIR = "backups"
_LOCK_TIMEOUT = 600.0

_checked: set[Path] = set()  # homes already checked by this process


class NewerHome(AtrError):
    """The home was written by a newer release."""


def stored_format(home: Path, legacy_history: Path | None = None) -> int | None:
    """The home's format: the number in ``home_format``; 1 for a home with state but no file;
    None for a home with no state yet."""
    marker = Path(home) / FORMAT_FILE
    if marker.is_file():
        text = marker.read_text().strip()
        if not text.isdigit():
            raise AtrError(f"{marker}: not a home format number ({text[:20]!r})")
        return int(text)
    # No marker: format 1 when something in it is as the previous release wrote it. An empty
    # ledger, or a history store a command of this release created, is no old state.
    legacy = legacy_history or Path(home) / "history.duckdb"
    if _absolute_ledger_paths(Path(home) / "landing" / "ledger.sqlite") or _history_schema(legacy) == 1:
        return 1
    # A single history file of schema 2 without the marker (e.g. a copied store): format 2, to be split.
    return 2 if legacy.exists() else None


def _absolute_ledger_paths(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with closing(sqlite3.connect(ledger, timeout=60)) as con:
        try:
            return con.execute("SELECT count(*) FROM landed WHERE path LIKE '/%'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def _history_schema(db_path: Path) -> int | None:
    if not db_path.exists():
        return None
    import duckdb

    from atr_pipeline.history.locking import file_lock, lock_path_for
    from atr_pipeline.history.store import stored_schema_version

    with file_lock(lock_path_for(db_path), exclusive=False, timeout=_LOCK_TIMEOUT):
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            return stored_schema_version(con)
        finally:
            con.close()


def ensure_home(settings: Settings) -> None:
    """Refuse a newer home; upgrade an older one after a backup; mark a new one. Once per process."""
    home = settings.home
    if home in _checked:
        return
    from atr_pipeline.history.locking import LOCKS_DIR, file_lock

    lock = home / LOCKS_DIR / "home.lock"
    lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(lock, exclusive=True, timeout=_LOCK_TIMEOUT, what=f"{home}: another atr process is upgrading this home"):
        found = stored_format(home, settings.legacy_history_path)
        if found is not None and found > HOME_FORMAT:
            raise NewerHome(
                f"ATR_HOME {home} has format {found}, written by a newer release of atr than this one "
                f"(which knows formats up to {HOME_FORMAT}); upgrade atr, or restore a backup taken before the upgrade"
            )
        if found is not None and found < HOME_FORMAT:
            backup = backup_home(settings, label=f"format-{found}")
            log.warning("upgrading ATR_HOME %s from format %s to %s; backup in %s", home, found, HOME_FORMAT, backup)
            migrate(settings, found)
        if found != HOME_FORMAT:
            _write_format(home)
    _checked.add(home)


def _write_format(home: Path) -> None:
    tmp = home / f".{FORMAT_FILE}.tmp"
    tmp.write_text(f"{HOME_FORMAT}\n")
    tmp.replace(home / FORMAT_FILE)


def migrate(settings: Settings, found: int) -> None:
    """Bring a home of format ``found`` to ``HOME_FORMAT`` (the caller holds the home lock)."""
    legacy = settings.legacy_history_path
    if found < 2:
        _relative_ledger_paths(settings)
        if legacy.exists():
            from atr_pipeline.history.store import HistoryStore

            store = HistoryStore(legacy)
            store.upgrade()  # adds published_builds (schema 2)
            # The old release's exports: known from now on, so a late earlier month rebuilds them.
            for export in sorted(settings.exports_dir.glob("*/*/manifest.json")):
                month_dir = export.parent
                year, _, month = month_dir.name.partition("-")
                if year.isdigit() and month.isdigit():
                    store.adopt_published(month_dir.parent.name, date(int(year), int(month), 1))
    if found < 3:
        from atr_pipeline.history.stores import split_legacy_history

        sources = split_legacy_history(legacy, settings.history_dir, lock_timeout=_LOCK_TIMEOUT)
        log.warning("history split into one file per source under %s (%d source(s))", settings.history_dir, len(sources))


def _relative_ledger_paths(settings: Settings) -> None:
    """Rewrite the ledger's absolute landed paths as ``landing/<source>/<month>/<name>``."""
    ledger = settings.landing_dir / "ledger.sqlite"
    if not ledger.exists():
        return
    with closing(sqlite3.connect(ledger, timeout=60, isolation_level=None)) as con:
        con.execute("BEGIN IMMEDIATE")
        rows = con.execute("SELECT sha256, path FROM landed").fetchall()
        for sha, stored in rows:
            path = Path(stored)
            if path.is_absolute() and len(path.parts) >= 4 and path.parts[-4] == "landing":
                con.execute("UPDATE landed SET path = ? WHERE sha256 = ?", (Path("landing", *path.parts[-3:]).as_posix(), sha))
        con.execute("COMMIT")


def backup_home(settings: Settings, *, label: str) -> Path:
    """Consistent copies of the ledger and the history store under ``<home>/backups/``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = settings.home / BACKUPS_DIR / f"{stamp}-{label}"
    folder.mkdir(parents=True, mode=0o700)
    (settings.home / BACKUPS_DIR).chmod(0o700)
    ledger = settings.landing_dir / "ledger.sqlite"
    if ledger.exists():
        (folder / "landing").mkdir(mode=0o700)
        # sqlite's online backup: a consistent copy even while another process writes (WAL).
        with closing(sqlite3.connect(ledger, timeout=60)) as src, closing(sqlite3.connect(folder / "landing" / "ledger.sqlite")) as dst:
            src.backup(dst)
    from atr_pipeline.history.stores import history_files

    legacy = settings.legacy_history_path
    if legacy.exists():
        backup_history(legacy, folder / legacy.name)
    files = history_files(settings.home)
    if files:
        (folder / "history").mkdir(mode=0o700)
    for path in files:
        backup_history(path, folder / "history" / path.name)
    for copy in folder.rglob("*"):
        copy.chmod(0o700 if copy.is_dir() else 0o600)
    return folder


def backup_history(db_path: Path, dest: Path) -> None:
    """Copy a DuckDB history file consistently: checkpoint, then copy under the writer lock."""
    import duckdb

    from atr_pipeline.history.locking import file_lock, lock_path_for

    with file_lock(lock_path_for(db_path), exclusive=True, timeout=_LOCK_TIMEOUT):
        con = duckdb.connect(str(db_path))
        try:
            con.execute("CHECKPOINT")  # folds the WAL into the file, so the file alone is complete
        finally:
            con.close()
        shutil.copy2(db_path, dest)
