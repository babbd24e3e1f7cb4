"""One landed file through every stage, as plain functions the CLI and Dagster both call.

    landed file -> layouts.read_file -> validate.validate_rows -> history (snapshot + diff)
      -> fhir.build_resources -> conform.check_ndjson_frames -> publish.write_bulk_export

Each stage function below takes and returns plain values so a Dagster asset can wrap exactly
one of them; ``process_file`` chains them for the CLI. A refused file (FileRefused) stops
before history: nothing from it reaches the history or FHIR stages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from atr_pipeline.canonical import MEMBER_ENTRY_KEY, REJECT_SCHEMA
from atr_pipeline.config import Settings
from atr_pipeline.errors import AtrError, FileRefused
from atr_pipeline.history.hashes import contract_content_hashes
from atr_pipeline.layouts.read import ReadResult, read_file
from atr_pipeline.layouts.spec import MappingSpec, load_mapping
from atr_pipeline.publish.export import StagedResources, crash_point
from atr_pipeline.sources.landing import LandedFile

if TYPE_CHECKING:  # sources.sftp (paramiko) is imported only when a run uses SFTP
    from atr_pipeline.conform.columns import Proof
    from atr_pipeline.sources.sftp import SftpConfig

log = logging.getLogger("atr_pipeline")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class ValidatedFile:
    """Outcome of reading + validating one file (no PHI: counts, rules, line numbers)."""

    landed: LandedFile
    accepted: pl.DataFrame
    rejects: pl.DataFrame  # REJECT_SCHEMA, structural + rule rejects
    records_read: int
    rows_accepted: int
    rows_rejected: int
    rejects_by_rule: dict[str, int]
    warnings_by_rule: dict[str, int]
    control: dict[str, object]
    source_columns: list[str]

    @property
    def rows_read(self) -> int:
        return self.records_read


@dataclass
class PublishedMonth:
    source_id: str
    month: date
    export_dir: Path | None  # None when conformance failed: nothing was exported
    resources_by_type: dict[str, int]
    change_types: dict[str, int]
    conformance_ok: bool
    conformance_errors: dict[str, int]
    group_versions: dict[str, int]
    transaction_time: datetime


@dataclass
class FileOutcome:
    file_name: str
    source_id: str
    month: date | None
    status: str  # processed | refused | skipped
    records_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    rejects_by_rule: dict[str, int] = field(default_factory=dict)
    resources_by_type: dict[str, int] = field(default_factory=dict)
    export_dir: Path | None = None
    rejects_csv: Path | None = None
    message: str = ""
    warnings_by_rule: dict[str, int] = field(default_factory=dict)
    change_types: dict[str, int] = field(default_factory=dict)  # new / changed / nochange / dropped


def month_key(month: date) -> str:
    return f"{month:%Y-%m}"


# ---------------------------------------------------------------- read + validate


def read_landed(landed: LandedFile, spec: MappingSpec) -> ReadResult:
    """Cut a landed file into canonical rows; raises FileRefused for a broken file."""
    return read_file(landed.path, spec, sha256=landed.sha256, file_name=landed.original_name)


def validate_read(read: ReadResult, landed: LandedFile, spec: MappingSpec, *, today: date | None = None) -> ValidatedFile:
    """Apply every row rule; split accepted rows from reject records."""
    from atr_pipeline.validate.rules import validate_rows

    # The file's own date (header date or the month's end), so a re-run never changes results.
    result = validate_rows(read.rows, spec, today=today or read.reference_date or date.today())
    rejects = pl.concat([read.structural_rejects.select(REJECT_SCHEMA.names()), result.rejects.select(REJECT_SCHEMA.names())])
    rejects = rejects.sort("line_number", "field", "rule")
    structural_lines = read.structural_rejects.get_column("line_number").n_unique() if read.structural_rejects.height else 0
    rows_rejected = result.rows_rejected + structural_lines
    by_rule = dict(result.counts_by_rule)
    if read.structural_rejects.height:
        for rule, n in read.structural_rejects.group_by("rule").agg(pl.col("line_number").n_unique()).iter_rows():
            by_rule[rule] = by_rule.get(rule, 0) + n
    validated = ValidatedFile(
        landed=landed,
        accepted=result.accepted,
        rejects=rejects,
        records_read=read.records_read,
        rows_accepted=result.rows_accepted,
        rows_rejected=rows_rejected,
        rejects_by_rule=dict(sorted(by_rule.items())),
        warnings_by_rule=dict(result.warnings_by_rule),
        control=control_dict(read),
        source_columns=list(read.source_columns),
    )
    # The invariant every later number relies on: nothing read goes unaccounted for.
    if validated.records_read != validated.rows_accepted + validated.rows_rejected:
        raise AssertionError(
            f"{landed.original_name}: {validated.records_read} records read but "
            f"{validated.rows_accepted} accepted + {validated.rows_rejected} rejected"
        )
    return validated


def refuse_if_over_threshold(validated: ValidatedFile, spec: MappingSpec) -> None:
    """Raise FileRefused when the rejected share is above the mapping's threshold."""
    from atr_pipeline.validate.rejects import check_reject_threshold

    # records_read and rows_rejected both include the structural rejects already.
    check_reject_threshold(validated, file_name=validated.landed.original_name, threshold=spec.reject_threshold, minimum=spec.reject_min_rows)


