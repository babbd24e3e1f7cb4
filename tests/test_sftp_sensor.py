"""The Dagster sensor and resource against a real asyncssh SFTP server: run keys, partitions, cursors."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from itertools import count

import dagster as dg
import pytest

from atr_pipeline.defs.sftp_sensor import (
    SftpResource,
    build_sftp_sensor,
    remote_file_of_run,
    sftp_resource_from_env,
)
from atr_pipeline.sources.landing import Ledger
from atr_pipeline.sources.polling import SensorCursor, new_reports

pytest_plugins = ["sftp_servers"]

MTIME = 1767225600
JAN, FEB = "acme_attribution_202601.csv", "acme_attribution_202602.csv"
# sha256("name\0size\0mtime")[:24] for the two files below (sizes 2000 and 1000).
KEY_JAN = "sftp-93312a754a308873dd26b6fe"
KEY_FEB = "sftp-02e15eba4b2a425e51096eb0"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

PARTITIONS = dg.MultiPartitionsDefinition({
    "month": dg.MonthlyPartitionsDefinition(start_date="2025-01-01"),
    "source": dg.StaticPartitionsDefinition(["acme"]),
})


@dg.asset(partitions_def=PARTITIONS, required_resource_keys={"sftp"})
def landed_files(context) -> dg.MaterializeResult:
    """Stand-in for the real landing asset: downloads the file named in the run's tags."""
    name = remote_file_of_run(context)
    outcome = context.resources.sftp.fetch_one(name, _MAPPINGS, landing_dir=_LANDING[0])
    return dg.MaterializeResult(metadata={"sha256": outcome.file.sha256, "status": outcome.status})


_MAPPINGS: dict = {}
_LANDING: list = []
ingest_job = dg.define_asset_job("ingest_job", selection=[landed_files])


def _put(server, name, size):
    p = server.root / "inbox" / name
    p.write_bytes(b"x" * size)
    os.utime(p, (MTIME, MTIME))


@pytest.fixture
def setup(sftp_server, tmp_path, acme_spec):
    resource = SftpResource(host="127.0.0.1", port=sftp_server.port, username=sftp_server.username,
                            password=sftp_server.password, known_hosts=str(sftp_server.known_hosts(tmp_path / "kh")),
                            inbox="/inbox", backoff_initial=0.05)
    ticks = count()
    sensor = build_sftp_sensor(ingest_job, {"acme": acme_spec}, minimum_interval_seconds=30, stable_polls=2, quiet_seconds=0,
                               clock=lambda: T0 + timedelta(minutes=next(ticks)))
    defs = dg.Definitions(assets=[landed_files], jobs=[ingest_job], sensors=[sensor], resources={"sftp": resource})
    _MAPPINGS.clear()
    _MAPPINGS["acme"] = acme_spec
    _LANDING[:] = [tmp_path / "landing"]
    return sftp_server, sensor, defs, resource


def _tick(sensor, defs, resource, cursor):
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"sftp": resource}, definitions=defs)
        data = sensor.evaluate_tick(ctx)
    return data.run_requests, data.cursor


def test_sensor_definition(setup):
    _, sensor, _, _ = setup
    assert (sensor.name, sensor.minimum_interval_seconds, sensor.job_name) == ("sftp_inbox_sensor", 30, "ingest_job")


