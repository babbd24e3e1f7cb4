"""Jobs, the monthly schedule per source, and the run-failure message."""

from __future__ import annotations

import os
from datetime import date, datetime

import dagster as dg

from atr_pipeline.defs.lateness import delivery_checks
from atr_pipeline.defs.partitions import first_month, partition_key, source_ids

attribution_job = dg.define_asset_job(
    "attribution_job",
    selection=dg.AssetSelection.groups("sources", "layouts", "validate", "history", "fhir", "publish")
    - dg.AssetSelection.assets("server_load")
    # the lateness checks look at every month of a source, not at this partition: their own daily job
    - delivery_checks(),
    description="One month of one source: land, read, validate, diff, build FHIR, export.",
)

load_job = dg.define_asset_job(
    "load_job",
    selection=dg.AssetSelection.assets("server_load"),
    description="Load a month's export into the FHIR server at ATR_FHIR_URL (resumable, never duplicates).",
)


def previous_month(today: date) -> date:
    return date(today.year - 1, 12, 1) if today.month == 1 else date(today.year, today.month - 1, 1)


def monthly_schedule(source_id: str, day: int) -> dg.ScheduleDefinition:
    """Runs on `day` of each month for the month just ended (ATR_SCHEDULE_DAY, default 5).

    A month before the source's first month (its mapping's ``first_month``) is skipped with the
    reason: a payer being onboarded gets no failed runs for months it never delivered.
    """

    def _requests(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        when: datetime = context.scheduled_execution_time or datetime.now()
        month = previous_month(when.date())
        start = first_month(source_id)
        if month < start:
            return dg.SkipReason(f"{source_id}: {month:%Y-%m} is before its first month {start:%Y-%m} "
                                 f"(first_month in its mapping, else ATR_PARTITIONS_START)")
        key = partition_key(month, source_id)
        return dg.RunRequest(run_key=f"schedule:{source_id}:{month:%Y-%m}", partition_key=key)

    return dg.ScheduleDefinition(
        name=f"{source_id}_monthly_schedule",
        cron_schedule=f"0 6 {day} * *",
        job=attribution_job,
        execution_fn=_requests,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Monthly run for {source_id}: the previous month's partition on day {day}.",
    )


def schedules() -> list[dg.ScheduleDefinition]:
    day = int(os.environ.get("ATR_SCHEDULE_DAY", "5"))
    if not 1 <= day <= 28:
        raise ValueError(f"ATR_SCHEDULE_DAY must be 1..28 (every month has it), got {day}")
    return [monthly_schedule(s, day) for s in source_ids()]


@dg.definitions
def automation_definitions() -> dg.Definitions:
    """This module's part of the code location (dg.load_from_defs_folder merges every module of defs/)."""
    return dg.Definitions(jobs=[attribution_job, load_job], schedules=schedules(), sensors=[attribution_failure_sensor])


# What to do, by the step that failed. Read by the failure sensor and shown in the run's logs.
WHAT_TO_DO = {
    "landed_file": "Check the inbox / SFTP settings (ATR_INBOX, ATR_SFTP_*) and that a file for this month exists; a duplicate delivery needs no action.",
    "canonical_rows": "The file was refused whole (see the control_totals_match check): ask the sender for a corrected file and re-run the partition.",
    "validated_rows": "Too many rows were rejected (see rejects_under_threshold and the rejects CSV): send the rejects CSV back to the payer.",
    "attribution_snapshot": "History could not be written: check ATR_HOME is writable and no other process holds the DuckDB file.",
    "fhir_resources": "Conformance failed (see conformance_passed): fix the mapping or report the rule to the team; nothing was exported.",
    "bulk_export": "The export folder could not be written: check disk space and permissions under ATR_HOME/exports.",
    "server_load": "The FHIR server load stopped: read load_report.json in the export folder, fix the server or credentials and re-run (the load resumes).",
}


@dg.run_failure_sensor(name="attribution_failure_sensor", default_status=dg.DefaultSensorStatus.RUNNING)
def attribution_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    """Logs, for a failed run, which step failed and what to do about it (no PHI: step names only)."""
    checks = _failed_checks(context)
    failures = [(e.step_key, _refusal_rule(e)) for e in context.get_step_failure_events() if e.step_key]
    for step, rule in failures or [("(run)", "")]:
        asset = step.split(".")[-1]
        hint = WHAT_TO_DO.get(asset, "Open the run in the UI, read the failed step's error, fix and re-run the partition.")
        why = [f"refused: {rule}"] if rule else []
        why += [f"check {name} failed" + (f": {r}" if r else "") for name, r in checks.get(step, [])]
        because = f" ({'; '.join(why)})" if why else ""
        context.log.error(f"run {context.dagster_run.run_id} failed at {step}{because}: {hint}")


def _failed_checks(context: dg.RunFailureSensorContext) -> dict[str, list[tuple[str, str]]]:
    """step -> (failed check, the refusal rule it reported or ""): names only, never values."""
    records = context.instance.all_logs(context.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    out: dict[str, list[tuple[str, str]]] = {}
    for record in records:
        evaluation = record.dagster_event.event_specific_data if record.dagster_event else None
        if evaluation is None or evaluation.passed:  # type: ignore[union-attr]
            continue
        rule = evaluation.metadata.get("rule")  # type: ignore[union-attr]
        check = (evaluation.check_name, str(rule.value) if rule is not None else "")  # type: ignore[union-attr]
        out.setdefault(record.step_key or "", []).append(check)
    return out


def _refusal_rule(event: dg.DagsterEvent) -> str:
    """The FileRefused rule name a step's dg.Failure carried (a machine name, never a value)."""
    data = event.step_failure_data
    user = data.user_failure_data if data is not None else None
    rule = user.metadata.get("rule") if user is not None else None
    return str(rule.value) if rule is not None else ""
