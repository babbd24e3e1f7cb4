"""Dagster wiring for the SFTP inbox: the ``sftp_inbox_sensor`` over ``SftpResource`` (defs/resources.py).

The sensor only lists (evaluations time out at 60 s); ``sources.polling.plan_runs`` decides
which files are stable and new; each request carries the remote file name in its tags
(``atr/remote_file``) and, when ``landing_asset`` is given, in that asset's run config, so the
landing asset downloads exactly that file with ``SftpResource.fetch_one``.
Partition keys: ``month`` (``YYYY-MM-01``) x ``source`` (the mapping's ``source_id``).
Secrets reach the resource as ``dg.EnvVar`` values, so Dagster never stores or shows them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dagster as dg

from atr_pipeline.defs.resources import SftpResource, sftp_resource_from_env
from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.sources.polling import (
    DEFAULT_QUIET_SECONDS,
    DEFAULT_STABLE_POLLS,
    MONTH_DIMENSION,
    SOURCE_DIMENSION,
    TAG_REMOTE_FILE,
    TAG_REMOTE_MTIME,
    TAG_REMOTE_SIZE,
    PlannedRun,
    RemoteFile,
    SensorCursor,
    new_reports,
    plan_runs,
)
from atr_pipeline.sources.sftp import (
    ENV_POLL_SECONDS,
    ENV_QUIET_SECONDS,
    ENV_STABLE_POLLS,
    SftpError,
    SftpSource,
)

SENSOR_NAME = "sftp_inbox_sensor"
RESOURCE_KEY = "sftp"
# A sensor evaluation must finish within 60 s: list with few, short retries inside a budget.
_SENSOR_RETRIES = 2
_SENSOR_BUDGET = 40.0
# After a refused login, host key error or the like, the sensor makes no new login for this long
# (a tick every minute would otherwise lock a payer account with a 3-strike rule within minutes).
# Resetting the sensor's cursor after fixing the settings resumes at once.
PAUSE_AFTER_PERMANENT_ERROR = timedelta(hours=1)


def run_request_for(planned: PlannedRun, *, landing_asset: str | None = None) -> dg.RunRequest:
    run_config = {}
    if landing_asset:
        run_config = {"ops": {landing_asset: {"config": {"remote_file": planned.file.name}}}}
    return dg.RunRequest(
        run_key=planned.run_key,
        partition_key=dg.MultiPartitionKey(planned.partition_keys),
        tags=planned.tags,
        run_config=run_config,
    )


def remote_file_of_run(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str | None:
    """The remote file name a sensor-launched run should land (from its tags)."""
    return context.run.tags.get(TAG_REMOTE_FILE)


def expected_of_tags(tags: Mapping[str, str]) -> RemoteFile | None:
    """The (name, size, mtime) the sensor judged complete, from a run's tags; None without them.

    The download must find the file exactly so: anything else is still being written.
    """
    try:
        return RemoteFile(tags[TAG_REMOTE_FILE], int(tags[TAG_REMOTE_SIZE]), int(tags[TAG_REMOTE_MTIME]))
    except (KeyError, ValueError):
        return None


def failure_for(exc: SftpError) -> dg.Failure:
    """A step failure for an SFTP error; permanent ones (a refused login, a changed host key, a
    file that changed since it was judged) are never retried by the step's RetryPolicy: a payer
    with a lockout would lock the account after a few retried logins."""
    return dg.Failure(description=str(exc), metadata={"error": type(exc).__name__}, allow_retries=not exc.permanent)


def _partition_checker(context: dg.SensorEvaluationContext, job_name: str,
                       job: object) -> Callable[[PlannedRun], bool] | None:
    partitions_def = getattr(job, "partitions_def", None)
    if partitions_def is None and context.repository_def is not None:
        try:
            partitions_def = context.repository_def.get_job(job_name).partitions_def
        except dg.DagsterInvariantViolationError:
            partitions_def = None
    if partitions_def is None:
        return None

    def exists(run: PlannedRun) -> bool:
        try:
            return partitions_def.has_partition_key(dg.MultiPartitionKey(run.partition_keys))
        except (dg.DagsterInvalidInvocationError, dg.DagsterInvariantViolationError, ValueError, KeyError):
            return False

    return exists


def build_sftp_sensor(
    job: str | dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    mappings: dict[str, MappingSpec],
    *,
    name: str = SENSOR_NAME,
    minimum_interval_seconds: int | None = None,
    stable_polls: int | None = None,
    quiet_seconds: float | None = None,
    done_marker_suffix: str | None = None,
    landing_asset: str | None = None,
    resource_key: str = RESOURCE_KEY,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """The sensor that lists the SFTP inbox and requests one partitioned run per stable new file.

    ``job``: the job (or its name) that lands and processes one file; it must be partitioned by a
    MultiPartitionsDefinition with dimensions ``month`` and ``source``. Defaults for interval,
    stability and done marker come from ATR_SFTP_POLL_SECONDS (60), ATR_SFTP_STABLE_POLLS (3),
    ATR_SFTP_QUIET_SECONDS (900) and the resource's done_suffix (ATR_SFTP_DONE_SUFFIX).
    ``clock`` gives the poll time (tests pin it).

    Every tick writes a new cursor: a file that cannot be requested (a month without a
    partition, an unsafe name, a symlink) is reported once as a warning and never holds up the
    files beside it.
    """
    interval = minimum_interval_seconds or int(os.environ.get(ENV_POLL_SECONDS) or 60)
    polls = stable_polls or int(os.environ.get(ENV_STABLE_POLLS) or DEFAULT_STABLE_POLLS)
    quiet = quiet_seconds if quiet_seconds is not None else float(os.environ.get(ENV_QUIET_SECONDS) or DEFAULT_QUIET_SECONDS)
    target = {"job_name": job} if isinstance(job, str) else {"job": job}
    job_name = job if isinstance(job, str) else job.name

    @dg.sensor(name=name, minimum_interval_seconds=interval, required_resource_keys={resource_key},
               default_status=default_status,
               description="Lists the payer SFTP inbox; requests one run per new file once its size and mtime are "
                           "stable over the quiet period (or its done marker exists).", **target)
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        sftp: SftpResource = getattr(context.resources, resource_key)
        cursor = SensorCursor.from_json(context.cursor)
        now = clock()
        if cursor.paused and now < datetime.fromisoformat(cursor.paused[0]):
            return dg.SensorResult(skip_reason=f"paused until {cursor.paused[0]} after: {cursor.paused[1]} (fix the "
                                               "settings, then reset the sensor's cursor to resume now)",
                                   cursor=cursor.to_json())
        budget = min(sftp.total_timeout, _SENSOR_BUDGET)
        # Missing or invalid settings (SftpSettingsError, naming the ATR_SFTP_* variable) fail the
        # tick, outside the pause below: no login was tried, so no lockout to wait out.
        config = sftp.sftp_config(retries=_SENSOR_RETRIES, backoff_initial=min(sftp.backoff_initial, 2.0),
                                  total_timeout=budget)
        try:
            with SftpSource(config) as src:
                listing = src.scan_inbox()
        except SftpError as exc:
            if not exc.permanent:
                raise  # a dropped link: the tick fails and the next one tries again
            until = (now + PAUSE_AFTER_PERMANENT_ERROR).isoformat()
            context.log.error(f"{exc}; no new login until {until}")
            return dg.SensorResult(skip_reason=f"{exc}; paused until {until}",
                                   cursor=replace(cursor, paused=[until, str(exc)]).to_json())
        suffix = done_marker_suffix or src.config.done_suffix
        seen = listing.files + [RemoteFile(m, 0, 0) for m in sorted(listing.markers)]
        runs, next_cursor = plan_runs(seen, cursor, mappings, now=now, stable_polls=polls, quiet_seconds=quiet,
                                      done_marker_suffix=suffix,
                                      partition_exists=_partition_checker(context, job_name, job))
        for entry in listing.skipped:
            next_cursor.reported[f"skipped:{entry.name}"] = f"{entry.name}: {entry.reason}; not requested"
        for reason in new_reports(cursor, next_cursor):
            context.log.warning(reason)
        context.log.info(f"{len(listing.files)} file(s) listed, {len(runs)} run(s) requested")
        return dg.SensorResult(
            run_requests=[run_request_for(r, landing_asset=landing_asset) for r in runs],
            cursor=next_cursor.to_json(),
        )

    return _sensor


__all__ = [
    "MONTH_DIMENSION",
    "RESOURCE_KEY",
    "SENSOR_NAME",
    "SOURCE_DIMENSION",
    "SftpResource",
    "build_sftp_sensor",
    "expected_of_tags",
    "failure_for",
    "remote_file_of_run",
    "run_request_for",
    "sftp_resource_from_env",
]
