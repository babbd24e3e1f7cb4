"""The history store: one DuckDB file holding every accepted snapshot, per source x month.

In: accepted canonical rows of one file (one source, one reporting month, any number of
contracts) with the file's lineage (``record_snapshot``).
Out: the ATR member list of any recorded month with change types derived on read
(``member_list``), recorded months, lineage, Group versions and list status, trends.
Refused (``AtrError``): rows missing canonical columns, rows of another source or month,
duplicate member entry keys, unknown list statuses, months that were never recorded.

Only snapshots are stored; change types are computed from two consecutive recorded months
each time they are read. So a corrected re-delivery of a month (``record_snapshot`` again)
changes that month and the next one with no recomputation step, a backfill equals monthly
runs, and months may arrive in any order. "Previous month" is the nearest earlier recorded
month of the same source; a gap month (no delivery) is skipped, not treated as empty.

Tables: ``snapshot_rows`` (canonical columns; key ``source_id, reporting_month``),
``snapshots`` (one row per source x month in effect), ``deliveries`` (every distinct file
recorded for a month), ``group_versions``, ``list_status``, ``published_builds`` (per published
month: the snapshots it was diffed from and its Group versions, to find months to rebuild). Frames go in and out through the
Arrow C stream interface, never row by row (pyarrow is not needed).
One writer at a time: every write connection holds an exclusive ``flock`` on ``<db>.lock``;
reads use read-only connections under a shared lock (see ``locking.py``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from duckdb import ConstantExpression

from atr_pipeline.canonical import CANONICAL_SCHEMA, FIELDS, ISSUES_COLUMN, LINEAGE_FIELDS, MEMBER_ENTRY_KEY
from atr_pipeline.errors import AtrError
from atr_pipeline.history.adjustments import ACTION_COLUMN, ORDER_COLUMN, apply_requests
from atr_pipeline.history.changes import (
    CHANGE_FIELDS,
    CHANGE_TYPE_COLUMN,
    CHANGED,
    DROPPED,
    INACTIVE_COLUMN,
    MEMBER_KEY,
    NEW,
    NOCHANGE,
    PREVIOUS_MONTH_COLUMN,
    compute_changes,
    in_line_order,
    last_day_of_month,
    provider_switches,
)
from atr_pipeline.history.locking import file_lock, lock_path_for, read_only_lock
from atr_pipeline.history.trends import trend_markdown, trend_vega_lite  # re-exported for callers
from atr_pipeline.private import private_file, restrict_umask
from atr_pipeline.systems import LIST_STATUSES

# The status a month's list starts in; `atr finalize` moves it to final.
DEFAULT_STATUS_ENV = "ATR_LIST_STATUS"
DEFAULT_STATUSES = ("draft", "open")
# 2: ``published_builds`` (what each published month was built on) and month-ordered versions.
# 3: ``list_requests`` and ``request_rows`` (providers' member-add / member-remove / confirm).
SCHEMA_VERSION = "3"


class NewerSchema(AtrError):
    """The store was written by a newer release than this code knows."""

_DUCK_TYPES: dict[type[pl.DataType], str] = {
    pl.String: "VARCHAR",
    pl.Date: "DATE",
    pl.Int64: "BIGINT",
    pl.Float64: "DOUBLE",
}

# Columns trends() needs: the key, what decides "changed", and what compute_changes edits.
_TREND_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(("source_id", "reporting_month", "line_number", *MEMBER_ENTRY_KEY, *CHANGE_FIELDS, "attribution_end"))
)

TREND_SCHEMA: pl.Schema = pl.Schema(
    {
        "source_id": pl.String(),
        "contract_id": pl.String(),
        "month": pl.Date(),
        "previous_month": pl.Date(),
        "entries": pl.Int64(),  # member entries listed as attributed (not dropped)
        "members": pl.Int64(),  # distinct members (member_id, payer_id) among them
        "new": pl.Int64(),
        "changed": pl.Int64(),
        "nochange": pl.Int64(),
        "dropped": pl.Int64(),
        "provider_switches": pl.Int64(),
    }
)


@dataclass(frozen=True)
class SnapshotLineage:
    """Where a snapshot came from. No PHI: a file name, its hash, when it arrived, a count."""

    file_name: str
    file_sha256: str
    received_at: datetime
    rows: int


@dataclass(frozen=True)
class GroupVersion:
    """The published version of one contract's Group for one month.

    ``version_id`` is the Group's ``meta.versionId`` (a FHIR id, hence a string of digits);
    ``last_updated`` its ``meta.lastUpdated``: the transaction time of the publication that
    created this version, so re-publishing unchanged content reproduces both.
    """

    contract_id: str
    month: date
    version_id: str
    last_updated: datetime
    status: str
    content_hash: str
    bumped: bool  # True when this call created the version


@dataclass(frozen=True)
class ListRequest:
    """A provider's request on one contract's list for one month, as recorded (docs/HISTORY.md).

    ``operation``: member-add | member-remove | confirm | create-group. ``status``: queued |
    accepted | rejected. ``parameters`` is the request as sent (JSON text); ``provenance`` the
    X-Provenance header when one came. ``order`` ranks accepted requests in acceptance order.
    """

    request_id: str
    source_id: str
    contract_id: str
    month: date
    group_id: str
    operation: str
    client_id: str
    received_at: datetime
    parameters: str
    provenance: str | None
    status: str
    reason: str | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    order: int | None = None
    channel: str = "api"


_REQUEST_COLUMNS = ("request_id", "source_id", "contract_id", "month", "group_id", "operation", "client_id",
                    "received_at", "parameters", "provenance", "status", "reason", "decided_at", "decided_by",
                    "request_order", "channel")
REQUEST_STATUSES = ("queued", "accepted", "rejected")


class _ArrowStream:
    """Expose only ``__arrow_c_stream__`` so DuckDB scans a polars frame without pyarrow."""

    def __init__(self, df: pl.DataFrame):
        self._df = df

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._df.__arrow_c_stream__(requested_schema)


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    con.begin()
    try:
        yield
        con.commit()
    except BaseException:
        con.rollback()
        raise


def _utc_naive(moment: datetime) -> datetime:
    # Stored as naive UTC; a naive input is taken to be UTC already.
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def content_hash(members: pl.DataFrame, status: str) -> str:
    """sha256 of a contract's member list as published: non-lineage columns, sorted, plus status."""
    cols = [c for c in members.columns if c not in LINEAGE_FIELDS and c != PREVIOUS_MONTH_COLUMN]
    order = ["contract_id", *[k for k in MEMBER_ENTRY_KEY if k != "contract_id"]]
    digest = hashlib.sha256(f"status={status}\n".encode())
    digest.update(members.select(cols).sort(order, nulls_last=True).write_csv().encode("utf-8"))
    return digest.hexdigest()