def control_dict(read: ReadResult) -> dict[str, object]:
    c = read.control
    return {
        "expected_records": c.expected_records,
        "actual_records": c.actual_records,
        "expected_hash": None if c.expected_hash is None else str(c.expected_hash),
        "actual_hash": None if c.actual_hash is None else str(c.actual_hash),
    }


def write_rejects(validated: ValidatedFile, settings: Settings, spec: MappingSpec) -> tuple[Path, list[bytes]]:
    """Rejects CSV (for the sender) and OperationOutcome NDJSON lines (for the export's error list)."""
    from atr_pipeline.validate.rejects import rejects_to_operation_outcomes, write_rejects_csv

    landed = validated.landed
    folder = settings.rejects_dir / spec.source_id / month_key(landed.month)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    csv_path = folder / f"{Path(landed.original_name).stem}.rejects.csv"
    write_rejects_csv(validated.rejects, csv_path, source_file=landed.path, spec=spec)
    outcomes = rejects_to_operation_outcomes(validated.rejects)
    return csv_path, outcomes


# ---------------------------------------------------------------- history


def record_history(validated: ValidatedFile, settings: Settings, spec: MappingSpec) -> None:
    from atr_pipeline.history.locking import source_lock
    from atr_pipeline.history.store import SnapshotLineage

    landed = validated.landed
    lineage = SnapshotLineage(
        file_name=landed.original_name, file_sha256=landed.sha256, received_at=landed.received_at, rows=validated.rows_accepted
    )
    store = _store(settings, spec.source_id)
    # Under the source lock: no build of this source reads history halfway through a month change.
    with source_lock(settings.home, spec.source_id):
        store.record_snapshot(validated.accepted, source_id=spec.source_id, month=landed.month, lineage=lineage)


def _store(settings: Settings, source_id: str):
    """The source's history store, after the home's format was checked (and upgraded)."""
    from atr_pipeline.history.stores import history_store

    return history_store(settings, source_id)


# ---------------------------------------------------------------- FHIR + conformance + export


@dataclass
class BuiltMonth:
    """The ATR resources of one source x month, staged next to their export folder.

    ``resources`` reads one type at a time back from the staged NDJSON (publish.export.
    StagedResources): the conformance check sees exactly the bytes that will be published, and
    nothing holds the whole month's JSON in memory (or in Dagster's pickled step outputs).
    ``basis`` names the snapshots the member list was diffed from (``HistoryStore.build_basis``):
    ``export_month`` rebuilds instead of publishing when history moved on since.
    """

    source_id: str
    month: date
    resources: StagedResources  # type -> (id, json), sorted by id, read on access
    member_entries: int
    change_types: dict[str, int]
    group_versions: dict[str, int]
    transaction_time: datetime
    basis: str = ""
    # What the typed columns proved before the templates wrote (conform/columns.py): check_month
    # skips the regex proof of those types' text. None: prove everything from the text.
    proof: Proof | None = None

    @property
    def resources_by_type(self) -> dict[str, int]:
        return dict(self.resources.heights)


def export_dir_for(settings: Settings, source_id: str, month: date) -> Path:
    return settings.exports_dir / source_id / month_key(month)


