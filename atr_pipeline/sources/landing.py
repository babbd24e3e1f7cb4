"""Landing: copy one delivered file into ``landing/``, once, atomically, with its sha256.

In:  a stream of bytes (an SFTP download or a local inbox file), its original base name and the
     mapping (``MappingSpec``) whose ``file.pattern`` it matched.
Out: ``LandingOutcome``: ``landed`` with a ``LandedFile`` at
     ``<landing>/<source_id>/<YYYY-MM>/<sha256[:12]>_<original_name>`` (0600, folders 0700; a
     name past 255 bytes is shortened in the middle, the ledger keeps it whole), or
     ``duplicate`` when the same bytes were landed before, under any name.
Refused (``FileRefused``): names that are not plain base names, names the mapping does not
     match, and files whose reporting month cannot be read.

Every landed delivery is recorded in the ``Ledger`` (sqlite at ``<landing>/ledger.sqlite``), its
path relative to ``ATR_HOME`` (the landing folder's parent), so a home moved or restored to
another place still finds its landed files.
The bytes go to a temporary file under ``<landing>/.incoming/`` and reach their final name by
``os.replace`` only when complete, so a reader never sees a partial file, and an interrupted
stream leaves nothing behind; a writer killed outright leaves an unlocked ``.part`` that the
next start removes (``sweep_partials``). A changed file under a name landed before is a new delivery that
``supersedes`` the earlier one (its sha256 is recorded).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from atr_pipeline.errors import FileRefused
from atr_pipeline.fsync import fsync_dir
from atr_pipeline.layouts.files import MappingConflict
from atr_pipeline.layouts.files import match_mapping as files_match_mapping
from atr_pipeline.layouts.spec import MappingSpec, to_strftime
from atr_pipeline.private import private_dir

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite"
INCOMING_DIR = ".incoming"
CHUNK_SIZE = 1 << 20
# A writer holds an flock on its in-flight file for its whole life, so an unlocked one is a dead
# writer's leftover (member data): removed at the next start. The age guards the instant
# between a writer creating its file and locking it.
_STALE_PARTIAL_SECONDS = 5
# Longest file name most file systems take (bytes, not characters).
NAME_MAX = 255
# Names that writers use while a file is still being written; never picked up from an inbox.
IN_FLIGHT_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload")

LedgerStatus = Literal["landed", "processed", "refused"]
_SAFE_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")


@dataclass(frozen=True)
class LandedFile:
    path: Path
    original_name: str
    source_id: str
    month: date
    sha256: str
    size: int
    received_at: datetime
    supersedes: str | None  # sha256 of the earlier delivery under the same name, if any


@dataclass(frozen=True)
class LandingOutcome:
    status: Literal["landed", "duplicate"]
    file: LandedFile | None
    duplicate_of: str | None  # original name of the earlier identical delivery


@dataclass(frozen=True)
class LedgerEntry:
    sha256: str
    original_name: str
    source_id: str
    month: date
    size: int
    received_at: datetime
    path: Path
    status: LedgerStatus
    supersedes: str | None
    reason: str | None  # why a file was refused (no PHI: rule names and counts)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS landed (
    sha256        TEXT PRIMARY KEY,
    original_name TEXT NOT NULL,
    source_id     TEXT NOT NULL,
    month         TEXT NOT NULL,
    size          INTEGER NOT NULL,
    received_at   TEXT NOT NULL,
    path          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('landed', 'processed', 'refused')),
    supersedes    TEXT,
    reason        TEXT,
    seq           INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS landed_by_name ON landed (source_id, original_name, seq);
CREATE TABLE IF NOT EXISTS remote_files (
    source_id     TEXT NOT NULL,
    name          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    mtime         INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    PRIMARY KEY (source_id, name, size, mtime)
);
CREATE TABLE IF NOT EXISTS duplicates (
    sha256        TEXT NOT NULL,
    original_name TEXT NOT NULL,
    source_id     TEXT NOT NULL,
    received_at   TEXT NOT NULL
);
"""