class HistoryStore:
    """Monthly snapshots of accepted rows in one DuckDB file; change types derived on read."""

    def __init__(
        self, path: Path, *, default_status: str | None = None, lock_timeout: float = 600.0, read_only: bool = False
    ):
        self.path = Path(path)
        # read_only: for report commands on a possibly read-only ATR_HOME; creates no file, schema or lock.
        self.read_only = read_only
        self.lock_path = lock_path_for(self.path)
        self.lock_timeout = lock_timeout
        status = default_status or os.environ.get(DEFAULT_STATUS_ENV) or "draft"
        if status not in DEFAULT_STATUSES:
            raise AtrError(f"default list status must be one of {', '.join(DEFAULT_STATUSES)}, not {status!r}")
        self.default_status = status
        self._schema_checked = False
        if not self.path.exists() and not read_only:
            with self._writer():
                pass  # _writer creates the schema

    # ------------------------------------------------------------------ connections

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the store's exclusive writer lock (every write method takes it itself)."""
        with file_lock(self.lock_path, exclusive=True, timeout=self.lock_timeout):
            yield

    @contextmanager
    def _writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.write_lock():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            restrict_umask()  # the DuckDB file and its WAL hold PHI: owner-only whatever the umask
            con = duckdb.connect(str(private_file(self.path) if self.path.exists() else self.path))
            try:
                _ensure_schema(con)
                yield con
            finally:
                con.close()

    def upgrade(self) -> None:
        """Bring an older store to ``SCHEMA_VERSION`` (every change so far only adds tables)."""
        with self._writer():
            pass  # _writer's _ensure_schema adds what is missing and records the version

    @contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        lock = (read_only_lock(self.lock_path, timeout=self.lock_timeout) if self.read_only
                else file_lock(self.lock_path, exclusive=False, timeout=self.lock_timeout))
        with lock:
            con = duckdb.connect(str(self.path), read_only=True)
            try:
                if not self._schema_checked:
                    # A newer store is refused on first use; an older one reads as it is (schema 2
                    # only added tables, which _writer adds when it first writes).
                    _check_schema_version(con)
                    self._schema_checked = True
                # Strings leave DuckDB as Arrow string views, polars' own layout: without this
                # polars re-copied every string on import (~30% of a 1M-row read, and the RSS).
                con.execute("SET produce_arrow_string_view = true")
                con.execute("SET arrow_output_version = '1.4'")
                yield con
            finally:
                con.close()

    # ------------------------------------------------------------------ snapshots

    def record_snapshot(
        self, accepted: pl.DataFrame, *, source_id: str, month: date, lineage: SnapshotLineage
    ) -> None:
        """Make ``accepted`` the snapshot of ``source_id`` x ``month``, replacing any earlier one.

        All of the month's contracts are replaced in one transaction: a reader sees the old
        snapshot or the new one, never a mix, and re-recording never duplicates rows.
        """
        month = _first_of_month(month)
        rows = _checked_rows(accepted, source_id=source_id, month=month)
        recorded_at = _now()
        with self._writer() as con:
            # Appending one Arrow stream is serial work in DuckDB (scan, then dictionary/FSST
            # compression of each row group as it fills): a second thread only polls for tasks.
            # At 1M rows on a busy 2-core box, 2 threads took 9.8 s CPU / 19.7 s wall and 1
            # thread 4.4 s / 4.6 s, with the same stored rows. The setting ends with `con`.
            con.execute("SET threads = 1")
            con.register("incoming", _ArrowStream(rows))
            try:
                with _transaction(con):
                    con.execute("DELETE FROM snapshot_rows WHERE source_id = ? AND reporting_month = ?", [source_id, month])
                    con.execute("INSERT INTO snapshot_rows BY NAME SELECT * FROM incoming")
                    con.execute(
                        "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?)",
                        [source_id, month, rows.height, lineage.file_sha256, recorded_at],
                    )
                    # One delivery per distinct file: re-running the same file refreshes its entry.
                    con.execute(
                        """INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                           ON CONFLICT (source_id, month, file_sha256) DO UPDATE SET
                             file_name = excluded.file_name, received_at = excluded.received_at,
                             rows = excluded.rows, last_recorded_at = excluded.last_recorded_at""",
                        [
                            source_id,
                            month,
                            lineage.file_sha256,
                            lineage.file_name,
                            _utc_naive(lineage.received_at),
                            lineage.rows,
                            recorded_at,
                            recorded_at,
                        ],
                    )
            finally:
                con.unregister("incoming")

    def months(self, source_id: str) -> list[date]:
        with self._reader() as con:
            found = con.execute("SELECT month FROM snapshots WHERE source_id = ? ORDER BY month", [source_id]).fetchall()
        return [row[0] for row in found]

    def sources(self) -> list[str]:
        with self._reader() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT source_id FROM snapshots ORDER BY 1").fetchall()]

    def previous_month(self, source_id: str, month: date) -> date | None:
        """The nearest recorded month before ``month``: what ``member_list`` diffs against."""
        with self._reader() as con:
            return _previous_month(con, source_id, _first_of_month(month))

    def snapshot(self, source_id: str, month: date, contract_id: str | None = None) -> pl.DataFrame:
        """The stored canonical rows of a month as recorded (no change types)."""
        month = _first_of_month(month)
        with self._reader() as con:
            _require_month(con, source_id, month)
            return _load(con, source_id, month, contract_id, CANONICAL_SCHEMA.names())

    def member_list(
        self, source_id: str, month: date, contract_id: str | None = None, *, columns: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """The ATR member list of a recorded month, dropped entries included.

        Columns: canonical columns, ``change_type`` (String), ``inactive`` (Boolean) and
        ``previous_month`` (Date: the recorded month it was diffed against, null for the first).
        ``columns`` narrows the canonical columns to those named (the member entry key and
        ``line_number``, which order the list, always come too): the same rows in the same order,
        for callers that only count (a 1M-member list is ~1.5 GB with every column).
        """
        month = _first_of_month(month)
        columns = CANONICAL_SCHEMA.names() if columns is None else _with_order_columns(columns)
        with self._reader() as con:
            _require_month(con, source_id, month)
            previous = _previous_month(con, source_id, month)
            own, before = _accepted_rows(con, source_id, month, contract_id), None
            if previous is not None:
                before = _accepted_rows(con, source_id, previous, contract_id)
            statuses = _statuses(con, source_id, month, self.default_status) if own is not None else {}
            if previous is None:
                listed = compute_changes(_load(con, source_id, month, contract_id, columns), None, month=month)
            else:
                # The codes first: DuckDB's join is done before the wide rows arrive beside it.
                codes = _change_codes(con, source_id, month, previous, contract_id)
                current = _load(con, source_id, month, contract_id, columns, positions=True)
                dropped = _dropped(con, source_id, month, previous, contract_id, columns)
                listed = _member_list(current, codes, dropped, previous)
        if own is None and before is None:
            return listed  # no provider request touches this list: the payer's files alone
        empty = pl.DataFrame(schema={**CANONICAL_SCHEMA, ACTION_COLUMN: pl.String, ORDER_COLUMN: pl.Int64})
        return apply_requests(listed, month=month, previous_month=previous, own=own if own is not None else empty,
                              previous=before if before is not None else empty, statuses=statuses)

    def lineage(self, source_id: str, month: date) -> list[dict]:
        """Every distinct file recorded for the month, oldest first; ``current`` marks the one in effect."""
        month = _first_of_month(month)
        with self._reader() as con:
            found = con.execute(
                """SELECT d.file_name, d.file_sha256, d.received_at, d.rows, d.last_recorded_at,
                          d.first_recorded_at, (s.file_sha256 IS NOT NULL) AS current
                   FROM deliveries d LEFT JOIN snapshots s
                     ON s.source_id = d.source_id AND s.month = d.month AND s.file_sha256 = d.file_sha256
                   WHERE d.source_id = ? AND d.month = ?
                   ORDER BY d.first_recorded_at, d.file_sha256""",
                [source_id, month],
            ).fetchall()
        return [
            {
                "file_name": name,
                "file_sha256": sha,
                "received_at": _as_utc(received),
                "rows": rows,
                "recorded_at": _as_utc(recorded),
                "first_recorded_at": _as_utc(first),
                "current": bool(current),
            }
            for name, sha, received, rows, recorded, first, current in found
        ]

    # ------------------------------------------------------------------ Group versions and status

    def list_status(self, source_id: str, contract_id: str, month: date) -> str:
        """The contract list's status for the month: set by set_list_status, else the default."""
        with self._reader() as con:
            return _status(con, source_id, contract_id, _first_of_month(month), self.default_status)

    def set_list_status(self, source_id: str, contract_id: str, status: str) -> None:
        """Set the status of the contract's list for the source's latest recorded month.

        ``final`` is what ``atr finalize`` sets. A month recorded later starts again at the
        default status: each monthly list is finalized on its own.
        """
        if status not in LIST_STATUSES:
            raise AtrError(f"list status must be one of {', '.join(LIST_STATUSES)}, not {status!r}")
        with self._writer() as con:
            latest = con.execute("SELECT max(month) FROM snapshots WHERE source_id = ?", [source_id]).fetchone()
            month = latest[0] if latest else None
            if month is None:
                raise AtrError(f"source {source_id!r} has no recorded month to set a list status on")
            present = con.execute(
                "SELECT count(*) FROM snapshot_rows WHERE source_id = ? AND reporting_month = ? AND contract_id = ?",
                [source_id, month, contract_id],
            ).fetchone()
            if not present or not present[0]:
                raise AtrError(f"contract {contract_id!r} has no rows in source {source_id!r} month {month:%Y-%m}")
            con.execute(
                "INSERT OR REPLACE INTO list_status VALUES (?, ?, ?, ?, ?)",
                [source_id, contract_id, month, status, _now()],
            )

    def publish_group_versions(
        self,
        source_id: str,
        month: date,
        contract_ids: list[str],
        transaction_time: datetime,
        content_hashes: dict[str, str] | None = None,
    ) -> dict[str, GroupVersion]:
        """The ``meta.versionId`` / ``lastUpdated`` / status of each contract's Group for the month.

        A version is created only when the content changed. The content is ``content_hashes``'
        value when given (e.g. a hash of the built Group), else ``content_hash`` of the
        contract's member list; the list status is always part of it, so finalizing bumps.
        Unchanged means: the same content and status as this month's latest publication, or as
        the contract's latest version overall; then that version is returned as it was
        (``bumped`` False, same ``last_updated``), so a re-run writes byte-identical Groups.
        Otherwise the version is the contract's highest so far + 1, stamped ``transaction_time``.
        """
        month = _first_of_month(month)
        hashes = dict(content_hashes or {})
        missing = [c for c in contract_ids if c not in hashes]
        statuses: dict[str, str] = {}
        if missing:
            members = self.member_list(source_id, month)
            for contract_id in missing:
                with self._reader() as con:
                    statuses[contract_id] = _status(con, source_id, contract_id, month, self.default_status)
                part = members.filter(pl.col("contract_id") == contract_id)
                hashes[contract_id] = content_hash(part, statuses[contract_id])
        stamp = _utc_naive(transaction_time)
        published_at = _now()
        out: dict[str, GroupVersion] = {}
        with self._writer() as con, _transaction(con):
            for contract_id in sorted(dict.fromkeys(contract_ids)):
                status = statuses.get(contract_id) or _status(con, source_id, contract_id, month, self.default_status)
                out[contract_id] = _publish_one(
                    con, source_id, contract_id, month, hashes[contract_id], status, stamp, published_at
                )
        return out

    def set_month_status(self, source_id: str, contract_id: str, month: date, status: str) -> None:
        """Set one contract's list status for one month (``$confirm-attribution-list``)."""
        if status not in LIST_STATUSES:
            raise AtrError(f"list status must be one of {', '.join(LIST_STATUSES)}, not {status!r}")
        with self._writer() as con:
            con.execute("INSERT OR REPLACE INTO list_status VALUES (?, ?, ?, ?, ?)",
                        [source_id, contract_id, _first_of_month(month), status, _now()])

    # ------------------------------------------------------------------ providers' requests

    def record_request(self, request: ListRequest, rows: pl.DataFrame | None = None) -> None:
        """Record a request (and the entries it adds or removes: canonical rows + ``action``)."""
        values = [getattr(request, f) for f in ListRequest.__dataclass_fields__]
        values[3] = _first_of_month(request.month)
        for i in (7, 12):
            values[i] = _utc_naive(values[i]) if values[i] is not None else None
        with self._writer() as con, _transaction(con):
            con.execute(f"INSERT INTO list_requests VALUES ({', '.join('?' * len(_REQUEST_COLUMNS))})", values)
            if rows is not None and rows.height:
                frame = rows.select(
                    pl.lit(request.request_id).alias("request_id"),
                    pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
                    pl.col(ACTION_COLUMN).cast(pl.String),
                    *(pl.col(c).cast(t) for c, t in CANONICAL_SCHEMA.items()),
                )
                con.register("incoming_requests", _ArrowStream(frame))
                con.execute("INSERT INTO request_rows BY NAME SELECT * FROM incoming_requests")
                con.unregister("incoming_requests")

    def list_requests(self, source_id: str | None = None, *, status: str | None = None,
                      group_id: str | None = None) -> list[ListRequest]:
        """Recorded requests, oldest first (filtered by source, status, Group)."""
        where, params = ["1 = 1"], []
        for column, value in (("source_id", source_id), ("status", status), ("group_id", group_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self._reader() as con:
            if not _has_table(con, "list_requests"):
                return []
            found = con.execute(
                f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM list_requests WHERE {' AND '.join(where)}"
                " ORDER BY received_at, request_id", params).fetchall()
        return [_request_of(row) for row in found]

    def get_request(self, request_id: str) -> ListRequest | None:
        with self._reader() as con:
            if not _has_table(con, "list_requests"):
                return None
            row = con.execute(f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM list_requests WHERE request_id = ?",
                              [request_id]).fetchone()
        return _request_of(row) if row else None

    def request_rows(self, request_id: str) -> pl.DataFrame:
        """The entries a request adds or removes: canonical columns + ``action``."""
        with self._reader() as con:
            sql = f"SELECT action, {', '.join(_quoted(c) for c in CANONICAL_SCHEMA.names())} FROM request_rows WHERE request_id = ? ORDER BY seq"
            frame = pl.DataFrame(con.sql(sql, params=[request_id]))
        if frame.is_empty():
            return pl.DataFrame(schema={ACTION_COLUMN: pl.String, **CANONICAL_SCHEMA})
        return frame.select(pl.col(ACTION_COLUMN).cast(pl.String), *(pl.col(c).cast(t) for c, t in CANONICAL_SCHEMA.items()))

    def decide_request(self, request_id: str, status: str, *, reason: str | None = None, decided_by: str) -> ListRequest:
        """Accept or reject a queued request; an accepted one takes the next acceptance order."""
        if status not in ("accepted", "rejected"):
            raise AtrError(f"a request is decided accepted or rejected, not {status!r}")
        with self._writer() as con:
            found = con.execute("SELECT status FROM list_requests WHERE request_id = ?", [request_id]).fetchone()
            if found is None:
                raise AtrError(f"no request {request_id!r} (see `atr requests list`)")
            if found[0] != "queued":
                raise AtrError(f"request {request_id} is already {found[0]}")
            top = con.execute("SELECT coalesce(max(request_order), 0) FROM list_requests").fetchone()
            order = (top[0] if top else 0) + 1 if status == "accepted" else None
            con.execute(
                "UPDATE list_requests SET status = ?, reason = ?, decided_at = ?, decided_by = ?, request_order = ?"
                " WHERE request_id = ?", [status, reason, _now(), decided_by, order, request_id])
        decided = self.get_request(request_id)
        assert decided is not None
        return decided

    # ------------------------------------------------------------------ month order

    def build_basis(self, source_id: str, month: date) -> str:
        """What a build of ``month`` is made of: its snapshot's file and the previous month's.

        Two builds with the same basis list the same members with the same change types; a
        published month whose basis is no longer current must be rebuilt.
        """
        month = _first_of_month(month)
        with self._reader() as con:
            return _basis(con, source_id, month)

    def record_published(self, source_id: str, month: date, basis: str, versions: dict[str, str]) -> None:
        """Remember what the month's published export was built on, and its Group versions."""
        import json

        month = _first_of_month(month)
        with self._writer() as con:
            con.execute(
                "INSERT OR REPLACE INTO published_builds VALUES (?, ?, ?, ?, ?)",
                [source_id, month, basis, json.dumps(dict(sorted(versions.items()))), _now()],
            )

    def adopt_published(self, source_id: str, month: date) -> bool:
        """Record an export published by a release before schema 2 as built on the current
        history (with its latest Group versions), so a later late month rebuilds it too.
        False when the month is not recorded or already known."""
        import json

        month = _first_of_month(month)
        with self._writer() as con:
            known = con.execute("SELECT 1 FROM published_builds WHERE source_id = ? AND month = ?", [source_id, month]).fetchone()
            recorded = con.execute("SELECT 1 FROM snapshots WHERE source_id = ? AND month = ?", [source_id, month]).fetchone()
            if known or not recorded:
                return False
            versions = dict(con.execute(
                "SELECT contract_id, CAST(max(version) AS VARCHAR) FROM group_versions WHERE source_id = ? AND month = ? GROUP BY 1",
                [source_id, month],
            ).fetchall())
            con.execute(
                "INSERT INTO published_builds VALUES (?, ?, ?, ?, ?)",
                [source_id, month, _basis(con, source_id, month), json.dumps(dict(sorted(versions.items()))), _now()],
            )
        return True

    def published_months(self, source_id: str) -> list[date]:
        with self._writer() as con:  # the writer adds published_builds to a store of schema 1
            return [r[0] for r in con.execute(
                "SELECT month FROM published_builds WHERE source_id = ? ORDER BY month", [source_id]
            ).fetchall()]

    def months_to_rebuild(self, source_id: str) -> list[date]:
        """Published months, in month order, whose export no longer matches history.

        Stale when the basis changed (the month, or the month it is diffed against, was recorded
        again or arrived late), or when one of its Groups has a lower version than the same
        contract in an earlier published month (versions must follow month order).
        """
        import json

        stale: list[date] = []
        top: dict[str, int] = {}  # contract -> highest version published for earlier months
        with self._writer() as con:
            rows = con.execute(
                "SELECT month, basis, versions FROM published_builds WHERE source_id = ? ORDER BY month", [source_id]
            ).fetchall()
            recorded = {r[0] for r in con.execute("SELECT month FROM snapshots WHERE source_id = ?", [source_id]).fetchall()}
            for month, basis, versions_text in rows:
                versions = {c: int(v) for c, v in json.loads(versions_text).items()}
                if month not in recorded:
                    continue
                if basis != _basis(con, source_id, month) or any(v < top.get(c, 0) for c, v in versions.items()):
                    stale.append(month)
                for c, v in versions.items():
                    top[c] = max(top.get(c, 0), v)
        return stale

    def group_versions(self, source_id: str, contract_id: str | None = None) -> pl.DataFrame:
        """Publication log: contract_id, month, version_id, last_updated, status, content_hash."""
        sql = (
            "SELECT contract_id, month, CAST(version AS VARCHAR) AS version_id, last_updated, status, content_hash"
            " FROM group_versions WHERE source_id = ?"
        )
        params: list[Any] = [source_id]
        if contract_id is not None:
            sql += " AND contract_id = ?"
            params.append(contract_id)
        with self._reader() as con:
            return pl.DataFrame(con.sql(sql + " ORDER BY contract_id, version, month", params=params))

    # ------------------------------------------------------------------ trends

    def trends(self, source_id: str, contract_id: str | None = None) -> pl.DataFrame:
        """Per contract per recorded month: entries, members, new, changed, nochange, dropped,
        provider_switches (``TREND_SCHEMA``), ordered by contract and month.

        A month's counts depend on its snapshot and the one before it only, so they are kept
        (``trend_months``, ``trend_counts``) under those two snapshots' identity and counted
        again only when either was recorded anew. Counting reloads both months' rows (~0.8 s
        per month at 1M members): done every time, every run's Dagster metadata (it shows the
        trend) grew by that for each month of history. A read-only store counts without keeping.
        """
        columns = list(_TREND_COLUMNS)
        keep = not self.read_only
        with self._reader() as con:
            bases = _trend_bases(con, source_id)
            done, cached = _kept_trends(con, source_id, bases)
            todo = [basis for basis in bases if basis[0] not in done]
            # Counted for every contract when kept (the next caller may ask for another one).
            scope = None if keep else contract_id
            counted: list[pl.DataFrame] = []
            last: tuple[date, pl.DataFrame] | None = None  # consecutive months load each once
            for month, previous, _ in todo:
                before = None
                if previous is not None:
                    before = last[1] if last and last[0] == previous else _load(con, source_id, previous, scope, columns)
                current = _load(con, source_id, month, scope, columns)
                listed = compute_changes(current, before, month=month, previous_month=previous)
                counted.append(_month_counts(source_id, month, previous, listed, provider_switches(current, before)))
                last = (month, current)
        if keep and todo:
            self._keep_trends(source_id, todo, counted)
        found = pl.concat([cached, *counted]) if counted else cached
        if contract_id is not None:
            found = found.filter(pl.col("contract_id") == contract_id)
        return found.sort(["contract_id", "month"])

    def _keep_trends(self, source_id: str, bases: list[tuple[date, date | None, str]], counted: list[pl.DataFrame]) -> None:
        """Keep the counts of the months in ``bases`` (``counted``: theirs, in that order)."""
        with self._writer() as con, _transaction(con):
            for month, _, basis in bases:
                con.execute("DELETE FROM trend_counts WHERE source_id = ? AND month = ?", [source_id, month])
                con.execute("INSERT OR REPLACE INTO trend_months VALUES (?, ?, ?)", [source_id, month, basis])
            con.register("counted", _ArrowStream(pl.concat(counted)))
            con.execute("INSERT INTO trend_counts BY NAME SELECT * FROM counted")
            con.unregister("counted")


# ---------------------------------------------------------------------- helpers

# What a month's trend counts were computed from: its snapshot and the previous one (file and
# recording time each), and the counting's own version (bump it when _month_counts changes).
_TREND_LOGIC = "1"


def _trend_bases(con: duckdb.DuckDBPyConnection, source_id: str) -> list[tuple[date, date | None, str]]:
    found = con.execute(
        "SELECT month, file_sha256, recorded_at FROM snapshots WHERE source_id = ? ORDER BY month", [source_id]
    ).fetchall()
    out: list[tuple[date, date | None, str]] = []
    previous: tuple[date, str] | None = None
    for month, sha, recorded in found:
        own = f"{sha}@{recorded.isoformat() if recorded else ''}"
        out.append((month, previous[0] if previous else None, f"{_TREND_LOGIC}|{own}|{previous[1] if previous else '-'}"))
        previous = (month, own)
    return out


def _kept_trends(
    con: duckdb.DuckDBPyConnection, source_id: str, bases: list[tuple[date, date | None, str]]
) -> tuple[set[date], pl.DataFrame]:
    """The months kept with an unchanged basis and their counts (a month without rows keeps no
    counts, only its basis). Nothing from a store made before trends were kept."""
    current = {month: basis for month, _, basis in bases}
    try:
        kept = con.execute("SELECT month, basis FROM trend_months WHERE source_id = ?", [source_id]).fetchall()
    except duckdb.CatalogException:
        return set(), pl.DataFrame(schema=TREND_SCHEMA)
    months = sorted(month for month, basis in kept if current.get(month) == basis)
    if not months:
        return set(), pl.DataFrame(schema=TREND_SCHEMA)
    frame = pl.DataFrame(con.sql(
        f"SELECT {', '.join(TREND_SCHEMA.names())} FROM trend_counts WHERE source_id = ? AND month IN ({', '.join('?' * len(months))})",
        params=[source_id, *months],
    ))
    return set(months), (frame.cast(dict(TREND_SCHEMA)) if frame.height else pl.DataFrame(schema=TREND_SCHEMA))  # type: ignore[arg-type]


def _first_of_month(month: date) -> date:
    return month.replace(day=1)


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    columns = ",\n  ".join(f"{f.name} {_DUCK_TYPES[type(f.dtype)]}" for f in FIELDS)
    con.execute(f"CREATE TABLE IF NOT EXISTS snapshot_rows (\n  {columns}\n)")
    # A canonical field added after the store was created becomes a nullable column here.
    have = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'snapshot_rows'"
    ).fetchall()}
    for f in FIELDS:
        if f.name not in have:
            con.execute(f"ALTER TABLE snapshot_rows ADD COLUMN {f.name} {_DUCK_TYPES[type(f.dtype)]}")
    con.execute(
        """CREATE TABLE IF NOT EXISTS snapshots (
             source_id VARCHAR, month DATE, rows BIGINT, file_sha256 VARCHAR, recorded_at TIMESTAMP,
             PRIMARY KEY (source_id, month))"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS deliveries (
             source_id VARCHAR, month DATE, file_sha256 VARCHAR, file_name VARCHAR, received_at TIMESTAMP,
             rows BIGINT, first_recorded_at TIMESTAMP, last_recorded_at TIMESTAMP,
             PRIMARY KEY (source_id, month, file_sha256))"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS group_versions (
             source_id VARCHAR, contract_id VARCHAR, month DATE, version INTEGER, content_hash VARCHAR,
             status VARCHAR, last_updated TIMESTAMP, published_at TIMESTAMP)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS list_status (
             source_id VARCHAR, contract_id VARCHAR, month DATE, status VARCHAR, set_at TIMESTAMP,
             PRIMARY KEY (source_id, contract_id, month))"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS published_builds (
             source_id VARCHAR, month DATE, basis VARCHAR, versions VARCHAR, published_at TIMESTAMP,
             PRIMARY KEY (source_id, month))"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS list_requests (
             request_id VARCHAR PRIMARY KEY, source_id VARCHAR, contract_id VARCHAR, month DATE, group_id VARCHAR,
             operation VARCHAR, client_id VARCHAR, received_at TIMESTAMP, parameters VARCHAR, provenance VARCHAR,
             status VARCHAR, reason VARCHAR, decided_at TIMESTAMP, decided_by VARCHAR, request_order BIGINT,
             channel VARCHAR)"""
    )
    con.execute(f"CREATE TABLE IF NOT EXISTS request_rows (\n  request_id VARCHAR, seq BIGINT, action VARCHAR,\n  {columns}\n)")
    have = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'request_rows'"
    ).fetchall()}
    for f in FIELDS:
        if f.name not in have:
            con.execute(f"ALTER TABLE request_rows ADD COLUMN {f.name} {_DUCK_TYPES[type(f.dtype)]}")
    con.execute(
        """CREATE TABLE IF NOT EXISTS trend_months (
             source_id VARCHAR, month DATE, basis VARCHAR, PRIMARY KEY (source_id, month))"""
    )
    trend_columns = ", ".join(f"{name} {_DUCK_TYPES[type(dtype)]}" for name, dtype in TREND_SCHEMA.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS trend_counts ({trend_columns})")
    con.execute("CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    _check_schema_version(con)
    # Every change from 1 to 3 is an added table (above): the store is upgraded in place.
    con.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])