# Mappings seen by build_month in this process, so export_month can rebuild months of a source
# whose mapping file is not in the mappings folder (``atr run --mapping some/where.yaml``).
_SPECS: dict[str, MappingSpec] = {}


def build_month(spec: MappingSpec, month: date, settings: Settings, *, progress: Progress = _quiet) -> BuiltMonth:
    """Member list from history (with change types) -> versioned ATR resources, staged on disk."""
    from atr_pipeline.history.locking import source_lock
    from atr_pipeline.publish.export import sweep_leftovers

    _SPECS[spec.source_id] = spec
    sweep_leftovers(settings.exports_dir)
    with source_lock(settings.home, spec.source_id):
        return _build(spec, month, settings, progress)


def _build(spec: MappingSpec, month: date, settings: Settings, progress: Progress) -> BuiltMonth:
    from atr_pipeline.conform.columns import prove
    from atr_pipeline.fhir.build import BuildContext, iter_encoded, prepare
    from atr_pipeline.publish.export import stage_resources

    store = _store(settings, spec.source_id)
    basis = store.build_basis(spec.source_id, month)
    members = store.member_list(spec.source_id, month)
    change_types = dict(sorted(members.group_by("change_type").len().iter_rows())) if members.height else {}
    hashes = contract_content_hashes(members)
    now = datetime.now(UTC).replace(microsecond=0)
    versions = store.publish_group_versions(spec.source_id, month, sorted(hashes), now, content_hashes=hashes)
    # Re-publishing unchanged content keeps each Group's version and lastUpdated, so a re-run
    # writes byte-identical output; the export's transaction time is the newest Group version's.
    transaction_time = max((v.last_updated for v in versions.values()), default=now)
    progress(f"building FHIR resources for {members.height:,} member entries")
    ctx = BuildContext(
        id_key=settings.id_key,
        systems=spec.identifier_systems,
        transaction_time=transaction_time,
        group_versions={c: int(v.version_id) for c, v in versions.items()},
        group_last_updated={c: v.last_updated for c, v in versions.items()},
        group_statuses={c: v.status for c, v in versions.items()},
        intended_recipient=spec.intended_recipient,
    )
    member_entries = members.height
    # Before prepare consumes the member list: the columns as the templates will get them.
    proof = prove(members, ctx)
    # consume: the member list's columns are released as they are cleaned (one copy, not two)
    rows = prepare(members, ctx, consume=True) if member_entries else None
    del members  # the prepared rows hold everything the builders need
    # Each type is written to the staging folder as soon as it is built and then dropped; the
    # generator holds the only reference to the rows, so they go after the last builder.
    resources = iter_encoded(rows, ctx)
    del rows
    staged = stage_resources(export_dir_for(settings, spec.source_id, month), resources)
    crash_point("staged")
    return BuiltMonth(
        source_id=spec.source_id,
        month=month,
        resources=staged,
        member_entries=member_entries,
        change_types=change_types,
        group_versions={c: v.version_id for c, v in versions.items()},
        transaction_time=transaction_time,
        basis=basis,
        proof=proof,
    )


def check_month(built: BuiltMonth, *, structural: str = "auto", progress: Progress = _quiet):
    """ATR conformance of what build_month produced (cheap rules on all, structure on all or a sample)."""
    from atr_pipeline.conform.checker import check_ndjson_frames
    from atr_pipeline.conform.columns import NOTHING
    from atr_pipeline.conform.plan import structural_plan

    total = sum(built.resources_by_type.values())
    # Structure (R4B models) on every resource in small runs, a seeded sample in large ones
    # (conform/plan.py: `atr conform` applies the same rule). Cheap rules run on every resource.
    planned, sample_size = structural_plan(total)
    if structural == "auto":
        structural = planned
    progress(f"checking conformance of {total:,} resources (structural: {structural})")
    # The types the build's typed columns proved (conform/columns.py) skip the regex scan of
    # their text; every line is still parsed, the sample still gets the full structure check.
    proof = built.proof or NOTHING
    return check_ndjson_frames(built.resources, structural=structural, sample_size=sample_size, proof=proof)