def test_ticks_request_each_stable_file_once(setup):
    server, sensor, defs, resource = setup
    _put(server, JAN, 1000)
    runs1, c1 = _tick(sensor, defs, resource, None)
    _put(server, JAN, 2000)  # still growing
    _put(server, FEB, 1000)
    runs2, c2 = _tick(sensor, defs, resource, c1)
    runs3, c3 = _tick(sensor, defs, resource, c2)
    runs4, c4 = _tick(sensor, defs, resource, c3)
    assert [r.run_key for r in runs1] == []
    assert [r.run_key for r in runs2] == []
    assert [r.run_key for r in runs3] == [KEY_JAN, KEY_FEB]
    assert [r.run_key for r in runs4] == []
    assert [r.partition_key for r in runs3] == ["2026-01-01|acme", "2026-02-01|acme"]
    assert [r.partition_key.keys_by_dimension for r in runs3] == [
        {"month": "2026-01-01", "source": "acme"}, {"month": "2026-02-01", "source": "acme"}]
    assert [r.tags["atr/remote_file"] for r in runs3] == [JAN, FEB]
    assert c2 == (
        '{"observations":{"acme_attribution_202601.csv":[2000,1767225600,1,"2026-03-01T12:01:00+00:00"],'
        '"acme_attribution_202602.csv":[1000,1767225600,1,"2026-03-01T12:01:00+00:00"]},"reported":{},"requested":{},"v":1}'
    )
    assert c4 == (
        '{"observations":{"acme_attribution_202601.csv":[2000,1767225600,3,"2026-03-01T12:01:00+00:00"],'
        '"acme_attribution_202602.csv":[1000,1767225600,3,"2026-03-01T12:01:00+00:00"]},"reported":{},'
        f'"requested":{{"{KEY_FEB}":"2026-03-01T12:03:00+00:00","{KEY_JAN}":"2026-03-01T12:03:00+00:00"}},"v":1}}'
    )


def test_lost_cursor_gives_the_same_run_keys(setup):
    server, sensor, defs, resource = setup
    _put(server, JAN, 2000)
    _, c1 = _tick(sensor, defs, resource, None)
    first, _ = _tick(sensor, defs, resource, c1)
    lost1, lc1 = _tick(sensor, defs, resource, None)
    lost2, _ = _tick(sensor, defs, resource, lc1)
    assert [r.run_key for r in first] == [KEY_JAN]
    assert [r.run_key for r in lost1] == []
    assert [r.run_key for r in lost2] == [KEY_JAN]
    assert SensorCursor.from_json(lc1).requested == {}


def test_run_tags_drive_the_landing_asset(setup):
    server, sensor, defs, resource = setup
    _put(server, FEB, 1000)
    _, c1 = _tick(sensor, defs, resource, None)
    [req], _ = _tick(sensor, defs, resource, c1)
    result = dg.materialize([landed_files], partition_key=req.partition_key, resources={"sftp": resource},
                            tags=req.tags)
    assert result.success
    [mat] = result.asset_materializations_for_node("landed_files")
    assert mat.metadata["sha256"].value == hashlib.sha256(b"x" * 1000).hexdigest()
    assert [e.original_name for e in Ledger.for_landing(_LANDING[0]).entries()] == [FEB]