def stored_schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    try:
        found = con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:
        return None
    return int(found[0]) if found else None


def _check_schema_version(con: duckdb.DuckDBPyConnection) -> None:
    stored = stored_schema_version(con)
    if stored is not None and stored > int(SCHEMA_VERSION):
        raise NewerSchema(
            f"the history store has schema version {stored}, newer than this atr knows ({SCHEMA_VERSION}); "
            "it was written by a newer release: upgrade atr (or restore a backup taken before the upgrade)"
        )


def _checked_rows(accepted: pl.DataFrame, *, source_id: str, month: date) -> pl.DataFrame:
    missing = [name for name in CANONICAL_SCHEMA.names() if name not in accepted.columns]
    if missing:
        raise AtrError(f"snapshot for {source_id!r} {month:%Y-%m} lacks canonical columns: {', '.join(missing)}")
    extra = [c for c in accepted.columns if c not in CANONICAL_SCHEMA and c != ISSUES_COLUMN]
    if extra:
        raise AtrError(f"snapshot for {source_id!r} {month:%Y-%m} has non-canonical columns: {', '.join(extra)}")
    rows = accepted.select(pl.col(name).cast(dtype) for name, dtype in CANONICAL_SCHEMA.items())
    other_source = rows.filter(pl.col("source_id").is_not_null() & (pl.col("source_id") != source_id)).height
    other_month = rows.filter(
        pl.col("reporting_month").is_not_null() & (pl.col("reporting_month").dt.month_start() != month)
    ).height
    if other_source or other_month:
        raise AtrError(
            f"snapshot for {source_id!r} {month:%Y-%m}: {other_source} rows of another source, "
            f"{other_month} rows of another reporting month"
        )
    # A 128-bit hash of the key finds duplicates cheaply; only a hit is confirmed on the strings.
    key = pl.struct(list(MEMBER_ENTRY_KEY))
    duplicates = rows.select(pl.struct(key.hash(7).alias("h1"), key.hash(13).alias("h2")).is_duplicated().sum()).item()
    if duplicates:
        duplicates = rows.select(key.is_duplicated().sum()).item()
    if duplicates:
        raise AtrError(
            f"snapshot for {source_id!r} {month:%Y-%m}: {duplicates} rows share a member entry key "
            f"({', '.join(MEMBER_ENTRY_KEY)}); validation should have rejected them"
        )
    # Stored in file line order: DuckDB returns a plain scan in insertion order, so reads come
    # back already ordered and member_list need not sort.
    return in_line_order(rows).with_columns(
        pl.lit(source_id, dtype=pl.String).alias("source_id"),
        pl.lit(month, dtype=pl.Date).alias("reporting_month"),
    )


