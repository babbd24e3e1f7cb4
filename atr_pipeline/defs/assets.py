"""The asset graph: one asset per stage, partitioned by month x source.

    landed_file -> canonical_rows -> validated_rows -> attribution_snapshot
      -> fhir_resources -> bulk_export [-> server_load when ATR_FHIR_URL is set]

Each asset calls one plain function from ``atr_pipeline.pipeline`` (the CLI calls the same
ones) and adds metadata an analyst can read: counts, provenance, rejects per rule, change
types, resources per type. No metadata value ever holds PHI.

Assets hand each other handles (defs/handles.py: the landed file, staged-row paths, the
snapshot key, the staged export), never row frames: Dagster pickles every value under
DAGSTER_HOME. A refused file fails the asset that refused it (dg.Failure with the rule and the
numbers) after that asset's check reported the same; later steps do not run.
"""


import warnings
from collections.abc import Iterator

import dagster as dg

from atr_pipeline import pipeline
from atr_pipeline.defs import handles
from atr_pipeline.defs import metadata as md
from atr_pipeline.defs.handles import ReadHandle, SnapshotKey, ValidatedHandle
from atr_pipeline.defs.partitions import PARTITIONS, parse_partition
from atr_pipeline.defs.resources import AtrHome, FhirServer, SftpResource
from atr_pipeline.defs.sftp_sensor import expected_of_tags, failure_for
from atr_pipeline.errors import FileRefused
from atr_pipeline.sources.landing import LandedFile
from atr_pipeline.sources.sftp import SftpError

OWNERS = ["team:data-engineering"]
# I/O can fail transiently (SFTP, disk, server): retry with backoff and jitter. Pure stages don't retry.
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Check specs carry the asset's partitions so each result is stored against its month x source
# (without it the UI shows a partitioned asset's check results with no partition at all).
# Dagster 1.13 calls that a preview feature and warns once per spec at import.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec")