def test_resource_from_env_uses_env_vars(tmp_path, monkeypatch, sftp_server):
    kh = sftp_server.known_hosts(tmp_path / "kh")
    env = {"ATR_SFTP_HOST": "127.0.0.1", "ATR_SFTP_PORT": str(sftp_server.port), "ATR_SFTP_USER": "payer",
           "ATR_SFTP_PASSWORD": sftp_server.password, "ATR_SFTP_KNOWN_HOSTS": str(kh), "ATR_SFTP_INBOX": "/inbox"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    resource = sftp_resource_from_env()
    # Secrets stay EnvVar references in the definition; the value is read at run time.
    assert isinstance(resource.password, dg.EnvVar) and resource.password.env_var_name == "ATR_SFTP_PASSWORD"
    _put(sftp_server, JAN, 10)
    with dg.build_resources({"sftp": resource}) as built:
        with built.sftp.open() as src:
            assert [f.name for f in src.list_inbox()] == [JAN]


def test_files_that_cannot_be_requested_are_reported_once_and_never_stall_the_rest(setup):
    """Months outside the job's partitions, month 13, a symlink: reported; the good file is requested."""
    server, sensor, defs, resource = setup
    for name in ("acme_attribution_202412.csv", "acme_attribution_203001.csv", "acme_attribution_202613.csv"):
        _put(server, name, 10)
    os.symlink("/etc/passwd", server.root / "inbox" / "acme_attribution_202603.csv")
    _put(server, FEB, 1000)
    runs1, c1 = _tick(sensor, defs, resource, None)
    runs2, c2 = _tick(sensor, defs, resource, c1)
    runs3, c3 = _tick(sensor, defs, resource, c2)
    assert [r.run_key for r in runs1] == [] and [r.run_key for r in runs3] == []
    assert [r.tags["atr/remote_file"] for r in runs2] == [FEB]
    first, second, third = (SensorCursor.from_json(c) for c in (c1, c2, c3))
    assert sorted(second.reported.values()) == [
        "acme_attribution_202412.csv: month 2024-12 has no partition (before the first or after the last month of the "
        "job); not requested until it has one",
        "acme_attribution_202603.csv: a symbolic link; only regular files are fetched; not requested",
        "acme_attribution_202613.csv: the month in the name is not a valid month (mapping acme); not requested",
        "acme_attribution_203001.csv: month 2030-01 has no partition (before the first or after the last month of the "
        "job); not requested until it has one",
    ]
    # Reported when first judged (the symlink on the first tick, the others once stable), then never again.
    assert len(new_reports(SensorCursor(), first)) == 1 and len(new_reports(first, second)) == 3
    assert new_reports(second, third) == [] and third.reported == second.reported
    # The cursor keeps advancing: every file's observation counts this tick too.
    assert {n: o.polls for n, o in third.observations.items()} == {
        "acme_attribution_202412.csv": 3, "acme_attribution_202613.csv": 3, "acme_attribution_203001.csv": 3, FEB: 3}


def test_sensor_tick_against_a_server_that_never_starts_sftp_is_bounded(setup, tmp_path):
    from atr_pipeline.sources.sftp import SftpConnectionError

    server, sensor, defs, _ = setup
    server.never_start_sftp()
    resource = SftpResource(host="127.0.0.1", port=server.port, username=server.username, password=server.password,
                            known_hosts=str(server.known_hosts(tmp_path / "kh2")), inbox="/inbox", backoff_initial=0.05,
                            connect_timeout=1)
    with pytest.raises(SftpConnectionError) as err:
        _tick(sensor, defs, resource, None)
    assert "did not start within 1 s" in str(err.value)


def test_refused_login_pauses_the_sensor_instead_of_retrying_every_tick(setup, tmp_path):
    server, sensor, defs, _ = setup
    resource = SftpResource(host="127.0.0.1", port=server.port, username=server.username, password="not-it-123",
                            known_hosts=str(server.known_hosts(tmp_path / "kh2")), inbox="/inbox", backoff_initial=0.05)
    cursors = [None]
    for _ in range(3):  # three ticks, one minute apart
        with dg.instance_for_test() as instance:
            ctx = dg.build_sensor_context(instance=instance, cursor=cursors[-1], resources={"sftp": resource},
                                          definitions=defs)
            data = sensor.evaluate_tick(ctx)
        assert data.run_requests == []
        cursors.append(data.cursor)
    assert server.password_attempts == 1  # one refused login, not one per tick
    paused = SensorCursor.from_json(cursors[-1]).paused
    assert paused[0] == "2026-03-01T13:00:00+00:00"  # an hour after the first tick (12:00)
    assert paused[1].startswith("authentication failed for payer@127.0.0.1")
    assert data.skip_message.startswith("paused until 2026-03-01T13:00:00+00:00 after: authentication failed")
    assert "not-it-123" not in cursors[-1] + data.skip_message


def test_done_marker_from_the_resource_gates_the_sensor(sftp_server, tmp_path, acme_spec):
    resource = SftpResource(host="127.0.0.1", port=sftp_server.port, username=sftp_server.username,
                            password=sftp_server.password, known_hosts=str(sftp_server.known_hosts(tmp_path / "kh")),
                            inbox="/inbox", done_suffix=".done")
    sensor = build_sftp_sensor(ingest_job, {"acme": acme_spec}, stable_polls=2, quiet_seconds=0,
                               clock=lambda: T0)
    defs = dg.Definitions(assets=[landed_files], jobs=[ingest_job], sensors=[sensor], resources={"sftp": resource})
    _put(sftp_server, FEB, 1000)
    runs1, c1 = _tick(sensor, defs, resource, None)
    runs2, c2 = _tick(sensor, defs, resource, c1)  # stable, but no marker: not requested
    _put(sftp_server, FEB + ".done", 0)
    runs3, _ = _tick(sensor, defs, resource, c2)
    assert [[r.tags["atr/remote_file"] for r in runs] for runs in (runs1, runs2, runs3)] == [[], [], [FEB]]