def _ensure_wal(con: sqlite3.Connection, timeout: float = 60.0) -> None:
    """Put the ledger in WAL mode (persistent in the file, so usually already set).

    Switching a new file to WAL while another process has it open fails with "database is
    locked" at once, without the busy handler: two runs starting on a fresh ATR_HOME hit it.
    Retry until this or the other process has switched it.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            if con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
            failure = "journal mode stayed as it was"
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            failure = str(exc)
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"could not put the landing ledger in WAL mode: {failure}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Ledger:
    """Every landed delivery: sha256, name, size, time, source, month and status.

    sqlite3 with WAL and ``BEGIN IMMEDIATE`` around check-then-insert, so two processes landing
    the same bytes at once land them once. Connections are opened per call: a Ledger can be
    shared by threads and survives forks.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        private_dir(self.path.parent)  # 0700 whatever the umask; the ledger and its WAL follow restrict_umask
        with closing(self._connect()) as con:
            con.executescript(_SCHEMA)
        os.chmod(self.path, 0o600)

    @classmethod
    def for_landing(cls, landing_dir: Path) -> Ledger:
        return cls(Path(landing_dir) / LEDGER_NAME)

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        con.execute("PRAGMA busy_timeout=60000")
        _ensure_wal(con)
        return con

    @property
    def home(self) -> Path:
        """ATR_HOME: stored paths are relative to it (the ledger lives in ``<home>/landing/``)."""
        return self.path.parent.parent

    def stored_path(self, path: Path) -> str:
        """How a landed file's path is stored: relative to the home when inside it."""
        try:
            return Path(path).relative_to(self.home).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> Path:
        """The landed file a stored path names, in this home wherever it now is.

        Releases before home format 2 stored absolute paths; such a path is read as the same
        ``<source>/<month>/<name>`` under this home's landing folder when that file exists.
        """
        path = Path(stored)
        if not path.is_absolute():
            return self.home / path
        here = self.path.parent.joinpath(*path.parts[-3:])
        return here if here.exists() or not path.exists() else path

    def _entry(self, row: tuple) -> LedgerEntry:
        sha, name, source, month, size, received, path, status, supersedes, reason = row
        return LedgerEntry(sha, name, source, date.fromisoformat(month), size,
                           datetime.fromisoformat(received), self.resolve(path), status, supersedes, reason)

    _COLUMNS = "sha256, original_name, source_id, month, size, received_at, path, status, supersedes, reason"

    def get(self, sha256: str) -> LedgerEntry | None:
        with closing(self._connect()) as con:
            row = con.execute(f"SELECT {self._COLUMNS} FROM landed WHERE sha256 = ?", (sha256,)).fetchone()
        return self._entry(row) if row else None

    def latest_by_name(self, source_id: str, original_name: str) -> LedgerEntry | None:
        with closing(self._connect()) as con:
            row = con.execute(
                f"SELECT {self._COLUMNS} FROM landed WHERE source_id = ? AND original_name = ? ORDER BY seq DESC LIMIT 1",
                (source_id, original_name),
            ).fetchone()
        return self._entry(row) if row else None

    def entries(self, status: LedgerStatus | None = None) -> list[LedgerEntry]:
        """All landed deliveries in landing order."""
        sql = f"SELECT {self._COLUMNS} FROM landed"
        args: tuple = ()
        if status:
            sql += " WHERE status = ?"
            args = (status,)
        with closing(self._connect()) as con:
            rows = con.execute(sql + " ORDER BY seq", args).fetchall()
        return [self._entry(r) for r in rows]

    def duplicates(self) -> list[tuple[str, str, str]]:
        """(sha256, name the duplicate arrived under, source_id) of every refused re-delivery."""
        with closing(self._connect()) as con:
            return con.execute("SELECT sha256, original_name, source_id FROM duplicates ORDER BY rowid").fetchall()

    def remember_remote(self, source_id: str, name: str, size: int, mtime: int, sha256: str) -> None:
        """Record that the remote file (name, size, mtime) was fetched and had these bytes."""
        with closing(self._connect()) as con:
            con.execute("INSERT OR REPLACE INTO remote_files VALUES (?, ?, ?, ?, ?)", (source_id, name, size, mtime, sha256))

    def remote_sha(self, source_id: str, name: str, size: int, mtime: int) -> str | None:
        """sha256 of a remote file fetched before with exactly this name, size and mtime; else None.

        ``leave`` mode uses it to skip what it already holds instead of downloading it again.
        """
        with closing(self._connect()) as con:
            row = con.execute("SELECT sha256 FROM remote_files WHERE source_id = ? AND name = ? AND size = ? AND mtime = ?",
                              (source_id, name, size, mtime)).fetchone()
        return row[0] if row else None

    def mark(self, sha256: str, status: LedgerStatus, reason: str | None = None) -> None:
        """Move a delivery to ``processed`` or ``refused`` (reason: a rule name, never PHI)."""
        with closing(self._connect()) as con:
            cur = con.execute("UPDATE landed SET status = ?, reason = ? WHERE sha256 = ?", (status, reason, sha256))
            if cur.rowcount != 1:
                raise KeyError(f"no landed file with sha256 {sha256}")


def _ensure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkdir's mode is filtered by the umask; PHI folders must be 0700 whatever it is.
    os.chmod(path, 0o700)