def _basis(con: duckdb.DuckDBPyConnection, source_id: str, month: date) -> str:
    def sha(m: date | None) -> str:
        if m is None:
            return "-"
        found = con.execute(
            "SELECT file_sha256, recorded_at FROM snapshots WHERE source_id = ? AND month = ?", [source_id, m]
        ).fetchone()
        return "-" if found is None else f"{found[0]}@{found[1].isoformat()}"

    previous = _previous_month(con, source_id, month)
    basis = f"{month:%Y-%m}={sha(month)};{previous:%Y-%m}={sha(previous)}" if previous else f"{month:%Y-%m}={sha(month)}"
    # Accepted requests of the month or of the one it is diffed against change the list (and
    # only then is this part added, so a build with none has the basis it always had).
    counts = [_accepted_count(con, source_id, m) for m in (month, previous) if m is not None]
    return basis + f";requests={','.join(map(str, counts))}" if any(counts) else basis


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()
    return bool(found and found[0])


def _accepted_count(con: duckdb.DuckDBPyConnection, source_id: str, month: date) -> int:
    if not _has_table(con, "list_requests"):
        return 0  # a store of schema 2 opened read-only: no requests yet
    found = con.execute(
        "SELECT count(*) FROM list_requests WHERE source_id = ? AND month = ? AND status = 'accepted'"
        " AND operation IN ('member-add', 'member-remove')", [source_id, month]).fetchone()
    return int(found[0]) if found else 0