def export_month(
    built: BuiltMonth,
    settings: Settings,
    *,
    errors: list[bytes] | None,
    progress: Progress = _quiet,
    spec: MappingSpec | None = None,
) -> Path:
    """Publish the staged build as the month's bulk export folder (manifest + NDJSON), replacing
    that month's previous export in one rename. Publishing the same build again is a no-op.

    Month order (docs/OPERATIONS.md): under the source's lock, a build whose history moved on
    since (an earlier month arrived, or another run replaced the staged build) is built again
    first, and every later published month that is now stale is rebuilt on top of this one.
    """
    from atr_pipeline.history.locking import source_lock

    spec = _spec_for(built.source_id, settings, spec)
    with source_lock(settings.home, built.source_id):
        export_dir = _publish_current(built, spec, settings, errors=errors, progress=progress)
        rebuild_stale_months(spec, settings, progress=progress)
    return export_dir


def _spec_for(source_id: str, settings: Settings, spec: MappingSpec | None) -> MappingSpec:
    if spec is not None:
        return spec
    return _SPECS.get(source_id) or load_mapping(settings.mappings_dir / f"{source_id}.yaml")


def _publish_current(
    built: BuiltMonth, spec: MappingSpec, settings: Settings, *, errors: list[bytes] | None, progress: Progress
) -> Path:
    """Publish ``built``, or a fresh build when it is no longer what history says (lock held)."""
    from atr_pipeline.errors import AtrError
    from atr_pipeline.publish.export import publish_staged

    store = _store(settings, built.source_id)
    current = built.resources.is_staged() or built.resources.is_published()
    if not current or built.basis != store.build_basis(built.source_id, built.month):
        progress(f"history of {built.source_id} changed since {month_key(built.month)} was built: building it again")
        built = _build(spec, built.month, settings, progress)
        report = check_month(built, progress=progress)
        if not report.ok:
            built.resources.discard()
            errors_by_rule = {r.rule: r.count for r in report.results if r.severity == "error"}
            raise AtrError(f"{built.source_id} {month_key(built.month)}: the rebuild failed conformance {errors_by_rule}; nothing exported")
    export_dir = built.resources.out_dir
    progress(f"publishing bulk export to {export_dir}")
    publish_staged(
        built.resources,
        errors=errors,
        transaction_time=built.transaction_time,
        request=f"atr run --source {built.source_id} --month {month_key(built.month)}",
    )
    crash_point("published")
    store.record_published(built.source_id, built.month, built.basis, built.group_versions)
    return export_dir


def rebuild_stale_months(spec: MappingSpec, settings: Settings, *, progress: Progress = _quiet) -> list[date]:
    """Rebuild, in month order, every published month of the source whose export history no
    longer backs (see ``HistoryStore.months_to_rebuild``); returns the months rebuilt."""
    from atr_pipeline.history.locking import source_lock
    from atr_pipeline.publish.export import iter_ndjson

    rebuilt: list[date] = []
    with source_lock(settings.home, spec.source_id):
        store = _store(settings, spec.source_id)
        # Each rebuild can make a later month stale (its versions): loop until none is; every
        # pass rebuilds the earliest stale month, so this ends after at most one pass per month.
        for _ in range(1000):
            stale = store.months_to_rebuild(spec.source_id)
            if not stale:
                break
            month = stale[0]
            progress(f"{spec.source_id} {month_key(month)} was published before an earlier month changed: rebuilding it")
            export_dir = export_dir_for(settings, spec.source_id, month)
            # The month's rejects travel with its export (OperationOutcome); keep them as they are.
            try:
                errors = list(iter_ndjson(export_dir, "OperationOutcome"))
            except AtrError:
                errors = []
            built = _build(spec, month, settings, progress)
            _publish_current(built, spec, settings, errors=errors, progress=progress)
            rebuilt.append(month)
    return rebuilt


def publish_month(
    spec: MappingSpec,
    month: date,
    settings: Settings,
    *,
    errors: list[bytes] | None = None,
    structural: str = "auto",
    progress: Progress = _quiet,
) -> PublishedMonth:
    """Build, check and export one source x month. Nothing is exported when conformance fails:
    one invalid resource can make a consumer's whole load fail."""
    from atr_pipeline.history.locking import source_lock

    with source_lock(settings.home, spec.source_id):
        built = build_month(spec, month, settings, progress=progress)
        report = check_month(built, structural=structural, progress=progress)
        if report.ok:
            export_dir: Path | None = export_month(built, settings, errors=errors, progress=progress, spec=spec)
        else:
            built.resources.discard()
            export_dir = None
    return PublishedMonth(
        source_id=spec.source_id,
        month=month,
        export_dir=export_dir,
        resources_by_type=built.resources_by_type,
        change_types=built.change_types,
        conformance_ok=report.ok,
        conformance_errors={r.rule: r.count for r in report.results if r.severity == "error"},
        group_versions=built.group_versions,
        transaction_time=built.transaction_time,
    )


