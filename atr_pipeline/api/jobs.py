"""``$davinci-data-export`` jobs: one JSON file per job, files streamed from the published NDJSON.

A job is ``ATR_HOME/api/jobs/<job_id>/job.json`` (its whole state, rewritten atomically at each
step, 0600) plus its NDJSON files beside it, so a job survives a restart: jobs found unfinished at
start-up are run again from the beginning. Completed jobs are kept ``retention`` (default 24 hours,
``ATR_API_JOB_RETENTION_HOURS``) after completion, then a clean-up loop deletes them; ``DELETE`` on
the status URL cancels a job and deletes its files at once.

Streaming: the Group line is copied (or, with ``patient``, cut to those members) chunk by chunk
while the references of its members are collected; Coverage and PractitionerRole lines then add
what they refer to (the subscriber RelatedPerson, the payer, the Practitioner behind a role).
Each published file of a wanted type goes through a polars streaming filter (scan, keep the lines
whose id was referred to, sink) straight into the job folder, so only the referenced ids are held
in memory, never the resources, and the lines are the published bytes.
Jobs run in worker processes (``--export-workers``, default 2), so exports never slow the request
handlers. With ``patient``, the Group line is read whole to cut it to those members (known limit).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import polars as pl

from atr_pipeline.api.catalog import (
    CHUNK,
    Catalog,
    CatalogView,
    GroupEntry,
    MonthExport,
)
from atr_pipeline.api.clients import Client, load_client
from atr_pipeline.api.fhir_errors import outcome_bytes
from atr_pipeline.api.reads import group_entries
from atr_pipeline.api.state import api_home, owner_dir
from atr_pipeline.publish.group_split import split_group

log = logging.getLogger(__name__)

ACTIVE = ("accepted", "in-progress")
DEFAULT_RETENTION = timedelta(hours=float(os.environ.get("ATR_API_JOB_RETENTION_HOURS") or 24))
DEFAULT_FILE_BYTES = int(os.environ.get("ATR_API_EXPORT_FILE_BYTES") or 256 * 2**20)
MAX_ACTIVE_PER_CLIENT = 5
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
    moment = datetime.fromisoformat(text)  # 3.11 reads a trailing Z
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

    def add_file(self, path: Path) -> None:
        """Lines already written to ``path`` (each ending in a newline) become the next part, or
        are copied line by line when the part size asks for a split."""
        size = path.stat().st_size
        if not size:
            return
        if size <= self.max_bytes:
            self.close()
            name = f"{self.type}.{len(self.files) + 1:03d}.ndjson"
            lines = 0
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    lines += chunk.count(b"\n")
            os.chmod(path, 0o600)
            os.rename(path, self.folder / name)
            self.files.append({"type": self.type, "file": name, "count": lines})
            return
        with open(path, "rb") as fh:
            for line in fh:
                self.write_line(line.rstrip(b"\n"))

    def _next(self) -> BinaryIO:
        self.close()
        return self._open()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class JobStore:
    """Job files under ``ATR_HOME/api/jobs``; with ``workers`` > 0 also the pool of export processes.

    Exports run in worker processes, not threads: filtering a month line by line is CPU work in
    Python, and in the server's process it would hold the GIL the request handlers need.
    A worker indexes the published months itself and reports only through the job file.
    """

    def __init__(self, home: Path, *, retention: timedelta = DEFAULT_RETENTION, max_file_bytes: int = DEFAULT_FILE_BYTES,
                 workers: int = 2):
        self.home = Path(home)
        self.root = owner_dir(api_home(self.home) / "jobs")
        self.retention = retention
        self.max_file_bytes = max_file_bytes
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) if workers else None

    # ------------------------------------------------------------------ persistence

    def folder(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def save(self, job: Job) -> None:
        """Rewrite job.json atomically; Cancelled when the job's folder is gone (DELETE won)."""
        folder = self.folder(job.id)
        tmp = folder / f".job.{uuid.uuid4().hex[:8]}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            raise Cancelled() from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(asdict(job), option=orjson.OPT_INDENT_2))
        try:
            os.replace(tmp, folder / "job.json")
        except FileNotFoundError:
            raise Cancelled() from None

    def load(self, job_id: str) -> Job | None:
        try:
            return Job(**orjson.loads((self.folder(job_id) / "job.json").read_bytes()))
        except (KeyError, FileNotFoundError, NotADirectoryError):
            return None

    def all_jobs(self) -> list[Job]:
        found = (self.load(p.name) for p in sorted(self.root.iterdir()) if p.is_dir() and _JOB_ID.match(p.name))
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

    def submit(self, job: Job) -> None:
        assert self._pool is not None, "a JobStore without workers only reads and writes job files"
        self._pool.submit(_execute, str(self.home), job.id, self.max_file_bytes, self.retention.total_seconds())

    def cancel(self, job_id: str) -> None:
        """Move the job's folder out of the way (one rename, so a worker's next write fails), then delete it."""
        trash = self.root / f".cancelled-{job_id}"
        try:
            os.rename(self.folder(job_id), trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def cleanup(self, now: datetime | None = None) -> list[str]:
        """Delete jobs whose retention has passed, and leftovers of cancelled ones; returns the expired ids."""
        now = now or datetime.now(UTC)
        gone = []
        for job in self.all_jobs():
            if job.expires and parse_instant(job.expires) <= now:
                self.cancel(job.id)
                gone.append(job.id)
        for stray in self.root.glob(".cancelled-*"):
            shutil.rmtree(stray, ignore_errors=True)
        return gone

    def resume(self) -> list[str]:
        """Run again every job a stopped server left unfinished."""
        resumed = []
        for job in self.all_jobs():
            if job.status in ACTIVE:
                resumed.append(job.id)
                self.submit(job)
        return resumed

    def shutdown(self) -> None:
        """Stop the workers now; a job they were running stays in-progress and is resumed at the next start."""
        if self._pool is None:
            return
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=5)

    def run(self, job_id: str, catalog: Catalog) -> None:
        """Run one job to its end (in a worker process); every outcome is written to its job file."""
        job = self.load(job_id)
        if job is None or job.status not in ACTIVE:
            return
        folder = self.folder(job.id)
        try:
            for old in folder.glob("*.ndjson"):
                old.unlink()  # a resumed job starts over
            job.status, job.progress = "in-progress", "reading the Group"
            self.save(job)
            client = load_client(self.home, job.client_id)
            if client is None:
                raise LookupError("the client was removed")
            try:
                output, errors, month = run_export(job, catalog.snapshot(force=True), client, folder, self.max_file_bytes,
                                                   self._check(job))
            except Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure becomes the job's OperationOutcome
                log.warning("export job %s failed: %s", job.id, type(exc).__name__)
                job.status, job.failure = "failed", f"export failed ({type(exc).__name__})"
            else:
                job.output, job.error, job.month = output, errors, month
                job.status, job.progress = "completed", "complete"
            job.finished = now_instant()
            job.expires = (datetime.now(UTC) + self.retention).isoformat()
            self.save(job)
        except (Cancelled, FileNotFoundError):
            return  # DELETE removed the folder while the job ran

    def _check(self, job: Job) -> Any:
        def check(progress: str | None = None) -> None:
            if not self.folder(job.id).is_dir():
                raise Cancelled()
            if progress and progress != job.progress:
                job.progress = progress
                self.save(job)

        return check