def _failure(what: str, refused: FileRefused, **numbers: float) -> dg.Failure:
    # A refusal is a verdict on the file, not a transient fault: retrying (IO_RETRY) only delays
    # the failure by ~14 s and repeats the same refusal three times in the run's log.
    return dg.Failure(
        description=f"{what}: {refused}",
        metadata={"file": refused.file_name, "rule": refused.rule, "reason": refused.reason,
                  "line": refused.line_number or 0, **numbers},
        allow_retries=False,
    )


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="sources",
    kinds={"python", "file"},
    owners=OWNERS,
    retry_policy=IO_RETRY,
)
def landed_file(context: dg.AssetExecutionContext, atr: AtrHome, sftp: SftpResource) -> LandedFile:
    """The payer's delivered file for this month and source, copied into landing/ with its sha256.

    Picks the file from the local inbox (ATR_INBOX) or, when the run came from the SFTP sensor,
    downloads the named remote file with the ``sftp`` resource's settings. A delivery whose bytes
    were already landed under another name is refused as a duplicate.
    """
    month, source = parse_partition(context)
    settings = atr.settings()
    spec = atr.mapping(source)
    remote = context.run.tags.get("atr/remote_file")
    try:
        # Only an SFTP run needs the connection settings (a local-inbox run works without ATR_SFTP_*).
        landed = pipeline.land_for_partition(spec, month, settings, remote_name=remote,
                                             remote_expected=expected_of_tags(context.run.tags),
                                             sftp_config=sftp.sftp_config() if remote else None)
    except FileRefused as refused:
        raise _failure("landing refused", refused) from None
    except SftpError as exc:  # a refused login or changed host key must not be retried (lockouts)
        raise failure_for(exc) from None
    context.add_output_metadata(md.provenance(landed, spec, settings))
    return landed


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="layouts",
    kinds={"polars"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("control_totals_match", asset="canonical_rows", blocking=True, partitions_def=PARTITIONS,
                                   description=("Trailer/header record count and hash total equal what was read; "
                                                "the file decoded and had the columns its mapping names."))],
)
def canonical_rows(context: dg.AssetExecutionContext, atr: AtrHome, landed_file: LandedFile) -> Iterator:
    """The landed file cut into canonical attribution rows by its YAML mapping (one schema for every payer).

    A file that cannot be trusted as a whole (undecodable bytes, control totals that disagree,
    missing columns, empty or binary) is refused here: the check says why, this asset fails, and
    nothing from the file goes further. The rows are staged in ATR_HOME (owner-only parquet).
    """
    settings = atr.settings()
    spec = atr.mapping(landed_file.source_id)
    try:
        read = pipeline.read_landed(landed_file, spec)
    except FileRefused as refused:
        pipeline.mark_refused(landed_file, settings, refused.rule)
        yield md.control_check(None, refused)
        raise _failure("canonical_rows refused the file", refused) from None
    handle = handles.stage_read(read, landed_file, settings)
    yield dg.Output(handle, metadata=md.read_metadata(read, spec, settings))
    yield md.control_check(read, None)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="validate",
    kinds={"pandera", "polars"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("rejects_under_threshold", asset="validated_rows", blocking=True, partitions_def=PARTITIONS,
                                   description="The share of rejected rows is at or below the mapping's reject_threshold.")],
)
def validated_rows(context: dg.AssetExecutionContext, atr: AtrHome, sftp: SftpResource,
                   canonical_rows: ReadHandle) -> Iterator:
    """Rows that passed every rule (NPI check digit, MBI format, dates, codes, uniqueness...).

    Every rejected row is written with file, line, field, rule and reason to a rejects CSV for
    the sender and as OperationOutcome NDJSON for the export's error list. Above the mapping's
    reject_threshold the file is refused: the check and this asset fail with the numbers.
    """
    settings = atr.settings()
    landed = canonical_rows.landed
    spec = atr.mapping(landed.source_id)
    validated = pipeline.validate_read(handles.load_read(canonical_rows), landed, spec)
    csv_path, outcomes = pipeline.write_rejects(validated, settings, spec)
    remote = pipeline.return_rejects(csv_path, validated.rows_rejected, sftp_config=sftp.sftp_config)
    if remote:
        context.log.info(f"rejects uploaded to the sender's outbox: {remote}")
    try:
        pipeline.refuse_if_over_threshold(validated, spec)
    except FileRefused as refused:
        pipeline.mark_refused(landed, settings, refused.rule)
        handles.discard(canonical_rows.folder)  # nothing from a refused file goes further: no staged copy either
        yield md.threshold_check(validated, refused, spec)
        raise _failure("validated_rows refused the file", refused, rows_read=validated.records_read,
                       rows_rejected=validated.rows_rejected, rejected_share=round(validated.rows_rejected / max(validated.records_read, 1), 6),
                       threshold=spec.reject_threshold) from None
    handle = handles.stage_validated(canonical_rows, validated, outcomes, csv_path)
    yield dg.Output(handle, metadata=md.validate_metadata(validated, csv_path))
    yield md.threshold_check(validated, None, spec)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="history",
    kinds={"duckdb"},
    owners=OWNERS,
    # No concurrency pool: history is one DuckDB file per source (history/stores.py) behind that
    # source's locks, so a pool of one writer would only make other sources' partitions wait.
    check_specs=[dg.AssetCheckSpec("history_consistent", asset="attribution_snapshot", blocking=True, partitions_def=PARTITIONS,
                                   description="No member entry twice in the month's list; a dropped entry is emitted only once.")],
)
def attribution_snapshot(context: dg.AssetExecutionContext, atr: AtrHome, validated_rows: ValidatedHandle) -> Iterator:
    """This month's accepted rows stored in the DuckDB history, diffed with the previous month.

    Change types per member entry: new, changed, nochange, dropped (inactive). A correction of
    a month replaces its snapshot and later months are recomputed.
    """
    settings = atr.settings()
    landed = validated_rows.landed
    spec = atr.mapping(landed.source_id)
    # A blocking check only stops downstream steps in the same run; across runs the ledger is the gate.
    try:
        pipeline.ensure_current_delivery(landed, settings)
    except FileRefused as refused:
        raise _failure("attribution_snapshot refused the delivery", refused) from None
    pipeline.record_history(handles.load_validated(validated_rows), settings, spec)
    summary = pipeline.history_summary(spec, landed.month, settings)
    yield dg.Output(SnapshotKey(spec.source_id, landed.month, landed.sha256), metadata=md.history_metadata(summary))
    yield md.history_check(summary)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="fhir",
    kinds={"fhir", "polars"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("conformance_passed", asset="fhir_resources", blocking=True, partitions_def=PARTITIONS,
                                   description=("Every resource passes the ATR 2.1.0 rules and reference integrity; "
                                                "R4 structure on all (small runs) or a sample."))],
)
def fhir_resources(context: dg.AssetExecutionContext, atr: AtrHome, attribution_snapshot: SnapshotKey) -> Iterator:
    """ATR 2.1.0 Group, Patient, Coverage, RelatedPerson, Practitioner, PractitionerRole and Organization resources.

    Staged as NDJSON next to the export folder (the value is that staged path, not the JSON). A
    build that fails conformance fails this asset and is discarded: nothing is exported.
    """
    settings = atr.settings()
    spec = atr.mapping(attribution_snapshot.source_id)
    built = pipeline.build_month(spec, attribution_snapshot.month, settings, progress=context.log.info)
    report = pipeline.check_month(built, progress=context.log.info)
    check = md.conformance_check(report)
    if not check.passed:
        built.resources.discard()
        yield check
        errors = {r.rule: r.count for r in report.results if r.severity == "error"}
        raise dg.Failure(
            description=f"fhir_resources failed conformance, nothing exported: {errors}",
            metadata={"rules": ", ".join(sorted(errors)), "errors": sum(errors.values()), "resources_checked": report.resources_checked},
            allow_retries=False,
        )
    yield dg.Output(built, metadata=md.fhir_metadata(built, spec))
    yield check


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="publish",
    kinds={"fhir", "file"},
    owners=OWNERS,
    retry_policy=IO_RETRY,
)
def bulk_export(context: dg.AssetExecutionContext, atr: AtrHome, fhir_resources: pipeline.BuiltMonth, validated_rows: ValidatedHandle) -> str:
    """The Bulk Data style export folder: manifest.json, one NDJSON per resource type, rejects as OperationOutcome."""
    settings = atr.settings()
    export_dir = pipeline.export_month(fhir_resources, settings, errors=handles.load_outcomes(validated_rows), progress=context.log.info)
    pipeline.mark_processed(validated_rows.landed, settings)  # the ledger says the delivery made it all the way
    handles.discard(validated_rows.folder)  # the staged rows' job is done; history and the export hold them now
    context.add_output_metadata(md.export_metadata(export_dir))
    return str(export_dir)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="publish",
    kinds={"fhir"},
    owners=OWNERS,
    retry_policy=IO_RETRY,
    check_specs=[dg.AssetCheckSpec("load_complete", asset="server_load", partitions_def=PARTITIONS,
                                   description=("Every exported resource is on the server: "
                                                "no failed entries, and the server holds at least the exported count per type."))],
)
def server_load(context: dg.AssetExecutionContext, fhir_server: FhirServer, bulk_export: str) -> Iterator:
    """The month's export PUT into the FHIR server at ATR_FHIR_URL (by deterministic id: re-runs never duplicate; resumable)."""
    report, server_counts = pipeline.load_to_server(bulk_export, server_url=fhir_server.url or None, progress=context.log.info)
    yield dg.Output(report.status, metadata=md.load_metadata(report, server_counts))
    yield md.load_check(report, server_counts)