# ---------------------------------------------------------------- the whole chain, for the CLI


def process_landed(
    landed: LandedFile,
    spec: MappingSpec,
    settings: Settings,
    *,
    out_dir: Path | None = None,
    progress: Progress = _quiet,
    today: date | None = None,
    reprocess: bool = False,
) -> FileOutcome:
    """Every stage for one landed file. Refusals come back as an outcome, never as a traceback.

    A second run of the same delivery waits for the first (the delivery's lock) and then
    reports it ``skipped`` as already processed, unless ``reprocess``.
    """
    from atr_pipeline.history.locking import delivery_lock

    _SPECS[spec.source_id] = spec
    with delivery_lock(settings.home, landed.sha256):
        entry = _ledger(settings).get(landed.sha256)
        if entry is not None and entry.status != "landed" and not reprocess:
            return FileOutcome(
                file_name=landed.original_name, source_id=spec.source_id, month=landed.month, status="skipped",
                message=f"already {entry.status} (use --reprocess to run it again)",
            )
        return _process(landed, spec, settings, out_dir=out_dir, progress=progress, today=today)


def _process(
    landed: LandedFile, spec: MappingSpec, settings: Settings, *, out_dir: Path | None, progress: Progress, today: date | None
) -> FileOutcome:
    from atr_pipeline.history.locking import source_lock
    from atr_pipeline.publish.export import sweep_leftovers

    ledger = _ledger(settings)
    sweep_leftovers(settings.exports_dir)
    if out_dir is not None:
        sweep_leftovers(out_dir / spec.source_id)
    outcome = FileOutcome(file_name=landed.original_name, source_id=spec.source_id, month=landed.month, status="processed")
    try:
        progress(f"{landed.original_name}: reading and validating")
        validated = validate_read(read_landed(landed, spec), landed, spec, today=today)
        outcome.records_read = validated.records_read
        outcome.rows_accepted = validated.rows_accepted
        outcome.rows_rejected = validated.rows_rejected
        outcome.rejects_by_rule = validated.rejects_by_rule
        outcome.warnings_by_rule = validated.warnings_by_rule
        # Rejects are written before the threshold check: a refused file's sender needs them most.
        csv_path, outcomes = write_rejects(validated, settings, spec)
        outcome.rejects_csv = csv_path
        return_rejects(csv_path, validated.rows_rejected)
        refuse_if_over_threshold(validated, spec)
    except FileRefused as refused:
        ledger.mark(landed.sha256, "refused", refused.rule)
        outcome.status = "refused"
        where = f" (line {refused.line_number})" if refused.line_number else ""
        outcome.message = f"refused ({refused.rule}){where}: {refused.reason}"
        log.info("file refused: %s", refused)
        return outcome
    # From the diff to the publish (and the rebuild of later months) one run per source at a time.
    with source_lock(settings.home, spec.source_id):
        progress(f"{landed.original_name}: recording {validated.rows_accepted:,} rows in history")
        record_history(validated, settings, spec)
        del validated  # the accepted rows are in history now; the build reads them from there
        crash_point("recorded")
        published = publish_month(spec, landed.month, settings, errors=outcomes, progress=progress)
    if published.export_dir is None:
        outcome.status = "refused"
        outcome.message = f"conformance errors, nothing exported: {published.conformance_errors}"
        ledger.mark(landed.sha256, "refused", "conformance")
        return outcome
    if out_dir is not None:
        _copy_export(published.export_dir, out_dir / spec.source_id / month_key(landed.month))
        outcome.export_dir = out_dir / spec.source_id / month_key(landed.month)
        _refresh_copies(settings.exports_dir / spec.source_id, out_dir / spec.source_id)
    else:
        outcome.export_dir = published.export_dir
    outcome.resources_by_type = published.resources_by_type
    outcome.change_types = published.change_types
    ledger.mark(landed.sha256, "processed")
    return outcome


