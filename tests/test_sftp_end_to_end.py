"""A file dropped on the SFTP server is landed exactly once and flows through the whole pipeline
from the sensor's run request (real asyncssh server, real Definitions, real job)."""

from __future__ import annotations

import hashlib
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


def test_pull_with_run_gives_the_sensor_paths_export(sftp_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`atr sftp-pull --run` and the sensor's run land and process the same file to the same resources."""
    from typer.testing import CliRunner

    from atr_pipeline.cli import app

    shutil.copy2(ROOT / "fixtures" / "acme_commercial" / NAME, sftp_server.root / "inbox" / NAME)
    env = {"ATR_INBOX": str(tmp_path / "empty_inbox"), "ATR_ID_KEY": "e2e", "ATR_MAPPINGS_DIR": str(ROOT / "mappings"),
           **sftp_server.sensor_env(tmp_path)}
    for var, value in {**env, "ATR_HOME": str(tmp_path / "sensor")}.items():
        monkeypatch.setenv(var, value)
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("sftp_inbox_sensor")
    with dg.instance_for_test() as instance:
        cursor = None
        for _ in range(2):
            data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                                                resources=dict(defs.resources or {})))
            cursor = data.cursor
        (request,) = data.run_requests
        result = defs.resolve_job_def("attribution_job").execute_in_process(
            partition_key=request.partition_key, tags=request.tags, instance=instance, run_config=QUIET)
        assert result.success
    monkeypatch.setenv("ATR_HOME", str(tmp_path / "pull"))
    pulled = CliRunner().invoke(app, ["sftp-pull", "--settle-seconds", "0", "--run"])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.output.splitlines()[-1].startswith(f"processed {NAME} (2026-08): 42 rows read, 42 accepted, 0 rejected")

    def resources(home: Path) -> dict[str, list[str]]:
        folder = home / "exports" / "acme_commercial" / "2026-08"
        out = {}
        for p in sorted(folder.glob("*.ndjson")):
            # Group.meta.lastUpdated carries the run's time (every other file is byte-identical); ids, codes,
            # references and members do not.
            out[p.name] = sorted(json.dumps({k: v for k, v in json.loads(line).items() if k != "meta"}, sort_keys=True)
                                 for line in p.read_text().splitlines())
        return out

    sensor_side, pull_side = resources(tmp_path / "sensor"), resources(tmp_path / "pull")
    assert sorted(sensor_side) == sorted(pull_side) and len(sensor_side["Patient.ndjson"]) == 40
    assert sensor_side == pull_side
    for home in ("sensor", "pull"):
        [entry] = Ledger.for_landing(tmp_path / home / "landing").entries()
        assert (entry.original_name, entry.status) == (NAME, "processed")


def test_assets_connect_with_the_sftp_resource_not_the_environment(sftp_server, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """landed_file downloads, and validated_rows returns the rejects, with the `sftp` resource's settings.

    No ATR_SFTP_* connection variable is set: before the assets took the resource they read the
    environment (config_from_env) and this run failed with "invalid SFTP settings host (ATR_SFTP_HOST)".
    """
    from atr_pipeline.defs import assets
    from atr_pipeline.defs.resources import AtrHome, SftpResource
    from atr_pipeline.sources.sftp import ENV_VARS

    bad = ROOT / "fixtures" / "bad" / "bad_values" / NAME  # 3 of 7 rows rejected: rejects go back, then refused
    shutil.copy2(bad, sftp_server.root / "inbox" / NAME)
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ATR_SFTP_OUTBOX", "/outbox")
    monkeypatch.setenv("ATR_ID_KEY", "e2e")
    env = sftp_server.sensor_env(tmp_path)
    sftp = SftpResource(host="127.0.0.1", port=sftp_server.port, username=sftp_server.username,
                        password=sftp_server.password, known_hosts=env["ATR_SFTP_KNOWN_HOSTS"], inbox="/inbox")
    home = tmp_path / "home"
    atr = AtrHome(home=str(home), inbox=str(tmp_path / "empty_inbox"), mappings_dir=str(ROOT / "mappings"))
    result = dg.materialize([assets.landed_file, assets.canonical_rows, assets.validated_rows],
                            resources={"atr": atr, "sftp": sftp}, tags={"atr/remote_file": NAME}, run_config=QUIET,
                            partition_key=dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"}),
                            raise_on_error=False)
    [landed] = result.asset_materializations_for_node("landed_file")
    assert landed.metadata["sha256"].value == hashlib.sha256(bad.read_bytes()).hexdigest()
    assert [e.original_name for e in Ledger.for_landing(home / "landing").entries()] == [NAME]
    # validated_rows refused the file (reject threshold) after uploading its rejects with the resource.
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "validated_rows" and "reject_threshold" in str(failure.event_specific_data)
    assert [p.name for p in (sftp_server.root / "outbox").iterdir()] == ["ACME_ATTRIB_202608.rejects.csv"]