def _accepted_rows(con: duckdb.DuckDBPyConnection, source_id: str, month: date, contract_id: str | None) -> pl.DataFrame | None:
    """Entries of the month's accepted member requests with their acceptance order; None when none."""
    if not _accepted_count(con, source_id, month):
        return None
    columns = ", ".join(f"r.{_quoted(c)}" for c in CANONICAL_SCHEMA.names())
    where = "" if contract_id is None else f" AND r.contract_id = {ConstantExpression(contract_id)}"
    sql = f"""SELECT r.action AS {ACTION_COLUMN}, l.request_order * 100000 + r.seq AS {ORDER_COLUMN}, {columns}
              FROM request_rows r JOIN list_requests l USING (request_id)
              WHERE l.source_id = {ConstantExpression(source_id)} AND l.month = {ConstantExpression(month)}
                AND l.status = 'accepted'{where}
              ORDER BY {ORDER_COLUMN}"""
    frame = pl.DataFrame(con.sql(sql))
    if frame.is_empty():
        return None
    return frame.select(pl.col(ACTION_COLUMN).cast(pl.String), pl.col(ORDER_COLUMN).cast(pl.Int64),
                        *(pl.col(c).cast(t) for c, t in CANONICAL_SCHEMA.items()))


def _statuses(con: duckdb.DuckDBPyConnection, source_id: str, month: date, default: str) -> dict[str, str]:
    found = con.execute("SELECT contract_id, status FROM list_status WHERE source_id = ? AND month = ?",
                        [source_id, month]).fetchall()
    return _DefaultDict(default, dict(found))