def _refresh_copies(exports: Path, copies: Path) -> None:
    """Copy again every month under ``copies`` whose export was rebuilt since (month order)."""
    from atr_pipeline.publish.export import MANIFEST_NAME

    for copy in sorted(copies.iterdir()) if copies.is_dir() else []:
        src = exports / copy.name
        if copy.name.startswith(".") or not (src / MANIFEST_NAME).is_file():
            continue
        mine = copy / MANIFEST_NAME
        if not mine.is_file() or mine.read_bytes() != (src / MANIFEST_NAME).read_bytes():
            _copy_export(src, copy)


def _copy_export(src: Path, dest: Path) -> None:
    """Put an export under ``dest`` atomically (owner-only temporary sibling + rename), replacing
    an older one.

    Each file is hard-linked when ``dest`` is on the export's file system, so the month is
    written once (a 1M-member month is ~2.5 GB: copying it cost seconds of kernel time and as
    much page cache again); elsewhere it is copied. Sharing the files is safe because a published
    export file is never changed in place: a new export, a load report or a checkpoint arrive as
    new files (and ``.load_state/`` is a folder, not linked). The temporary names carry the pid,
    so ``sweep_leftovers`` removes those of a killed run.
    """
    import os
    import shutil
    import uuid

    from atr_pipeline.publish.export import PARTIAL_MARK, publish_folder

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.mkdir(tmp, 0o700)
    os.chmod(tmp, 0o700)  # the NDJSON holds PHI: owner only whatever the umask
    link = True
    for item in sorted(src.iterdir()):
        if item.is_file():
            if link:
                try:
                    os.link(item, tmp / item.name)
                except OSError:  # another file system (EXDEV), or one without hard links
                    link = False
            if not link:
                shutil.copyfile(item, tmp / item.name)
            os.chmod(tmp / item.name, 0o600)
    crash_point("copying")
    publish_folder(tmp, dest)  # one atomic swap, as for the export itself


# ---------------------------------------------------------------- landing and the cross-run gate


def parse_month(value: str | date) -> date:
    if isinstance(value, date):
        return value
    y, m = value[:7].split("-")
    return date(int(y), int(m), 1)


def _ledger(settings: Settings):
    from atr_pipeline.home import ensure_home
    from atr_pipeline.sources.landing import Ledger

    ensure_home(settings)  # a home of an older release is upgraded before its ledger is read
    return Ledger.for_landing(settings.landing_dir)


def landed_from_entry(entry) -> LandedFile:
    return LandedFile(entry.path, entry.original_name, entry.source_id, entry.month, entry.sha256, entry.size, entry.received_at, entry.supersedes)


def land_path(path: Path, spec: MappingSpec, settings: Settings) -> LandedFile:
    """Land one local file. The same bytes under the same name come back as the earlier landing
    (re-running is safe); the same bytes under another name are a duplicate delivery, refused."""
    import csv

    from atr_pipeline.layouts.sniff import HEAD_BYTES, refuse_head
    from atr_pipeline.sources.landing import land_local

    # An empty or binary file is refused with its own rule before landing tries to read a
    # header month out of it (which would blame the month, or fail in the csv module). Files
    # whose month is in the name land, and the reader refuses them with the same rules.
    if spec.file.month_from == "header":
        with open(path, "rb") as fh:
            refuse_head(fh.read(HEAD_BYTES), spec.file.encoding, path.name)
    ledger = _ledger(settings)
    try:
        outcome = land_local(path, spec=spec, landing_dir=settings.landing_dir, ledger=ledger)
    except csv.Error:  # the header record could not be split (a stray line end or quote)
        raise FileRefused(path.name, "month", "the header record cannot be read, so neither can its month", 1) from None
    if outcome.status == "landed" and outcome.file is not None:
        return outcome.file
    if outcome.duplicate_of != path.name:
        raise FileRefused(path.name, "duplicate_delivery", f"same bytes as {outcome.duplicate_of}, which was already delivered")
    from atr_pipeline.layouts.files import sha256_file

    entry = ledger.get(sha256_file(path))
    if entry is None:  # pragma: no cover - the ledger said duplicate, so the entry exists
        raise FileRefused(path.name, "ledger", "landing ledger lost the earlier delivery")
    return landed_from_entry(entry)


