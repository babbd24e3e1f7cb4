"""Is this month's file late? One asset check per source on landed_file, run daily.

A source's file for month M is due by its expected delivery day of month M+1 (the monthly
schedule runs on that day for the month just ended). The day is ATR_EXPECTED_DAY_<SOURCE>
(source id upper-cased), else ATR_EXPECTED_DAY, else ATR_SCHEDULE_DAY, else 5. Months are counted
from the source's ``first_month`` (its mapping) when declared, so a new payer whose first file
never came is late too; without it, from the first landed delivery. Earlier months are never late.

The check fails (red in the UI) when the most recent month already due has no delivery; its
metadata names the month, the due date, how many days late, and every month since the first
delivery that has none. Facts come from the landing ledger (names, months, dates; no PHI).
"""


import os
from dataclasses import dataclass, field
from datetime import date

import dagster as dg

from atr_pipeline.defs.partitions import source_ids
from atr_pipeline.layouts.spec import declared_first_month

CHECK_SUFFIX = "_delivered_on_time"


def expected_day(source_id: str) -> int:
    raw = (os.environ.get(f"ATR_EXPECTED_DAY_{source_id.upper()}") or os.environ.get("ATR_EXPECTED_DAY")
           or os.environ.get("ATR_SCHEDULE_DAY") or "5")
    day = int(raw)
    if not 1 <= day <= 28:
        raise ValueError(f"expected delivery day for {source_id} must be 1..28 (every month has it), got {day}")
    return day


def _next_month(m: date) -> date:
    return date(m.year + 1, 1, 1) if m.month == 12 else date(m.year, m.month + 1, 1)


def due_date(month: date, day: int) -> date:
    return _next_month(month).replace(day=day)


@dataclass
class Lateness:
    source_id: str
    expected_day: int
    first_month: date | None  # declared first_month, else the first delivered month; None: neither
    latest_due: date | None  # the most recent month whose file is already due
    delivered: bool
    days_late: int
    missing: list[date] = field(default_factory=list)

    @property
    def late(self) -> bool:
        return self.latest_due is not None and not self.delivered


def lateness(source_id: str, day: int, delivered_months: set[date], today: date,
             first_month: date | None = None) -> Lateness:
    """Pure: what is due by ``today`` for a source that delivered ``delivered_months``.

    ``first_month``: the mapping's declared first month (counted from there); None: counted from
    the first delivery.
    """
    if first_month is None and not delivered_months:
        return Lateness(source_id, day, None, None, True, 0)
    first = first_month if first_month is not None else min(delivered_months)
    month, latest_due, missing = first, None, []
    while due_date(month, day) <= today:
        latest_due = month
        if month not in delivered_months:
            missing.append(month)
        month = _next_month(month)
    if latest_due is None:
        return Lateness(source_id, day, first, None, True, 0)
    delivered = latest_due in delivered_months
    days = 0 if delivered else (today - due_date(latest_due, day)).days
    return Lateness(source_id, day, first, latest_due, delivered, days, missing)


def delivered_months(settings, source_id: str) -> set[date]:
    """Months of a source with a landed delivery of the payer that was not refused (from the ledger;
    providers' request files landed by `atr sftp-pull` are not the payer's delivery)."""
    from atr_pipeline.layouts.spec import MappingError, load_mapping
    from atr_pipeline.sources.landing import Ledger

    try:
        spec = load_mapping(settings.mappings_dir / f"{source_id}.yaml")
    except (MappingError, OSError):
        spec = None  # a broken mapping: mapping_errors_sensor says so; every landed file counts meanwhile
    ledger = Ledger.for_landing(settings.landing_dir)
    return {e.month for e in ledger.entries() if e.source_id == source_id and e.status != "refused"
            and (spec is None or spec.request_layout(e.original_name) is None)}


def _check(source_id: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset="landed_file",
        name=f"{source_id}{CHECK_SUFFIX}",
        required_resource_keys={"atr"},
        description=f"{source_id}: the latest month already due has a landed file (due on day "
                    f"ATR_EXPECTED_DAY_{source_id.upper()} of the next month). Red when the file is late.",
    )
    def _late(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        settings = context.resources.atr.settings()
        day = expected_day(source_id)
        today = date.today()
        delivered = delivered_months(settings, source_id)
        declared = declared_first_month(settings.mappings_dir / f"{source_id}.yaml")
        result = lateness(source_id, day, delivered, today, declared)
        meta: dict[str, str | dg.MetadataValue] = {
            "expected_day": dg.MetadataValue.int(day),
            "checked_on": today.isoformat(),
            "first_month": f"{result.first_month:%Y-%m}" if result.first_month else "none yet",
            "counted_from": "first_month in the mapping" if declared else "the first delivery",
            "first_delivered_month": f"{min(delivered):%Y-%m}" if delivered else "none yet",
            "latest_due_month": f"{result.latest_due:%Y-%m}" if result.latest_due else "none due yet",
            "due_date": due_date(result.latest_due, day).isoformat() if result.latest_due else "",
            "days_late": dg.MetadataValue.int(result.days_late),
            "months_missing": dg.MetadataValue.int(len(result.missing)),
            "missing_months": ", ".join(f"{m:%Y-%m}" for m in result.missing) or "none",
        }
        if result.late:
            meta["what_to_do"] = f"Ask {source_id} for the {result.latest_due:%Y-%m} file, or check the SFTP inbox and sensor."
        return dg.AssetCheckResult(passed=not result.late, metadata=meta,
                                   severity=dg.AssetCheckSeverity.ERROR)

    return _late


def checks() -> list[dg.AssetChecksDefinition]:
    return [_check(s) for s in source_ids()]


def delivery_checks() -> dg.AssetSelection:
    return dg.AssetSelection.checks(*[dg.AssetCheckKey(dg.AssetKey("landed_file"), f"{s}{CHECK_SUFFIX}") for s in source_ids()])


delivery_check_job = dg.define_asset_job(
    "delivery_check_job",
    selection=delivery_checks(),
    description="Daily: is any source's monthly file late?",
)


def schedules() -> list[dg.ScheduleDefinition]:
    return [dg.ScheduleDefinition(name="delivery_check_daily", cron_schedule="0 7 * * *", job=delivery_check_job,
                                  default_status=dg.DefaultScheduleStatus.RUNNING,
                                  description="Runs every source's *_delivered_on_time check each morning.")]


@dg.definitions
def lateness_definitions() -> dg.Definitions:
    """This module's part of the code location (dg.load_from_defs_folder merges every module of defs/)."""
    return dg.Definitions(asset_checks=checks(), jobs=[delivery_check_job], schedules=schedules())