class _DefaultDict(dict):
    """A contract's status: the recorded one, else the store's default."""

    def __init__(self, default: str, values: dict[str, str]):
        super().__init__(values)
        self.default = default

    def get(self, key: Any, fallback: Any = None) -> Any:
        return super().get(key, self.default)


def _request_of(row: tuple) -> ListRequest:
    values = dict(zip(_REQUEST_COLUMNS, row, strict=True))
    values["order"] = values.pop("request_order")
    for name in ("received_at", "decided_at"):
        if values[name] is not None:
            values[name] = _as_utc(values[name])
    return ListRequest(**values)


def _require_month(con: duckdb.DuckDBPyConnection, source_id: str, month: date) -> None:
    found = con.execute("SELECT 1 FROM snapshots WHERE source_id = ? AND month = ?", [source_id, month]).fetchone()
    if not found:
        raise AtrError(f"no snapshot recorded for source {source_id!r} month {month:%Y-%m}")


def _previous_month(con: duckdb.DuckDBPyConnection, source_id: str, month: date) -> date | None:
    found = con.execute(
        "SELECT max(month) FROM snapshots WHERE source_id = ? AND month < ?", [source_id, month]
    ).fetchone()
    return found[0] if found else None


def _load(
    con: duckdb.DuckDBPyConnection,
    source_id: str,
    month: date,
    contract_id: str | None,
    columns: list[str],
    *,
    positions: bool = False,
) -> pl.DataFrame:
    # ``con.sql`` without parameters keeps the query lazy and streams it over the Arrow C
    # interface; with ``params=`` it materialises the result first (~7x slower on 1M rows), so
    # literals are rendered by DuckDB's own quoting (ConstantExpression). ``positions`` adds the
    # stored row's ``rowid`` as ``_POS`` to line up _change_codes (a plain scan keeps rowid order).
    selected = [*([f"rowid AS {_POS}"] if positions else []), *(_quoted(c) for c in columns)]
    relation = con.sql(f"SELECT {', '.join(selected)} FROM snapshot_rows WHERE {_month_rows(source_id, month, contract_id)}")
    frame = pl.DataFrame(relation)
    return frame.select(*([pl.col(_POS)] if positions else []), *(pl.col(c).cast(CANONICAL_SCHEMA[c]) for c in columns))


