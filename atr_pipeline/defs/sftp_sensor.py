"""Dagster wiring for the SFTP inbox: the ``SftpResource`` and the ``sftp_inbox_sensor``.

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
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.sources.landing import LandingOutcome
from atr_pipeline.sources.polling import (
    MONTH_DIMENSION,
    SOURCE_DIMENSION,
    TAG_REMOTE_FILE,
    PlannedRun,
    SensorCursor,
    plan_runs,
)
from atr_pipeline.sources.sftp import (
    ENV_DONE_SUFFIX,
    ENV_POLL_SECONDS,
    ENV_STABLE_POLLS,
    ENV_VARS,
    SftpConfig,
    SftpSource,
    config_from_values,
    fetch_one,
)

SENSOR_NAME = "sftp_inbox_sensor"
RESOURCE_KEY = "sftp"
# A sensor evaluation must finish within 60 s: list with few, short retries.
_SENSOR_RETRIES = 2


class SftpResource(dg.ConfigurableResource):
    """A payer SFTP inbox. Field meanings: ``sources.sftp.SftpConfig``; env vars: docs/SFTP.md."""

    host: str
    port: int = 22
    username: str
    password: str | None = None
    private_key: str | None = None  # key text or a path
    private_key_passphrase: str | None = None
    known_hosts: str
    inbox: str = "."
    archive: str | None = None
    after_landing: str = "leave"
    connect_timeout: float = 15.0
    channel_timeout: float = 60.0
    retries: int = 4
    backoff_initial: float = 1.0

    def sftp_config(self, **overrides: object) -> SftpConfig:
        values = {
            "host": self.host, "port": str(self.port), "username": self.username,
            "password": self.password, "private_key": self.private_key,
            "private_key_passphrase": self.private_key_passphrase, "known_hosts": self.known_hosts,
            "inbox": self.inbox, "archive": self.archive, "after_landing": self.after_landing,
            "connect_timeout": str(self.connect_timeout), "channel_timeout": str(self.channel_timeout),
            "retries": str(self.retries), "backoff_initial": str(self.backoff_initial),
        }
        values.update({k: None if v is None else str(v) for k, v in overrides.items()})
        return config_from_values(values)

    def open(self, **overrides: object) -> SftpSource:
        """``with resource.open() as src:`` one connection for a step."""
        return SftpSource(self.sftp_config(**overrides))

    def fetch_one(self, name: str, mappings: dict[str, MappingSpec], *, landing_dir: Path) -> LandingOutcome:
        return fetch_one(self.sftp_config(), name, mappings, landing_dir=landing_dir)


_INT_FIELDS = {"port", "retries"}
_FLOAT_FIELDS = {"connect_timeout", "channel_timeout"}


def sftp_resource_from_env(environ: Mapping[str, str] | None = None) -> SftpResource:
    """An SftpResource whose every set ATR_SFTP_* variable is a ``dg.EnvVar`` (read at run time)."""
    env = os.environ if environ is None else environ
    kwargs: dict[str, object] = {}
    for var, field in ENV_VARS.items():
        if not env.get(var):
            continue
        if field == "private_key_passphrase" or field in ("password", "private_key"):
            kwargs[field] = dg.EnvVar(var)
        elif field in _INT_FIELDS:
            kwargs[field] = dg.EnvVar.int(var)
        elif field in _FLOAT_FIELDS:
            kwargs[field] = float(env[var])  # not secret; EnvVar has no float form
        else:
            kwargs[field] = dg.EnvVar(var)
    return SftpResource(**kwargs)  # type: ignore[arg-type]


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


def build_sftp_sensor(
    job: str | dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    mappings: dict[str, MappingSpec],
    *,
    name: str = SENSOR_NAME,
    minimum_interval_seconds: int | None = None,
    stable_polls: int | None = None,
    done_marker_suffix: str | None = None,
    landing_asset: str | None = None,
    resource_key: str = RESOURCE_KEY,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """The sensor that lists the SFTP inbox and requests one partitioned run per stable new file.

    ``job``: the job (or its name) that lands and processes one file; it must be partitioned by a
    MultiPartitionsDefinition with dimensions ``month`` and ``source``. Defaults for interval,
    stability and done marker come from ATR_SFTP_POLL_SECONDS (60), ATR_SFTP_STABLE_POLLS (2)
    and ATR_SFTP_DONE_SUFFIX (unset). ``clock`` gives the poll time (tests pin it).
    """
    interval = minimum_interval_seconds or int(os.environ.get(ENV_POLL_SECONDS) or 60)
    polls = stable_polls or int(os.environ.get(ENV_STABLE_POLLS) or 2)
    suffix = done_marker_suffix or os.environ.get(ENV_DONE_SUFFIX) or None
    target = {"job_name": job} if isinstance(job, str) else {"job": job}

    @dg.sensor(name=name, minimum_interval_seconds=interval, required_resource_keys={resource_key},
               default_status=default_status,
               description="Lists the payer SFTP inbox; requests one run per new file once its size and mtime are "
                           "stable (or its done marker exists).", **target)
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        sftp: SftpResource = getattr(context.resources, resource_key)
        cursor = SensorCursor.from_json(context.cursor)
        with sftp.open(retries=_SENSOR_RETRIES, backoff_initial=min(sftp.backoff_initial, 2.0)) as src:
            listing = src.list_inbox()
        runs, next_cursor = plan_runs(listing, cursor, mappings, now=clock(),
                                      stable_polls=polls, done_marker_suffix=suffix)
        context.log.info(f"{len(listing)} file(s) listed, {len(runs)} run(s) requested")
        return dg.SensorResult(
            run_requests=[run_request_for(r, landing_asset=landing_asset) for r in runs],
            cursor=next_cursor.to_json(),
        )

    return _sensor


__all__ = [
    "MONTH_DIMENSION", "SOURCE_DIMENSION", "SENSOR_NAME", "RESOURCE_KEY", "SftpResource", "build_sftp_sensor",
    "remote_file_of_run", "run_request_for", "sftp_resource_from_env",
]
