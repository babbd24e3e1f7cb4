"""The quickstart demo: the Dagster attribution_job over every bundled fixture partition.

Uses only embedded defaults: fixtures copied into a local inbox, DuckDB history and exports
under the demo home, a persistent DAGSTER_HOME beside them so `dagster dev` shows the same runs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

DAGSTER_YAML = """\
# Written by `atr demo`. nux off: a fresh instance otherwise shows a modal over the UI.
nux:
  enabled: false
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


# The demo prints its own summary; Dagster's per-event DEBUG lines go to the event log only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class PartitionResult:
    source_id: str
    month: str
    success: bool
    metadata: dict[str, dict]
    checks: dict[str, bool]
    failure: str = ""


def prepare_home(home: Path, fixtures: Path, mappings: Path) -> list[tuple[str, str]]:
    """Copy fixtures into the demo inbox, write dagster.yaml, set ATR_* / DAGSTER_HOME.

    Returns the (source_id, YYYY-MM-01) partitions the fixtures cover, in month order.
    """
    from atr_pipeline.layouts.spec import load_mappings

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    inbox = home / "inbox"
    inbox.mkdir(exist_ok=True)
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["ATR_HOME"] = str(home)
    os.environ["ATR_INBOX"] = str(inbox)
    os.environ["ATR_MAPPINGS_DIR"] = str(mappings.resolve())
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    specs = load_mappings(mappings)
    partitions: set[tuple[str, str]] = set()
    for source_id, spec in specs.items():
        folder = fixtures / source_id
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and spec.file.match(f.name):
                target = inbox / f.name
                if not target.exists():
                    shutil.copy2(f, target)
                month = spec.month_from_name(f.name)
                if month is None:  # month read from the header: land it to learn the month
                    from atr_pipeline.config import load_settings
                    from atr_pipeline.pipeline import land_path

                    month = land_path(target, spec, load_settings()).month
                partitions.add((source_id, f"{month:%Y-%m-01}"))
    return sorted(partitions, key=lambda p: (p[1], p[0]))


def run_partitions(partitions: list[tuple[str, str]], progress=print) -> list[PartitionResult]:
    import dagster as dg

    from atr_pipeline.definitions import defs
    from atr_pipeline.defs.partitions import first_month

    job = defs.resolve_job_def("attribution_job")
    instance = dg.DagsterInstance.get()
    results = []
    for source_id, month in partitions:
        start = first_month(source_id)
        if month < f"{start:%Y-%m-01}":  # Dagster has no such partition: say why instead of a traceback
            results.append(PartitionResult(source_id, month[:7], False, {}, {},
                                           f"not run: {month[:7]} is before the source's first month {start:%Y-%m} "
                                           "(first_month in its mapping)"))
            continue
        progress(f"running attribution_job for {source_id} {month[:7]} ...")
        key = dg.MultiPartitionKey({"month": month, "source": source_id})
        res = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False, run_config=QUIET)
        metadata: dict[str, dict] = {}
        checks: dict[str, bool] = {}
        for event in res.all_events:
            if event.event_type_value == "ASSET_MATERIALIZATION":
                mat = event.event_specific_data.materialization  # type: ignore[union-attr]
                metadata[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
            elif event.event_type_value == "ASSET_CHECK_EVALUATION":
                ev = event.event_specific_data
                checks[ev.check_name] = ev.passed  # type: ignore[union-attr]
        failure = ""
        if not res.success:
            for event in res.all_events:
                if event.event_type_value == "STEP_FAILURE":
                    err = event.event_specific_data.error  # type: ignore[union-attr]
                    failure = f"{event.step_key}: {err.message.strip().splitlines()[0] if err else 'failed'}"
                    break
        results.append(PartitionResult(source_id, month[:7], res.success, metadata, checks, failure))
    return results
