"""Assemble the Definitions: assets, checks, jobs, schedules, sensors, resources."""

from __future__ import annotations

import dagster as dg

from atr_pipeline.defs import assets
from atr_pipeline.defs.automation import attribution_failure_sensor, attribution_job, load_job, schedules
from atr_pipeline.defs.resources import AtrHome


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
        sensors=[attribution_failure_sensor],
        resources={"atr": AtrHome()},
        # One process: the multiprocess executor costs ~10x on small partitions (FACTS.md) and
        # DuckDB takes one writer process anyway.
        executor=dg.in_process_executor,
    )
