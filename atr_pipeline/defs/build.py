"""Assemble the Definitions: assets, checks, jobs, schedules, sensors, resources."""

from __future__ import annotations

import os

import dagster as dg

from atr_pipeline.defs import assets
from atr_pipeline.defs.automation import attribution_failure_sensor, attribution_job, load_job, schedules
from atr_pipeline.defs.resources import AtrHome
from atr_pipeline.defs.sftp_sensor import RESOURCE_KEY, SftpResource, build_sftp_sensor, sftp_resource_from_env
from atr_pipeline.sources.sftp import ENV_VARS

# The SftpResource fields without a default: always read from the environment at run time.
_REQUIRED_SFTP_FIELDS = ("host", "username", "known_hosts")
_AT_RUN_TIME = "(read at run time)"


def sftp_resource() -> SftpResource:
    """The SFTP inbox resource, with every setting a ``dg.EnvVar``.

    The required settings are EnvVars even when unset, so the definitions load on a machine
    without ATR_SFTP_* (tests, the demo, local files only); the sensor is STOPPED by default,
    and when it is turned on unconfigured its tick names the missing variable.
    """
    required = [var for var, name in ENV_VARS.items() if name in _REQUIRED_SFTP_FIELDS]
    # sftp_resource_from_env makes an EnvVar of every variable it sees set; the placeholder only
    # makes it see the required ones (the EnvVar itself reads the real environment at run time).
    environ = {**os.environ, **{var: os.environ.get(var) or _AT_RUN_TIME for var in required}}
    return sftp_resource_from_env(environ)


def _mappings() -> dict:
    from atr_pipeline.layouts.spec import load_mappings

    try:
        return load_mappings(os.environ.get("ATR_MAPPINGS_DIR") or "mappings")
    except Exception:  # an invalid mapping shows up when it is used, not as a broken code location
        return {}


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            assets.landed_file,
            assets.canonical_rows,
            assets.validated_rows,
            assets.attribution_snapshot,
            assets.fhir_resources,
            assets.bulk_export,
            assets.server_load,
        ],
        jobs=[attribution_job, load_job],
        schedules=schedules(),
        sensors=[
            attribution_failure_sensor,
            # landed_file reads the remote name from the run's atr/remote_file tag (no run config).
            build_sftp_sensor(attribution_job, _mappings(), resource_key=RESOURCE_KEY),
        ],
        resources={"atr": AtrHome(), RESOURCE_KEY: sftp_resource()},
        # One process: the multiprocess executor costs ~10x on small partitions (FACTS.md) and
        # DuckDB takes one writer process anyway.
        executor=dg.in_process_executor,
    )
