"""The asset graph: one asset per stage, partitioned by month x source.

    landed_file -> canonical_rows -> validated_rows -> attribution_snapshot
      -> fhir_resources -> bulk_export [-> server_load when ATR_FHIR_URL is set]

Each asset calls one plain function from ``atr_pipeline.pipeline`` (the CLI calls the same
ones) and adds metadata an analyst can read: counts, provenance, rejects per rule, change
types, resources per type. No metadata value ever holds PHI.
"""


import warnings
from dataclasses import dataclass

import dagster as dg

from atr_pipeline import pipeline
from atr_pipeline.defs import metadata as md
from atr_pipeline.defs.partitions import PARTITIONS, parse_partition
from atr_pipeline.defs.resources import AtrHome
from atr_pipeline.defs.sftp_sensor import expected_of_tags, failure_for
from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.read import ReadResult
from atr_pipeline.sources.landing import LandedFile
from atr_pipeline.sources.sftp import SftpError

OWNERS = ["team:data-engineering"]
# I/O can fail transiently (SFTP, disk, server): retry with backoff and jitter. Pure stages don't retry.
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# DuckDB allows one writer process: history writes share a pool of one slot.
HISTORY_POOL = "atr_history_writer"
# Check specs carry the asset's partitions so each result is stored against its month x source
# (without it the UI shows a partitioned asset's check results with no partition at all).
# Dagster 1.13 calls that a preview feature and warns once per spec at import.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec")


@dataclass
class ReadOutcome:
    """canonical_rows' value: the rows, or why the file was refused (never both)."""

    landed: LandedFile
    read: ReadResult | None
    refused: FileRefused | None


@dataclass
class ValidateOutcome:
    validated: pipeline.ValidatedFile | None
    refused: FileRefused | None
    rejects_csv: str | None
    outcomes: list[bytes]