_catalogs: dict[str, Catalog] = {}


def _execute(home: str, job_id: str, max_file_bytes: int, retention_seconds: float) -> None:
    """Entry point of an export worker process: one job."""
    catalog = _catalogs.setdefault(home, Catalog(Path(home) / "exports"))
    store = JobStore(Path(home), retention=timedelta(seconds=retention_seconds), max_file_bytes=max_file_bytes, workers=0)
    store.run(job_id, catalog)


def choose_version(entries: list[GroupEntry], until: str | None) -> GroupEntry | None:
    """The latest published version updated no later than ``until`` (all when ``until`` is None)."""
    if until is None:
        return entries[-1]
    limit = parse_instant(until)
    eligible = [e for e in entries if parse_instant(e.last_updated) <= limit]
    return eligible[-1] if eligible else None


def run_export(job: Job, view: CatalogView, client: Client, folder: Path, max_bytes: int, check: Any) -> tuple[list, list, str | None]:
    # Without _until, the kick-off time: a month published while the job waited is not exported
    # under a transactionTime that precedes it.
    entry = choose_version(group_entries(view, client, job.group_id), job.until or job.transaction_time)
    errors: list[bytes] = []
    if entry is None:
        errors.append(outcome_bytes("not-found", f"Group/{job.group_id} has no version updated before _until", "information"))
        return [], _write_errors(folder, errors), None
    if job.since and parse_instant(entry.last_updated) <= parse_instant(job.since):
        # Every resource of the list is derived from the list's content, and the Group's version
        # changes whenever that content does: an unchanged version means nothing changed since.
        return [], _write_errors(folder, errors), entry.month
    found = _RefCollector()
    writers: dict[str, _SplitWriter] = {t: _SplitWriter(folder, t, max_bytes) for t in job.types}
    try:
        check("Group")
        _export_group(job, entry, found, writers.get("Group"), errors)
        wanted = found.series()
        del found
        export = entry.export
        for hop, reaches in _HOPS:
            if hop in writers or any(t in writers for t in reaches):
                check(hop)
                _copy_lines(export, hop, wanted, writers.get(hop), folder, collect=True, check=check)
        for resource_type in _WRITE_ORDER:
            if resource_type in writers and resource_type not in ("Group", "Coverage", "PractitionerRole"):
                check(resource_type)
                _copy_lines(export, resource_type, wanted, writers[resource_type], folder, collect=False, check=check)
    finally:
        for w in writers.values():
            w.close()
    output = [f for t in _WRITE_ORDER if t in writers for f in writers[t].files]
    return output, _write_errors(folder, errors), entry.month