def check_name(original_name: str) -> None:
    """Refuse anything that is not a plain base name (a server could list ``../x``)."""
    if original_name in (".", "..") or not _SAFE_NAME.match(original_name):
        raise FileRefused("<unnamed>" if not original_name else repr(original_name)[:80], "file_name",
                          "not a plain file name (path separators or control characters)")


def _month_from_header(first_line: bytes, spec: MappingSpec, name: str) -> date:
    """The reporting month from the header record, for mappings with ``month_from: header``."""
    records = spec.records
    assert records is not None and records.header is not None and spec.file.month_header_field
    text = first_line.decode(spec.file.encoding, errors="strict").rstrip("\r\n")
    if text.startswith("\ufeff"):
        text = text[1:]

    def value(pos) -> str:
        if pos.is_fixed:
            return text[pos.start - 1: pos.start - 1 + pos.length]
        cells = next(csv.reader([text], delimiter=spec.format.delimiter or ",", quotechar=spec.format.quote or '"',
                                quoting=csv.QUOTE_MINIMAL if spec.format.quote else csv.QUOTE_NONE))
        if not isinstance(pos.column, int) or pos.column > len(cells):
            raise ValueError("header column out of range")
        return cells[pos.column - 1]

    try:
        if value(records.type_field).strip() != records.header.code:
            raise FileRefused(name, "month", "the first line is not a header record; its month cannot be read", 1)
        raw = value(records.header.fields[spec.file.month_header_field]).strip()
        parsed = datetime.strptime(raw, to_strftime(spec.file.month_format))
    except FileRefused:
        raise
    except (ValueError, UnicodeDecodeError, StopIteration):
        raise FileRefused(name, "month", f"header field {spec.file.month_header_field!r} is not a month "
                          f"in format {spec.file.month_format}", 1) from None
    return date(parsed.year, parsed.month, 1)


def short_name(prefix: str, name: str) -> str:
    """``<prefix>_<name>``, cut in the middle of ``name`` so it fits NAME_MAX bytes (UTF-8).

    Keeps the name's end (its extension) and never splits a character; the full name stays in
    the ledger.
    """
    full = f"{prefix}_{name}"
    if len(full.encode()) <= NAME_MAX:
        return full
    budget = NAME_MAX - len(prefix.encode()) - 2  # "_" and the "~" marking the cut
    tail = name[-32:]
    while len(tail.encode()) > budget // 2:
        tail = tail[1:]
    head = name
    while len(head.encode()) + len(tail.encode()) > budget:
        head = head[:-1]
    return f"{prefix}_{head}~{tail}"


def sweep_partials(landing_dir: Path) -> int:
    """Remove in-flight files left by killed writers (no flock held); returns how many."""
    incoming = Path(landing_dir) / INCOMING_DIR
    if not incoming.is_dir():
        return 0
    return _sweep_stale_partials(incoming)


def _sweep_stale_partials(incoming: Path) -> int:
    cutoff = time.time() - _STALE_PARTIAL_SECONDS
    removed = 0
    for p in incoming.glob("*.part"):
        try:
            if p.stat().st_mtime >= cutoff:
                continue
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer holds it
        try:
            p.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d partial download(s) left by a stopped process in %s", removed, incoming)
    return removed


def land_stream(
    chunks: Iterable[bytes],
    *,
    original_name: str,
    spec: MappingSpec,
    landing_dir: Path,
    ledger: Ledger,
    received_at: datetime | None = None,
) -> LandingOutcome:
    """Stream ``chunks`` into landing; see the module docstring for the guarantees.

    If ``chunks`` raises (a dropped connection), the temporary file is removed and the error
    propagates: nothing is landed and nothing is recorded.
    """
    check_name(original_name)
    if not spec.file.match(original_name):
        raise FileRefused(original_name, "file_name", f"does not match the file pattern of mapping {spec.source_id!r}")
    month = spec.month_from_name(original_name) if spec.file.month_from == "filename" else None
    if spec.file.month_from == "filename" and month is None:
        raise FileRefused(original_name, "month", "the month in the file name is not a valid month")
    received_at = received_at or datetime.now(UTC)

    landing_dir = Path(landing_dir)
    _ensure_dir(landing_dir)
    incoming = landing_dir / INCOMING_DIR
    _ensure_dir(incoming)
    _sweep_stale_partials(incoming)
    tmp = incoming / f"{uuid.uuid4().hex}.part"

    digest = hashlib.sha256()
    size = 0
    first_line = b""
    lock_fd: int | None = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        # Held on its own descriptor until the file is committed or removed: tells the sweep of
        # another process that this writer is alive.
        lock_fd = os.open(tmp, os.O_RDONLY)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                if not chunk:
                    continue
                if month is None and b"\n" not in first_line and len(first_line) < 1 << 16:
                    first_line += chunk[: (1 << 16) - len(first_line)]
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if month is None:
            month = _month_from_header(first_line.split(b"\n", 1)[0], spec, original_name)
        return _commit(tmp, sha=sha, size=size, month=month, original_name=original_name, spec=spec,
                       landing_dir=landing_dir, ledger=ledger, received_at=received_at)
    finally:
        # On success _commit has moved or removed it; on any failure nothing partial remains.
        tmp.unlink(missing_ok=True)
        if lock_fd is not None:
            os.close(lock_fd)