# ---------------------------------------------------------------------- the diff in SQL
#
# member_list used to load both months whole into polars and join there (compute_changes):
# at 1M rows that moved ~2M wide rows out of DuckDB and held both, ~3.7 GB. Now DuckDB joins
# the two stored months itself and only the finished list leaves it: the current rows (as a
# plain scan, in stored order), one change code per current row (keyed by rowid), and the
# few dropped rows already cut. compute_changes stays the reference (tests compare the two).

_POS = "__pos"


def _with_order_columns(columns: Sequence[str]) -> list[str]:
    """``columns`` plus what puts a member list in order (changes.in_line_order), canonical order."""
    wanted = {*columns, *MEMBER_ENTRY_KEY, "line_number"}
    unknown = wanted - set(CANONICAL_SCHEMA.names())
    if unknown:
        raise ValueError(f"not canonical columns: {sorted(unknown)}")
    return [c for c in CANONICAL_SCHEMA.names() if c in wanted]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _month_rows(source_id: str, month: date, contract_id: str | None) -> str:
    """SQL condition selecting one stored month (literals rendered by DuckDB's own quoting)."""
    where = f"source_id = {ConstantExpression(source_id)} AND reporting_month = {ConstantExpression(month)}"
    if contract_id is not None:
        where += f" AND contract_id = {ConstantExpression(contract_id)}"
    return where


def _same_key(left: str, right: str) -> str:
    # Key fields may be null (a plan id the payer left blank): null matches null, as in
    # compute_changes' ``nulls_equal=True``.
    return " AND ".join(f"{left}.{_quoted(k)} IS NOT DISTINCT FROM {right}.{_quoted(k)}" for k in MEMBER_ENTRY_KEY)


def _change_codes(
    con: duckdb.DuckDBPyConnection, source_id: str, month: date, previous: date, contract_id: str | None
) -> pl.DataFrame:
    """(rowid, change_type) of every current row: new / changed / nochange against ``previous``."""
    compared = ", ".join(_quoted(c) for c in (*MEMBER_ENTRY_KEY, *CHANGE_FIELDS))
    differs = " OR ".join(f"c.{_quoted(f)} IS DISTINCT FROM p.{_quoted(f)}" for f in CHANGE_FIELDS)
    sql = f"""
        WITH c AS (SELECT rowid AS {_POS}, {compared} FROM snapshot_rows WHERE {_month_rows(source_id, month, contract_id)}),
             p AS (SELECT {compared}, true AS in_previous FROM snapshot_rows
                   WHERE {_month_rows(source_id, previous, contract_id)})
        SELECT c.{_POS},
               CASE WHEN p.in_previous IS NULL THEN '{NEW}' WHEN {differs} THEN '{CHANGED}' ELSE '{NOCHANGE}' END
                 AS {CHANGE_TYPE_COLUMN}
        FROM c LEFT JOIN p ON {_same_key("c", "p")}"""
    return pl.DataFrame(con.sql(sql)).sort(_POS)


