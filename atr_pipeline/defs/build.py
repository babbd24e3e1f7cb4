"""Assemble the Definitions: assets, checks, jobs, schedules, sensors, resources."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dagster as dg
import yaml

from atr_pipeline.defs.automation import attribution_job
from atr_pipeline.defs.resources import AtrHome, FhirServer
from atr_pipeline.defs.sftp_sensor import (
    RESOURCE_KEY,
    SftpResource,
    build_sftp_sensor,
    sftp_resource_from_env,
)
from atr_pipeline.errors import AtrError
from atr_pipeline.layouts.spec import MappingSpec, load_mapping
from atr_pipeline.private import protect_dagster_home


def sftp_resource() -> SftpResource:
    """The SFTP inbox resource: every ATR_SFTP_* variable set where the definitions load is a ``dg.EnvVar``.

    Unset variables are left out, not made EnvVars: every run requires this resource (landed_file,
    validated_rows) and Dagster refuses to start a run whose resource names an unset variable, so
    runs from the local inbox (tests, the demo, payers without SFTP) would fail. Without the
    settings, an SFTP run and the sensor's tick fail with "invalid SFTP settings host
    (ATR_SFTP_HOST), ...: Field required".
    """
    return sftp_resource_from_env()


def mappings_folder() -> Path:
    return Path(os.environ.get("ATR_MAPPINGS_DIR") or "mappings")


def load_mappings_with_errors(folder: str | Path | None = None) -> tuple[dict[str, MappingSpec], dict[str, str]]:
    """(valid mappings by source id, error by file name) of a mappings folder.

    One broken YAML must not hide the others: each file is loaded on its own, and what is wrong
    with a broken one (file, YAML key path, reason; never data) is returned instead of swallowed.
    The SFTP sensor is given the valid mappings; ``mapping_errors_sensor`` reports the errors.
    """
    folder = Path(folder) if folder is not None else mappings_folder()
    mappings: dict[str, MappingSpec] = {}
    errors: dict[str, str] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            mappings[path.stem] = load_mapping(path)
        except (AtrError, ValueError, OSError, yaml.YAMLError) as exc:  # pydantic's ValidationError is a ValueError
            errors[path.name] = str(exc)
    return mappings, errors


class MappingErrors(AtrError):
    """One or more mapping files are invalid; the message names each file and what is wrong."""


@dg.sensor(name="mapping_errors_sensor", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Re-reads the mappings folder every tick and fails the tick, naming the file and the problem, "
                       "while any mapping is invalid; the valid mappings keep flowing.")
def mapping_errors_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    mappings, errors = load_mappings_with_errors()
    if errors:
        lines = "\n".join(f"- {name}: {message}" for name, message in errors.items())
        raise MappingErrors(f"{len(errors)} invalid mapping file(s) in {mappings_folder()} (their sources get no runs "
                            f"until fixed; {len(mappings)} valid mapping(s) keep running):\n{lines}")
    return dg.SkipReason(f"all {len(mappings)} mapping(s) in {mappings_folder()} are valid")


def _valid_mappings() -> dict[str, MappingSpec]:
    mappings, errors = load_mappings_with_errors()
    for name, message in errors.items():  # also in the code server's log at load
        log.error("invalid mapping %s (its source gets no runs until fixed): %s", name, message)
    return mappings


def atr_home_resource() -> AtrHome:
    """ATR_HOME, ATR_INBOX, ATR_MAPPINGS_DIR as EnvVars when set (the UI shows the variable, the run reads it)."""
    fields = {"home": "ATR_HOME", "inbox": "ATR_INBOX", "mappings_dir": "ATR_MAPPINGS_DIR"}
    return AtrHome(**{f: dg.EnvVar(var) for f, var in fields.items() if os.environ.get(var)})


def fhir_server_resource() -> FhirServer:
    return FhirServer(url=dg.EnvVar("ATR_FHIR_URL")) if os.environ.get("ATR_FHIR_URL") else FhirServer()


log = logging.getLogger("atr_pipeline")


@dg.definitions
def wiring_definitions() -> dg.Definitions:
    """Sensors, resources and executor: this module's part of the code location.

    The assets (assets.py), jobs and schedules (automation.py) and the lateness checks
    (lateness.py) are the other modules' parts; ``build_definitions`` loads them all.
    """
    # The code server and every run worker load this: both create files under DAGSTER_HOME.
    protect_dagster_home()
    return dg.Definitions(
        sensors=[
            # landed_file reads the remote name from the run's atr/remote_file tag (no run config).
            build_sftp_sensor(attribution_job, _valid_mappings(), resource_key=RESOURCE_KEY),
            mapping_errors_sensor,
        ],
        resources={"atr": atr_home_resource(), "fhir_server": fhir_server_resource(), RESOURCE_KEY: sftp_resource()},
        executor=executor(),
    )


EXECUTOR_ENV = "ATR_DAGSTER_EXECUTOR"
MAX_CONCURRENT_ENV = "ATR_DAGSTER_MAX_CONCURRENT"
EXECUTORS = ("in_process", "multiprocess")


def executor() -> dg.ExecutorDefinition:
    """How the steps of one run execute: ``in_process`` (default) or ``multiprocess`` (ATR_DAGSTER_EXECUTOR).

    A run is one partition (one source x month), and its steps form a chain: no two of them can
    run at once, so the multiprocess executor buys no parallelism inside a run; it only starts a
    process per step (~10x the time of a small partition, FACTS.md; docs/PERFORMANCE.md has the
    figures for 250k members). Partitions of different sources run in parallel as separate runs
    (the run queue's ``max_concurrent_runs``; history is one file per source, so they never wait
    for one writer). ``multiprocess`` is the local form of a step per process, as Celery's and
    Kubernetes' step executors run them: it proves no step relies on memory another step left.
    """
    choice = os.environ.get(EXECUTOR_ENV) or "in_process"
    if choice not in EXECUTORS:
        raise AtrError(f"{EXECUTOR_ENV} must be one of {', '.join(EXECUTORS)}, not {choice!r}")
    if choice == "in_process":
        return dg.in_process_executor
    limit = os.environ.get(MAX_CONCURRENT_ENV)
    return dg.multiprocess_executor.configured({"max_concurrent": int(limit)}) if limit else dg.multiprocess_executor


def build_definitions() -> dg.Definitions:
    """Every module of atr_pipeline/defs/, loaded the Dagster 1.13 way (dg.load_from_defs_folder).

    Without the project's pyproject.toml beside the package (a non-editable install), the same
    folder is loaded from the installed module.
    """
    here = Path(__file__).resolve().parent
    try:
        return dg.load_from_defs_folder(path_within_project=here)
    except dg.DagsterError as exc:
        if "Could not find config file" not in str(exc):
            raise
    from dagster.components.core.component_tree import ComponentTree

    import atr_pipeline.defs as defs_module

    return ComponentTree.from_module(defs_module=defs_module, project_root=here.parents[1]).build_defs()
