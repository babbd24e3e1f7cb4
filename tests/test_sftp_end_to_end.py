"""A file dropped on the SFTP server is landed exactly once and flows through the whole pipeline
from the sensor's run request (real asyncssh server, real Definitions, real job)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from atr_pipeline.defs.build import build_definitions
from atr_pipeline.sources.landing import Ledger

pytest_plugins = ["sftp_servers"]
ROOT = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
NAME = "ACME_ATTRIB_202608.csv"


def test_sensor_request_lands_once_and_exports(sftp_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy2(ROOT / "fixtures" / "acme_commercial" / NAME, sftp_server.root / "inbox" / NAME)
    home = tmp_path / "home"
    for var, value in {
        "ATR_HOME": str(home), "ATR_INBOX": str(tmp_path / "empty_inbox"), "ATR_ID_KEY": "e2e",
        "ATR_MAPPINGS_DIR": str(ROOT / "mappings"), **sftp_server.sensor_env(tmp_path),
    }.items():
        monkeypatch.setenv(var, value)
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("sftp_inbox_sensor")
    job = defs.resolve_job_def("attribution_job")
    with dg.instance_for_test() as instance:
        cursor = None
        requests = []
        for _ in range(3):  # observe, request, then nothing new
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=dict(defs.resources or {}))
            data = sensor.evaluate_tick(ctx)
            requests.append(list(data.run_requests or []))
            cursor = data.cursor
        assert [len(r) for r in requests] == [0, 1, 0]
        (request,) = requests[1]
        for attempt in range(2):  # a retried run for the same request must not land the file twice
            result = job.execute_in_process(
                partition_key=request.partition_key, tags=request.tags, instance=instance, run_config=QUIET, raise_on_error=False
            )
            assert result.success, attempt
    ledger = Ledger.for_landing(home / "landing")
    entries = ledger.entries()
    assert [(e.original_name, e.status) for e in entries] == [(NAME, "processed")]
    manifest = json.loads((home / "exports" / "acme_commercial" / "2026-08" / "manifest.json").read_text())
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts["Patient"] == 40 and counts["Group"] == 2