class _RefCollector:
    """References gathered as polars columns: a 1M-member Group refers to 2M ids, ~250 MB as a
    Python set, ~100 MB here, and no Python loop runs per reference."""

    def __init__(self) -> None:
        self._parts: list[pl.Series] = []

    def add_many(self, refs: list[bytes]) -> None:
        """``refs``: ``b"Type/id"`` values, e.g. from ``_REF_WHOLE.findall``."""
        if refs:
            self._parts.append(pl.Series("ref", refs, dtype=pl.Binary()).unique())

    def add(self, resource_type: str, resource_id: str) -> None:
        self.add_many([f"{resource_type}/{resource_id}".encode()])

    def series(self) -> dict[str, pl.Series]:
        if not self._parts:
            return {}
        refs = (pl.concat(self._parts).unique().cast(pl.String()).str.split_exact("/", 1).struct.rename_fields(["type", "id"])
                .struct.unnest())
        self._parts = []
        return {str(t): part.get_column("id").sort() for (t,), part in refs.partition_by("type", as_dict=True).items()}


def _export_group(job: Job, entry: GroupEntry, found: _RefCollector, writer: _SplitWriter | None, errors: list[bytes]) -> None:
    """Write the Group (whole, or cut to ``job.patients``) and collect what it refers to."""
    if not job.patients:
        chunks = _tee_refs(entry.read_chunks(), found)
        if writer is not None:
            writer.write_line(chunks)
        else:
            for _ in chunks:
                pass
        return
    split = split_group(entry.line())
    requested = {p.removeprefix("Patient/") for p in job.patients}
    kept: list[bytes] = []
    members: set[str] = set()
    for index in range(len(split)):
        member = split.member(index)
        entity = re.search(rb'"entity":\{"reference":"Patient/([^"]+)"', member)
        pid = entity.group(1).decode() if entity else None
        if pid in requested:
            kept.append(member)
            members.add(pid)
    for ref in job.patients:
        if ref.removeprefix("Patient/") not in members:
            errors.append(outcome_bytes("not-found", f"{ref} is not a member of Group/{job.group_id}; ignored", "warning"))
    head = split.head
    line = head[:-1] + b',"member":[' + b",".join(kept) + b"]}" if kept else head
    found.add_many(_REF_WHOLE.findall(line))
    if writer is not None:
        writer.write_line(line)