def _commit(tmp: Path, *, sha: str, size: int, month: date, original_name: str, spec: MappingSpec,
            landing_dir: Path, ledger: Ledger, received_at: datetime) -> LandingOutcome:
    final_dir = landing_dir / spec.source_id / f"{month:%Y-%m}"
    final = final_dir / short_name(sha[:12], original_name)
    con = ledger._connect()
    try:
        # IMMEDIATE takes the write lock before the duplicate check: two processes landing the
        # same bytes serialise here and the second sees the first's row.
        con.execute("BEGIN IMMEDIATE")
        row = con.execute("SELECT original_name FROM landed WHERE sha256 = ?", (sha,)).fetchone()
        if row:
            con.execute("INSERT INTO duplicates VALUES (?, ?, ?, ?)",
                        (sha, original_name, spec.source_id, received_at.isoformat()))
            con.execute("COMMIT")
            log.info("duplicate delivery: %s has the same sha256 as %s; not landed again", original_name, row[0])
            return LandingOutcome("duplicate", None, row[0])
        prev = con.execute(
            "SELECT sha256 FROM landed WHERE source_id = ? AND original_name = ? ORDER BY seq DESC LIMIT 1",
            (spec.source_id, original_name),
        ).fetchone()
        supersedes = prev[0] if prev else None
        seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM landed").fetchone()[0]
        con.execute(
            "INSERT INTO landed VALUES (?, ?, ?, ?, ?, ?, ?, 'landed', ?, NULL, ?)",
            (sha, original_name, spec.source_id, month.isoformat(), size, received_at.isoformat(),
             ledger.stored_path(final), supersedes, seq),
        )
        _ensure_dir(landing_dir / spec.source_id)
        _ensure_dir(final_dir)
        os.replace(tmp, final)
        fsync_dir(final_dir)
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    landed = LandedFile(final, original_name, spec.source_id, month, sha, size, received_at, supersedes)
    log.info("landed %s for %s %s: %d bytes, sha256 %s%s", original_name, spec.source_id, f"{month:%Y-%m}",
             size, sha[:12], f", supersedes {supersedes[:12]}" if supersedes else "")
    return LandingOutcome("landed", landed, None)


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            yield chunk


def land_local(path: Path, *, spec: MappingSpec, landing_dir: Path, ledger: Ledger) -> LandingOutcome:
    """Land a file from a local inbox. The inbox file is left where it is."""
    path = Path(path)
    return land_stream(_read_chunks(path), original_name=path.name, spec=spec, landing_dir=landing_dir, ledger=ledger)


def is_in_flight(name: str) -> bool:
    """Hidden names and writer temp suffixes: files still being written, never picked up."""
    return name.startswith(".") or name.lower().endswith(IN_FLIGHT_SUFFIXES)


def match_mapping(name: str, mappings: dict[str, MappingSpec]) -> MappingSpec | None:
    """The one mapping whose file pattern matches ``name``; None when none or several do.

    The matching is ``layouts.files.match_mapping``'s; the inbox's policy on a conflict is to
    log it and leave the file unmatched (where it is), so one bad pattern never stops a scan.
    """
    try:
        return files_match_mapping(name, mappings)
    except MappingConflict as exc:
        log.warning("%s; left unmatched", exc)
        return None


def scan_inbox(inbox: Path, mappings: dict[str, MappingSpec]) -> tuple[list[tuple[Path, MappingSpec]], list[Path]]:
    """(matched files sorted by name, unmatched files); unmatched files are left where they are.

    Sub-folders, hidden files and in-flight names (``.part``, ``.tmp``...) are neither.
    """
    matched: list[tuple[Path, MappingSpec]] = []
    unmatched: list[Path] = []
    inbox = Path(inbox)
    if not inbox.is_dir():
        return matched, unmatched
    for path in sorted(inbox.iterdir(), key=lambda p: p.name):
        if not path.is_file() or is_in_flight(path.name):
            continue
        spec = match_mapping(path.name, mappings)
        if spec is None:
            unmatched.append(path)
        else:
            matched.append((path, spec))
    return matched, unmatched