def _dropped(
    con: duckdb.DuckDBPyConnection,
    source_id: str,
    month: date,
    previous: date,
    contract_id: str | None,
    columns: list[str],
) -> pl.DataFrame:
    """Previous rows whose key is absent now, as this month's dropped entries (see compute_changes)."""
    cutoff = ConstantExpression(last_day_of_month(previous))

    def column(name: str) -> str:
        if name == "reporting_month":
            return f"{ConstantExpression(month)} AS reporting_month"
        if name == "attribution_end":
            return (
                f"CASE WHEN p.attribution_end IS NULL OR p.attribution_end > {cutoff} THEN {cutoff}"
                " ELSE p.attribution_end END AS attribution_end"
            )
        return f"p.{_quoted(name)}"

    key = ", ".join(_quoted(k) for k in MEMBER_ENTRY_KEY)
    sql = f"""
        WITH c AS (SELECT {key} FROM snapshot_rows WHERE {_month_rows(source_id, month, contract_id)}),
             p AS (SELECT * FROM snapshot_rows WHERE {_month_rows(source_id, previous, contract_id)})
        SELECT {", ".join(column(c) for c in columns)},
               '{DROPPED}' AS {CHANGE_TYPE_COLUMN}, true AS {INACTIVE_COLUMN}
        FROM p ANTI JOIN c ON {_same_key("p", "c")}"""
    frame = pl.DataFrame(con.sql(sql))
    return in_line_order(
        frame.select(
            *(pl.col(c).cast(CANONICAL_SCHEMA[c]) for c in columns),
            pl.col(CHANGE_TYPE_COLUMN).cast(pl.String),
            pl.col(INACTIVE_COLUMN).cast(pl.Boolean),
        )
    )


def _chunked_like(values: pl.Series, template: pl.Series) -> pl.Series:
    """``values`` (as long as ``template``) in chunks of the lengths of ``template``'s."""
    cuts, start = [], 0
    for chunk in template.get_chunks():
        cuts.append(values.slice(start, chunk.len()))
        start += chunk.len()
    return pl.concat(cuts, rechunk=False) if len(cuts) > 1 else values


def _member_list(current: pl.DataFrame, codes: pl.DataFrame, dropped: pl.DataFrame, previous: date) -> pl.DataFrame:
    """Assemble what compute_changes returns: current rows in line order, then the dropped."""
    positions = current.get_column(_POS)
    if codes.height == current.height and codes.get_column(_POS).equals(positions):
        # The plain scan and the join saw the same rows; both are now in rowid order. The codes
        # are cut like the scan's chunks: a column chunked otherwise made polars rechunk every
        # column of the list on the next step (+650 MB at 1M entries, for one string column).
        change_types = _chunked_like(codes.get_column(CHANGE_TYPE_COLUMN).cast(pl.String), positions)
        present = current.with_columns(change_types)
    else:  # not expected (one read transaction), but never pair codes with the wrong rows
        present = current.join(codes, on=_POS, how="left", maintain_order="left")
    present = in_line_order(present.drop(_POS)).with_columns(pl.lit(False).alias(INACTIVE_COLUMN))
    return pl.concat([present, dropped], how="vertical").with_columns(
        pl.lit(previous, dtype=pl.Date).alias(PREVIOUS_MONTH_COLUMN)
    )


def _status(con: duckdb.DuckDBPyConnection, source_id: str, contract_id: str, month: date, default: str) -> str:
    found = con.execute(
        "SELECT status FROM list_status WHERE source_id = ? AND contract_id = ? AND month = ?",
        [source_id, contract_id, month],
    ).fetchone()
    return found[0] if found else default


def _publish_one(
    con: duckdb.DuckDBPyConnection,
    source_id: str,
    contract_id: str,
    month: date,
    digest: str,
    status: str,
    stamp: datetime,
    published_at: datetime,
) -> GroupVersion:
    def latest(where: str, params: list[Any]) -> tuple[int, str, str, datetime] | None:
        return con.execute(
            f"""SELECT version, content_hash, status, last_updated FROM group_versions
                WHERE source_id = ? AND contract_id = ? {where}
                ORDER BY version DESC, published_at DESC LIMIT 1""",
            [source_id, contract_id, *params],
        ).fetchone()

    # Versions follow month order: a version may be reused only when no earlier month of the
    # contract has a higher one (else an out-of-order arrival would leave month 10 below month 9).
    floor_row = con.execute(
        "SELECT coalesce(max(version), 0) FROM group_versions WHERE source_id = ? AND contract_id = ? AND month < ?",
        [source_id, contract_id, month],
    ).fetchone()
    floor = floor_row[0] if floor_row else 0
    for same in (latest("AND month = ?", [month]), latest("", [])):
        if same and same[1] == digest and same[2] == status and same[0] >= floor:
            version, _, _, last_updated = same
            con.execute(
                "INSERT INTO group_versions SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS ("
                " SELECT 1 FROM group_versions WHERE source_id = ? AND contract_id = ? AND month = ? AND version = ?)",
                [source_id, contract_id, month, version, digest, status, last_updated, published_at,
                 source_id, contract_id, month, version],
            )
            return GroupVersion(contract_id, month, str(version), _as_utc(last_updated), status, digest, bumped=False)
    top = con.execute(
        "SELECT coalesce(max(version), 0) FROM group_versions WHERE source_id = ? AND contract_id = ?",
        [source_id, contract_id],
    ).fetchone()
    version = (top[0] if top else 0) + 1
    con.execute(
        "INSERT INTO group_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [source_id, contract_id, month, version, digest, status, stamp, published_at],
    )
    return GroupVersion(contract_id, month, str(version), _as_utc(stamp), status, digest, bumped=True)


def _month_counts(
    source_id: str, month: date, previous_month: date | None, listed: pl.DataFrame, switches: pl.DataFrame
) -> pl.DataFrame:
    attributed = pl.col(CHANGE_TYPE_COLUMN) != "dropped"
    counts = listed.group_by("contract_id").agg(
        attributed.sum().alias("entries"),
        pl.struct(list(MEMBER_KEY)).filter(attributed).n_unique().alias("members"),
        *((pl.col(CHANGE_TYPE_COLUMN) == kind).sum().alias(kind) for kind in ("new", "changed", "nochange", "dropped")),
    )
    return (
        counts.join(switches, on="contract_id", how="left", nulls_equal=True)
        .with_columns(
            pl.lit(source_id).alias("source_id"),
            pl.lit(month, dtype=pl.Date).alias("month"),
            pl.lit(previous_month, dtype=pl.Date).alias("previous_month"),
            pl.col("provider_switches").fill_null(0),
        )
        .select(TREND_SCHEMA.names())
        .cast(dict(TREND_SCHEMA))  # type: ignore[arg-type]
    )


# Column names of member_list and the trend views, re-exported for callers of this module.
__all__ = [
    "CHANGE_TYPE_COLUMN",
    "INACTIVE_COLUMN",
    "PREVIOUS_MONTH_COLUMN",
    "TREND_SCHEMA",
    "GroupVersion",
    "HistoryStore",
    "SnapshotLineage",
    "content_hash",
    "trend_markdown",
    "trend_vega_lite",
]