_REF_WHOLE = re.compile(rb'"reference":"((?:Patient|Coverage|Practitioner|PractitionerRole|Organization|RelatedPerson|Location)/[^"\\/]+)"')


def _tee_refs(chunks: Iterator[bytes], found: _RefCollector) -> Iterator[bytes]:
    """Pass the chunks through while collecting every reference they hold."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = data.rfind(b"}") + 1  # a reference string never holds "}", so no match is cut in two
        found.add_many(_REF_WHOLE.findall(data, 0, cut))
        carry = data[cut:]
        yield chunk
    found.add_many(_REF_WHOLE.findall(carry))


_ID_TEXT = r'^\{"resourceType":"[A-Za-z]+","id":"([^"]+)"'
_REF_TEXT = r'"reference":"(?:Patient|Coverage|Practitioner|PractitionerRole|Organization|RelatedPerson|Location)/[^"\\/]+"'


def _lines(path: str) -> pl.LazyFrame:
    # One string column per line: JSON text never holds a raw U+001F, so no line is ever split.
    return pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["json"],
                       schema={"json": pl.String()})


def _copy_lines(export: MonthExport, resource_type: str, wanted: dict[str, pl.Series], writer: _SplitWriter | None,
                folder: Path, *, collect: bool, check: Any) -> None:
    """Keep the lines of a type whose id the Group reaches: a polars streaming filter from the
    descriptor the catalog opened (so the same publication) into the job folder."""
    ids = wanted.get(resource_type)
    if ids is None or not len(ids):
        return
    # A semi join, not is_in: is_in rebuilt its set per streaming batch (2x slower at 1M ids here).
    keep = ids.to_frame().lazy()
    for n, name in enumerate(export.files_of(resource_type)):
        check()
        scratch = folder / f".{resource_type}.{n}.filtering"
        try:
            kept = (_lines(export.descriptor_path(name))
                    .with_columns(pl.col("json").str.extract(_ID_TEXT, 1).alias("id"))
                    .join(keep, on="id", how="semi", maintain_order="left")  # the published order
                    .select("json"))
            kept.sink_csv(scratch, include_header=False, quote_style="never")
            if collect:
                _add_references(wanted, _lines(str(scratch)))
            if writer is not None:
                writer.add_file(scratch)
        finally:
            scratch.unlink(missing_ok=True)


def _add_references(wanted: dict[str, pl.Series], lines: pl.LazyFrame) -> None:
    """Add every (type, id) the lines refer to, without making Python strings of them."""
    refs = (lines.select(pl.col("json").str.extract_all(_REF_TEXT).alias("ref")).explode("ref").drop_nulls()
            .select(pl.col("ref").str.extract(r'^"reference":"([A-Za-z]+)/', 1).alias("type"),
                    pl.col("ref").str.extract(r'/([^"]+)"$', 1).alias("id"))
            .unique().collect(engine="streaming"))  # never the whole file in memory
    for (resource_type,), part in refs.partition_by("type", as_dict=True).items():
        known = wanted.get(str(resource_type))
        ids = part.get_column("id") if known is None else pl.concat([known, part.get_column("id")])
        wanted[str(resource_type)] = ids.unique().sort()


def _write_errors(folder: Path, errors: list[bytes]) -> list[dict[str, Any]]:
    if not errors:
        return []
    name = "OperationOutcome.001.ndjson"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(e + b"\n" for e in errors))
    return [{"type": "OperationOutcome", "file": name, "count": len(errors)}]