def land_for_partition(spec: MappingSpec, month: date, settings: Settings, *, remote_name: str | None = None,
                       remote_expected=None, sftp_config: SftpConfig | None = None) -> LandedFile:
    """The delivery for one source x month: from SFTP when the run names a remote file, else the inbox.

    Several inbox files for the same month (a correction) -> the most recently modified wins,
    and it supersedes the earlier one in history. ``sftp_config`` (a ``sources.sftp.SftpConfig``;
    the Dagster asset passes its SftpResource's) defaults to the ATR_SFTP_* environment.
    """
    if remote_name:
        from atr_pipeline.sources.sftp import fetch_for_run

        # remote_expected: the size and mtime the sensor judged complete (sources.polling.RemoteFile)
        return fetch_for_run(remote_name, spec=spec, settings=settings, config=sftp_config, expected=remote_expected)
    inbox = settings.inbox_dir
    candidates = []
    if inbox.is_dir():
        for p in inbox.iterdir():
            if p.is_file() and spec.file.match(p.name):
                m = spec.month_from_name(p.name) if spec.file.month_from == "filename" else None
                if m == month or m is None:
                    candidates.append(p)
    if not candidates:
        raise FileRefused(
            f"{spec.source_id} {month_key(month)}", "no_file",
            f"no file matching {spec.file.pattern!r} for {month_key(month)} in the inbox {inbox}",
        )
    landed: list[LandedFile] = []
    for p in sorted(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name)):
        lf = land_path(p, spec, settings)
        if lf.month == month:
            landed.append(lf)
    if not landed:
        raise FileRefused(f"{spec.source_id} {month_key(month)}", "no_file", f"no file for {month_key(month)} in the inbox {inbox}")
    return landed[-1]


def mark_refused(landed: LandedFile, settings: Settings, reason: str | None = None) -> None:
    _ledger(settings).mark(landed.sha256, "refused", reason)


def mark_processed(landed: LandedFile, settings: Settings) -> None:
    _ledger(settings).mark(landed.sha256, "processed")


def ensure_current_delivery(landed: LandedFile, settings: Settings) -> None:
    """Refuse to record a file the ledger says was refused, or one a newer delivery superseded.

    Dagster's blocking checks only stop later steps of the same run; this gate also holds when a
    later run materializes history from an older stored upstream value.
    """
    ledger = _ledger(settings)
    entry = ledger.get(landed.sha256)
    if entry is None or entry.status == "refused":
        raise FileRefused(landed.original_name, "refused_earlier", "this delivery was refused; it never reaches history")
    # The mapping as it is now (Dagster calls this from its mappings folder): a spec an earlier run
    # in this process remembered may predate the source's request layouts.
    mapping_file = settings.mappings_dir / f"{landed.source_id}.yaml"
    spec = load_mapping(mapping_file) if mapping_file.exists() else _spec_for(landed.source_id, settings, None)
    # A provider's request file landed later (atr sftp-pull) is no newer delivery of the payer's list.
    newer = [e for e in ledger.entries() if e.source_id == landed.source_id and e.month == landed.month
             and e.received_at > landed.received_at and e.status != "refused"
             and spec.request_layout(e.original_name) is None]
    if newer:
        raise FileRefused(landed.original_name, "superseded", f"superseded by {newer[-1].original_name}; re-run the partition from landed_file")


def history_summary(spec: MappingSpec, month: date, settings: Settings) -> dict:
    """Counts, lineage and trends of a recorded month, for metadata and checks (no PHI)."""
    from atr_pipeline.history.store import trend_markdown, trend_vega_lite
    from atr_pipeline.history.trends import trend_bars

    store = _store(settings, spec.source_id)
    key_cols = list(MEMBER_ENTRY_KEY)
    # Counts only: the key and the change type, not every column (two months of a 1M-member
    # source were ~3 GB and ~5 s of the Dagster run, for numbers).
    members = store.member_list(spec.source_id, month, columns=key_cols)
    duplicates = members.height - members.select(key_cols).unique().height if members.height else 0
    dropped_twice = 0
    months = [m for m in store.months(spec.source_id) if m < month]
    previous = months[-1] if months else None
    if previous is not None and members.height:
        prev = store.member_list(spec.source_id, previous, columns=key_cols)
        now_dropped = members.filter(pl.col("change_type") == "dropped").select(key_cols)
        prev_dropped = prev.filter(pl.col("change_type") == "dropped").select(key_cols)
        dropped_twice = now_dropped.join(prev_dropped, on=key_cols, how="inner", nulls_equal=True).height
    trends = store.trends(spec.source_id)
    return {
        "source_id": spec.source_id,
        "month": month_key(month),
        "previous_month": month_key(previous) if previous else None,
        "member_entries": members.height,
        "change_types": dict(sorted(members.group_by("change_type").len().iter_rows())) if members.height else {},
        "duplicate_entries": duplicates,
        "dropped_twice": dropped_twice,
        "lineage": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in d.items()} for d in store.lineage(spec.source_id, month)],
        "trends_markdown": trend_markdown(trends),
        "trend_bars": trend_bars(trends),
        "trend_chart": trend_vega_lite(trends),
    }


