"""``$davinci-data-export`` jobs: one JSON file per job, files streamed from the published NDJSON.

A job is ``ATR_HOME/api/jobs/<job_id>/job.json`` (its whole state, rewritten atomically at each
step, 0600) plus its NDJSON files beside it, so a job survives a restart: jobs found unfinished at
start-up are run again from the beginning. Completed jobs are kept ``retention`` (default 24 hours,
``ATR_API_JOB_RETENTION_HOURS``) after completion, then a clean-up loop deletes them; ``DELETE`` on
the status URL cancels a job and deletes its files at once.

Streaming: the Group line is copied (or, with ``patient``, cut to those members) chunk by chunk
while the references of its members are collected; Coverage and PractitionerRole lines then add
what they refer to (the subscriber RelatedPerson, the payer, the Practitioner behind a role);
every other file of the month is read line by line and a line is written when its id was
referred to. Only the referenced ids are held in memory, never the resources.
With ``patient``, the Group line is read whole to cut it to those members (known limit).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from atr_pipeline.api.catalog import CatalogView, GroupEntry, MonthExport
from atr_pipeline.api.clients import Client
from atr_pipeline.api.fhir_errors import outcome_bytes
from atr_pipeline.api.reads import group_entries
from atr_pipeline.api.state import api_home, owner_dir, write_private
from atr_pipeline.publish.group_split import split_group

log = logging.getLogger(__name__)

ACTIVE = ("accepted", "in-progress")
DEFAULT_RETENTION = timedelta(hours=float(os.environ.get("ATR_API_JOB_RETENTION_HOURS") or 24))
DEFAULT_FILE_BYTES = int(os.environ.get("ATR_API_EXPORT_FILE_BYTES") or 256 * 2**20)
MAX_ACTIVE_PER_CLIENT = 5
_ID = re.compile(rb'^\{"resourceType":"[A-Za-z]+","id":"([^"]+)"')
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# Which type's lines say what else to export: (type, the types its references reach).
_HOPS = (("Coverage", ("RelatedPerson", "Organization", "Patient")),
         ("PractitionerRole", ("Practitioner", "Organization", "Location")))
_WRITE_ORDER = ("Group", "Coverage", "PractitionerRole", "Patient", "RelatedPerson", "Practitioner", "Organization", "Location")


class Cancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    client_id: str
    group_id: str
    request: str
    types: list[str]
    since: str | None = None
    until: str | None = None
    patients: list[str] = field(default_factory=list)
    status: str = "accepted"
    progress: str = "accepted"
    created: str = ""
    finished: str | None = None
    expires: str | None = None
    transaction_time: str = ""
    month: str | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    error: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None

    def manifest(self, base_url: str) -> dict[str, Any]:
        def items(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"type": e["type"], "url": f"{base_url}/{self.id}/{e['file']}", "count": e["count"]} for e in entries]

        return {
            "transactionTime": self.transaction_time,
            "request": self.request,
            "requiresAccessToken": True,
            "output": items(self.output),
            "error": items(self.error),
        }


def now_instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("an instant needs a time zone")
    return moment


class _SplitWriter:
    """NDJSON files of one type, a new file once ``max_bytes`` is passed (lines are never split)."""

    def __init__(self, folder: Path, resource_type: str, max_bytes: int):
        self.folder, self.type, self.max_bytes = folder, resource_type, max_bytes
        self.files: list[dict[str, Any]] = []
        self._fh: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        name = f"{self.type}.{len(self.files) + 1:03d}.ndjson"
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fh = os.fdopen(fd, "wb", buffering=2**20)
        self._size = 0
        self.files.append({"type": self.type, "file": name, "count": 0})
        return self._fh

    def write_line(self, chunks: Iterator[bytes] | bytes) -> None:
        fh = self._fh if self._fh is not None and self._size < self.max_bytes else self._next()
        for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
            fh.write(chunk)
            self._size += len(chunk)
        fh.write(b"\n")
        self._size += 1
        self.files[-1]["count"] += 1

    def _next(self) -> BinaryIO:
        self.close()
        return self._open()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class JobStore:
    def __init__(self, home: Path, *, retention: timedelta = DEFAULT_RETENTION, max_file_bytes: int = DEFAULT_FILE_BYTES,
                 workers: int = 2):
        self.root = owner_dir(api_home(home) / "jobs")
        self.retention = retention
        self.max_file_bytes = max_file_bytes
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atr-export")

    # ------------------------------------------------------------------ persistence

    def folder(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def save(self, job: Job) -> None:
        write_private(self.folder(job.id) / "job.json", orjson.dumps(asdict(job), option=orjson.OPT_INDENT_2))

    def load(self, job_id: str) -> Job | None:
        try:
            return Job(**orjson.loads((self.folder(job_id) / "job.json").read_bytes()))
        except (KeyError, FileNotFoundError, NotADirectoryError):
            return None

    def all_jobs(self) -> list[Job]:
        found = (self.load(p.name) for p in sorted(self.root.iterdir()) if p.is_dir())
        return [j for j in found if j is not None]

    def active_count(self, client_id: str) -> int:
        return sum(1 for j in self.all_jobs() if j.client_id == client_id and j.status in ACTIVE)

    # ------------------------------------------------------------------ lifecycle

    def create(self, job: Job) -> Job:
        job.id = uuid.uuid4().hex
        job.created = job.created or now_instant()
        job.transaction_time = job.transaction_time or job.created
        owner_dir(self.folder(job.id))
        self.save(job)
        return job

    def submit(self, job: Job, view_of: Any, client_of: Any) -> None:
        self._pool.submit(self._run, job.id, view_of, client_of)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def cleanup(self, now: datetime | None = None) -> list[str]:
        """Delete jobs whose retention has passed; returns their ids."""
        now = now or datetime.now(UTC)
        gone = []
        for job in self.all_jobs():
            if job.expires and parse_instant(job.expires) <= now:
                shutil.rmtree(self.folder(job.id), ignore_errors=True)
                gone.append(job.id)
        for stray in self.root.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        return gone

    def resume(self, view_of: Any, client_of: Any) -> list[str]:
        """Run again every job a stopped server left unfinished."""
        resumed = []
        for job in self.all_jobs():
            if job.status in ACTIVE:
                resumed.append(job.id)
                self.submit(job, view_of, client_of)
        return resumed

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job_id: str, view_of: Any, client_of: Any) -> None:
        job = self.load(job_id)
        if job is None or job.status not in ACTIVE:
            return
        folder = self.folder(job.id)
        for old in folder.glob("*.ndjson"):
            old.unlink()  # a resumed job starts over
        job.status, job.progress = "in-progress", "reading the Group"
        self._save_unless_cancelled(job)
        try:
            client: Client | None = client_of(job.client_id)
            if client is None:
                raise LookupError("the client was removed")
            output, errors, month = run_export(job, view_of(), client, folder, self.max_file_bytes, self._check(job))
        except Cancelled:
            return
        except Exception as exc:  # noqa: BLE001 - any failure becomes the job's OperationOutcome, the server goes on
            log.warning("export job %s failed: %s", job.id, type(exc).__name__)
            job.status, job.failure = "failed", f"export failed ({type(exc).__name__})"
            job.finished = now_instant()
            job.expires = (datetime.now(UTC) + self.retention).isoformat()
            self._save_unless_cancelled(job)
            return
        job.output, job.error, job.month = output, errors, month
        job.status, job.progress, job.finished = "completed", "complete", now_instant()
        job.expires = (datetime.now(UTC) + self.retention).isoformat()
        self._save_unless_cancelled(job)

    def _check(self, job: Job) -> Any:
        def check(progress: str | None = None) -> None:
            if job.id in self._cancelled:
                raise Cancelled()
            if progress and progress != job.progress:
                job.progress = progress
                self._save_unless_cancelled(job)

        return check

    def _save_unless_cancelled(self, job: Job) -> None:
        with self._lock:
            if job.id in self._cancelled or not self.folder(job.id).exists():
                raise Cancelled()
            self.save(job)


def choose_version(entries: list[GroupEntry], until: str | None) -> GroupEntry | None:
    """The latest published version updated no later than ``until`` (all when ``until`` is None)."""
    if until is None:
        return entries[-1]
    limit = parse_instant(until)
    eligible = [e for e in entries if parse_instant(e.last_updated) <= limit]
    return eligible[-1] if eligible else None


def run_export(job: Job, view: CatalogView, client: Client, folder: Path, max_bytes: int, check: Any) -> tuple[list, list, str | None]:
    entry = choose_version(group_entries(view, client, job.group_id), job.until)
    errors: list[bytes] = []
    if entry is None:
        errors.append(outcome_bytes("not-found", f"Group/{job.group_id} has no version updated before _until", "information"))
        return [], _write_errors(folder, errors), None
    if job.since and parse_instant(entry.last_updated) <= parse_instant(job.since):
        # Every resource of the list is derived from the list's content, and the Group's version
        # changes whenever that content does: an unchanged version means nothing changed since.
        return [], _write_errors(folder, errors), entry.month
    wanted: dict[str, set[str]] = {}
    writers: dict[str, _SplitWriter] = {t: _SplitWriter(folder, t, max_bytes) for t in job.types}
    try:
        check("Group")
        _export_group(job, entry, wanted, writers.get("Group"), errors)
        export = entry.export
        for hop, reaches in _HOPS:
            if hop in writers or any(t in writers for t in reaches):
                check(hop)
                _copy_lines(export, hop, wanted, writers.get(hop), collect=True, check=check)
        for resource_type in _WRITE_ORDER:
            if resource_type in writers and resource_type not in ("Group", "Coverage", "PractitionerRole"):
                check(resource_type)
                _copy_lines(export, resource_type, wanted, writers[resource_type], collect=False, check=check)
    finally:
        for w in writers.values():
            w.close()
    output = [f for t in _WRITE_ORDER if t in writers for f in writers[t].files]
    return output, _write_errors(folder, errors), entry.month


def _export_group(job: Job, entry: GroupEntry, wanted: dict[str, set[str]], writer: _SplitWriter | None, errors: list[bytes]) -> None:
    def add(resource_type: str, resource_id: str) -> None:
        wanted.setdefault(resource_type, set()).add(resource_id)

    if not job.patients:
        if writer is not None:
            writer.write_line(_tee_refs(entry.read_chunks(), add))
        else:
            for t, i in entry.references():
                add(t, i)
        return
    split = split_group(entry.line())
    requested = {p.removeprefix("Patient/") for p in job.patients}
    kept: list[bytes] = []
    found: set[str] = set()
    for index in range(len(split)):
        member = split.member(index)
        entity = re.search(rb'"entity":\{"reference":"Patient/([^"]+)"', member)
        pid = entity.group(1).decode() if entity else None
        if pid in requested:
            kept.append(member)
            found.add(pid)
    for ref in job.patients:
        if ref.removeprefix("Patient/") not in found:
            errors.append(outcome_bytes("not-found", f"{ref} is not a member of Group/{job.group_id}; ignored", "warning"))
    head = split.head
    line = head[:-1] + b',"member":[' + b",".join(kept) + b"]}" if kept else head
    for t, i in _refs_of(line):
        add(t, i)
    if writer is not None:
        writer.write_line(line)


def _refs_of(data: bytes) -> Iterator[tuple[str, str]]:
    from atr_pipeline.api.catalog import _REF

    for match in _REF.finditer(data):
        yield match.group(1).decode(), match.group(2).decode()


def _tee_refs(chunks: Iterator[bytes], add: Any) -> Iterator[bytes]:
    """Pass the chunks through while collecting every reference they hold."""
    from atr_pipeline.api.catalog import _REF

    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = data.rfind(b"}") + 1
        for match in _REF.finditer(data, 0, cut):
            add(match.group(1).decode(), match.group(2).decode())
        carry = data[cut:]
        yield chunk
    for match in _REF.finditer(carry):
        add(match.group(1).decode(), match.group(2).decode())


def _copy_lines(export: MonthExport, resource_type: str, wanted: dict[str, set[str]], writer: _SplitWriter | None,
                *, collect: bool, check: Any) -> None:
    ids = wanted.get(resource_type)
    if not ids:
        return
    for name in export.files_of(resource_type):
        for n, line in enumerate(export.iter_lines(name)):
            if n % 50_000 == 0:
                check()
            found = _ID.match(line)
            if found is None or found.group(1).decode() not in ids:
                continue
            line = line.rstrip(b"\r\n")
            if collect:
                for t, i in _refs_of(line):
                    wanted.setdefault(t, set()).add(i)
            if writer is not None:
                writer.write_line(line)


def _write_errors(folder: Path, errors: list[bytes]) -> list[dict[str, Any]]:
    if not errors:
        return []
    name = "OperationOutcome.001.ndjson"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(e + b"\n" for e in errors))
    return [{"type": "OperationOutcome", "file": name, "count": len(errors)}]