def _failure(what: str, refused: FileRefused) -> dg.Failure:
    # A refusal is a verdict on the file, not a transient fault: retrying (IO_RETRY) only delays
    # the failure by ~14 s and repeats the same refusal three times in the run's log.
    return dg.Failure(
        description=f"{what}: {refused}",
        metadata={"file": refused.file_name, "rule": refused.rule, "line": refused.line_number or 0},
        allow_retries=False,
    )


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="sources",
    kinds={"python", "file"},
    owners=OWNERS,
    retry_policy=IO_RETRY,
)
def landed_file(context: dg.AssetExecutionContext, atr: AtrHome) -> LandedFile:
    """The payer's delivered file for this month and source, copied into landing/ with its sha256.

    Picks the file from the local inbox (ATR_INBOX) or, when the run came from the SFTP sensor,
    downloads the named remote file. A delivery whose bytes were already landed under another
    name is refused as a duplicate.
    """
    month, source = parse_partition(context)
    settings = atr.settings()
    spec = atr.mapping(source)
    remote = context.run.tags.get("atr/remote_file")
    try:
        landed = pipeline.land_for_partition(spec, month, settings, remote_name=remote,
                                             remote_expected=expected_of_tags(context.run.tags))
    except FileRefused as refused:
        raise _failure("landing refused", refused) from None
    except SftpError as exc:  # a refused login or changed host key must not be retried (lockouts)
        raise failure_for(exc) from None
    context.add_output_metadata(md.provenance(landed))
    return landed


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="layouts",
    kinds={"polars"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("control_totals_match", asset="canonical_rows", blocking=True, partitions_def=PARTITIONS,
                                   description="Trailer/header record count and hash total equal what was read; the file decoded and had the columns its mapping names.")],
)
def canonical_rows(context: dg.AssetExecutionContext, atr: AtrHome, landed_file: LandedFile):
    """The landed file cut into canonical attribution rows by its YAML mapping (one schema for every payer).

    A file that cannot be trusted as a whole (undecodable bytes, control totals that disagree,
    missing columns, empty or binary) is refused here and nothing from it goes further.
    """
    spec = atr.mapping(landed_file.source_id)
    try:
        read = pipeline.read_landed(landed_file, spec)
        outcome = ReadOutcome(landed_file, read, None)
    except FileRefused as refused:
        pipeline.mark_refused(landed_file, atr.settings())
        outcome = ReadOutcome(landed_file, None, refused)
    yield dg.Output(outcome, metadata=md.read_metadata(outcome.read, outcome.refused, spec))
    yield md.control_check(outcome.read, outcome.refused)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="validate",
    kinds={"pandera", "polars"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("rejects_under_threshold", asset="validated_rows", blocking=True, partitions_def=PARTITIONS,
                                   description="The share of rejected rows is at or below the mapping's reject_threshold.")],
)
def validated_rows(context: dg.AssetExecutionContext, atr: AtrHome, canonical_rows: ReadOutcome):
    """Rows that passed every rule (NPI check digit, MBI format, dates, codes, uniqueness...).

    Every rejected row is written with file, line, field, rule and reason to a rejects CSV for
    the sender and as OperationOutcome NDJSON for the export's error list.
    """
    if canonical_rows.refused or canonical_rows.read is None:
        raise _failure("file was refused upstream", canonical_rows.refused)  # type: ignore[arg-type]
    settings = atr.settings()
    spec = atr.mapping(canonical_rows.landed.source_id)
    validated = pipeline.validate_read(canonical_rows.read, canonical_rows.landed, spec)
    csv_path, outcomes = pipeline.write_rejects(validated, settings, spec)
    remote = pipeline.return_rejects(csv_path, validated.rows_rejected)
    if remote:
        context.log.info(f"rejects uploaded to the sender's outbox: {remote}")
    refused = None
    try:
        pipeline.refuse_if_over_threshold(validated, spec)
    except FileRefused as exc:
        pipeline.mark_refused(canonical_rows.landed, settings)
        refused = exc
    value = ValidateOutcome(validated if refused is None else None, refused, str(csv_path), outcomes)
    yield dg.Output(value, metadata=md.validate_metadata(validated, csv_path))
    yield md.threshold_check(validated, refused, spec)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="history",
    kinds={"duckdb"},
    owners=OWNERS,
    pool=HISTORY_POOL,
    check_specs=[dg.AssetCheckSpec("history_consistent", asset="attribution_snapshot", blocking=True, partitions_def=PARTITIONS,
                                   description="No member entry twice in the month's list; a dropped entry is emitted only once.")],
)
def attribution_snapshot(context: dg.AssetExecutionContext, atr: AtrHome, validated_rows: ValidateOutcome):
    """This month's accepted rows stored in the DuckDB history, diffed with the previous month.

    Change types per member entry: new, changed, nochange, dropped (inactive). A correction of
    a month replaces its snapshot and later months are recomputed.
    """
    if validated_rows.refused or validated_rows.validated is None:
        raise _failure("file was refused upstream", validated_rows.refused)  # type: ignore[arg-type]
    settings = atr.settings()
    validated = validated_rows.validated
    spec = atr.mapping(validated.landed.source_id)
    # A blocking check only stops downstream steps in the same run; across runs the ledger is the gate.
    pipeline.ensure_current_delivery(validated.landed, settings)
    pipeline.record_history(validated, settings, spec)
    summary = pipeline.history_summary(spec, validated.landed.month, settings)
    yield dg.Output(summary, metadata=md.history_metadata(summary))
    yield md.history_check(summary)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="fhir",
    kinds={"fhir", "polars"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("conformance_passed", asset="fhir_resources", blocking=True, partitions_def=PARTITIONS,
                                   description="Every resource passes the ATR 2.1.0 rules and reference integrity; R4 structure on all (small runs) or a sample.")],
)
def fhir_resources(context: dg.AssetExecutionContext, atr: AtrHome, attribution_snapshot: dict):
    """ATR 2.1.0 Group, Patient, Coverage, RelatedPerson, Practitioner, PractitionerRole and Organization resources."""
    settings = atr.settings()
    spec = atr.mapping(attribution_snapshot["source_id"])
    month = pipeline.parse_month(attribution_snapshot["month"])
    built = pipeline.build_month(spec, month, settings, progress=context.log.info)
    report = pipeline.check_month(built, progress=context.log.info)
    yield dg.Output(built, metadata=md.fhir_metadata(built, spec))
    yield md.conformance_check(report)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="publish",
    kinds={"fhir", "file"},
    owners=OWNERS,
    retry_policy=IO_RETRY,
)
def bulk_export(context: dg.AssetExecutionContext, atr: AtrHome, fhir_resources: pipeline.BuiltMonth, validated_rows: ValidateOutcome) -> str:
    """The Bulk Data style export folder: manifest.json, one NDJSON per resource type, rejects as OperationOutcome."""
    settings = atr.settings()
    export_dir = pipeline.export_month(fhir_resources, settings, errors=validated_rows.outcomes, progress=context.log.info)
    if validated_rows.validated is not None:  # the ledger says the delivery made it all the way
        pipeline.mark_processed(validated_rows.validated.landed, settings)
    context.add_output_metadata(md.export_metadata(export_dir))
    return str(export_dir)


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="publish",
    kinds={"fhir"},
    owners=OWNERS,
    retry_policy=IO_RETRY,
    check_specs=[dg.AssetCheckSpec("load_complete", asset="server_load", partitions_def=PARTITIONS,
                                   description="Every exported resource is on the server: no failed entries, and the server holds at least the exported count per type.")],
)
def server_load(context: dg.AssetExecutionContext, bulk_export: str):
    """The month's export PUT into the FHIR server at ATR_FHIR_URL (by deterministic id: re-runs never duplicate; resumable)."""
    report, server_counts = pipeline.load_to_server(bulk_export, progress=context.log.info)
    yield dg.Output(report.status, metadata=md.load_metadata(report, server_counts))
    yield md.load_check(report, server_counts)