# ---------------------------------------------------------------- FHIR server load


def load_to_server(export_dir: str | Path, *, server_url: str | None = None, progress: Progress = _quiet):
    """Load an export into the server at ``server_url`` or ATR_FHIR_URL; return the report and the
    server's count per exported type (for the load_complete check)."""
    import os

    import httpx

    from atr_pipeline.errors import AtrError
    from atr_pipeline.publish.loader import load_export
    from atr_pipeline.publish.server import ServerConfig

    url = server_url or os.environ.get("ATR_FHIR_URL")
    if not url:
        raise AtrError("no FHIR server configured: set ATR_FHIR_URL (and ATR_FHIR_KIND, ATR_FHIR_TOKEN or ATR_SMART_*)")
    auth = "smart" if os.environ.get("ATR_SMART_TOKEN_URL") else "bearer" if os.environ.get("ATR_FHIR_TOKEN") else "none"
    config = ServerConfig.for_kind(url, os.environ.get("ATR_FHIR_KIND", "generic"), auth=auth)
    report = load_export(Path(export_dir), config)
    progress(f"load {report.status}: {report.total('created')} created, {report.total('updated')} updated, {report.total('failed')} failed")
    counts: dict[str, int] = {}
    headers = {}
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {os.environ['ATR_FHIR_TOKEN']}"
    if auth != "smart":  # with SMART the loader holds the token; counts then come from the report only
        with httpx.Client(base_url=url.rstrip("/") + "/", headers=headers, timeout=60) as client:
            for rtype in report.counts:
                r = client.get(rtype, params={"_summary": "count"})
                if r.status_code == 200:
                    counts[rtype] = int(r.json().get("total", 0))
    return report, counts


# ---------------------------------------------------------------- return path to the sender


def return_rejects(csv_path: Path, rows_rejected: int, *,
                   sftp_config: Callable[[], SftpConfig] | None = None) -> str | None:
    """Upload the rejects CSV to the payer's SFTP outbox when ATR_SFTP_OUTBOX is set.

    Returns the remote path, or None when there is nothing to send or no outbox is configured.
    Runs after the rejects are written and before any threshold refusal, so a refused file's
    sender gets them too. ``sftp_config``: a callable returning the connection's SftpConfig
    (the Dagster asset passes its SftpResource's), called only when there is something to send;
    default: the ATR_SFTP_* environment.
    """
    import os

    from atr_pipeline.sources.sftp import ENV_OUTBOX, SftpSource, config_from_env

    outbox = os.environ.get(ENV_OUTBOX)
    if not outbox or rows_rejected == 0:
        return None
    with SftpSource((sftp_config or config_from_env)()) as src:
        return src.upload_rejects(csv_path, outbox)


def return_response(response: Path, provider: str, *,
                    sftp_config: Callable[[], SftpConfig] | None = None) -> str | None:
    """Upload a request file's response to ``ATR_SFTP_OUTBOX/<provider>/`` when ATR_SFTP_OUTBOX is
    set (the folder is made when missing); the same upload as the rejects (hidden temporary name,
    then renamed, replacing an earlier response). Returns the remote path, or None (no outbox)."""
    import os
    import posixpath

    from atr_pipeline.sources.sftp import ENV_OUTBOX, SftpSource, config_from_env

    outbox = os.environ.get(ENV_OUTBOX)
    if not outbox:
        return None
    folder = posixpath.join(outbox, provider)
    with SftpSource((sftp_config or config_from_env)()) as src:
        src.make_folder(folder, parent_what="outbox")
        return src.upload_rejects(response, folder)
