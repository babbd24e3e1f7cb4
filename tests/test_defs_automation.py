"""Automation around the asset graph: monthly schedules, retry policies, the run-failure message,
and the SFTP inbox sensor wired into the real Definitions (against a real asyncssh server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from atr_pipeline.defs import assets
from atr_pipeline.defs.automation import WHAT_TO_DO, attribution_failure_sensor, schedules
from atr_pipeline.defs.build import build_definitions

pytest_plugins = ["sftp_servers"]

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["acme_commercial", "statewide_medicaid"]
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@pytest.fixture
def no_sftp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("ATR_SFTP_") or var == "ATR_SCHEDULE_DAY":
            monkeypatch.delenv(var)


def evaluate(name: str, when: datetime) -> tuple[dg.ScheduleDefinition, list[dg.RunRequest]]:
    """One tick of a schedule of the real Definitions (built now: ATR_SCHEDULE_DAY is read at build)."""
    defs = build_definitions()
    schedule = defs.resolve_schedule_def(name)
    ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
    return schedule, list(schedule.evaluate_tick(ctx).run_requests or [])


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("when", "month", "run_month"),
    [
        (datetime(2027, 1, 5, 6, 0, tzinfo=UTC), "2026-12-01", "2026-12"),  # January runs December
        (datetime(2026, 9, 5, 6, 0, tzinfo=UTC), "2026-08-01", "2026-08"),  # the sources' first_month
        (datetime(2027, 3, 5, 6, 0, tzinfo=UTC), "2027-02-01", "2027-02"),
    ],
)
def test_monthly_schedule_requests_the_previous_month(no_sftp_env: None, when: datetime, month: str, run_month: str) -> None:
    assert sorted(s.name for s in schedules()) == [f"{s}_monthly_schedule" for s in SOURCES]
    for source in SOURCES:
        schedule, (request,) = evaluate(f"{source}_monthly_schedule", when)
        assert schedule.cron_schedule == "0 6 5 * *"
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
        assert schedule.job_name == "attribution_job"
        assert str(request.partition_key) == f"{month}|{source}"
        assert request.run_key == f"schedule:{source}:{run_month}"


def test_schedule_day_from_the_environment(no_sftp_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATR_SCHEDULE_DAY", "12")
    crons = {s.name: s.cron_schedule for s in schedules()}
    assert crons == {f"{s}_monthly_schedule": "0 6 12 * *" for s in SOURCES}
    _, (request,) = evaluate("acme_commercial_monthly_schedule", datetime(2026, 11, 12, 6, 0, tzinfo=UTC))
    assert (str(request.partition_key), request.run_key) == ("2026-10-01|acme_commercial", "schedule:acme_commercial:2026-10")


@pytest.mark.parametrize("day", ["0", "29", "31"])
def test_schedule_day_that_some_month_lacks_is_refused(monkeypatch: pytest.MonkeyPatch, day: str) -> None:
    monkeypatch.setenv("ATR_SCHEDULE_DAY", day)
    with pytest.raises(ValueError, match=f"ATR_SCHEDULE_DAY must be 1..28 .*got {day}"):
        schedules()


def test_a_month_before_the_sources_first_month_is_skipped(no_sftp_env: None) -> None:
    """Both bundled mappings declare first_month 2026-08: August 2026's tick runs July, which they never delivered."""
    schedule = build_definitions().resolve_schedule_def("acme_commercial_monthly_schedule")
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 8, 5, 6, 0, tzinfo=UTC))
    data = schedule.evaluate_tick(ctx)
    assert not data.run_requests
    assert data.skip_message == ("acme_commercial: 2026-07 is before its first month 2026-08 "
                                 "(first_month in its mapping, else ATR_PARTITIONS_START)")


def test_partitions_start_at_the_first_month_of_the_sources() -> None:
    """The month dimension starts at the mappings' first_month (2026-08), not years before the first delivery."""
    job = build_definitions().resolve_job_def("attribution_job")
    keys = job.partitions_def.get_partition_keys(current_time=datetime(2026, 11, 20, tzinfo=UTC))
    assert keys == [f"2026-{m:02d}-01|{s}" for m in (8, 9, 10, 11) for s in SOURCES]  # end_offset=1: November too


PARTITIONS_SCRIPT = """
import json
from datetime import UTC, datetime
import dagster as dg
from atr_pipeline.definitions import defs
keys = defs.resolve_job_def("attribution_job").partitions_def.get_partition_keys(current_time=datetime(2026, 11, 20, tzinfo=UTC))
ticks = {}
for source in ("acme_commercial", "statewide_medicaid"):
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 10, 5, 6, 0, tzinfo=UTC),
                                    repository_def=defs.get_repository_def())
    data = defs.resolve_schedule_def(source + "_monthly_schedule").evaluate_tick(ctx)
    ticks[source] = [str(r.partition_key) for r in data.run_requests or []] or data.skip_message
print(json.dumps({"months": sorted({k.split("|")[0] for k in keys}), "ticks": ticks}))
"""


def partitions_with(tmp_path: Path, first_months: dict[str, str | None], start: str | None) -> dict:
    """The real definitions loaded in a fresh process (partitions are built at import) over mappings
    whose first_month lines are replaced: a value sets it, None removes it."""
    folder = tmp_path / "mappings"
    folder.mkdir(parents=True)
    for source, month in first_months.items():
        text = (ROOT / "mappings" / f"{source}.yaml").read_text()
        assert "first_month: 2026-08\n" in text
        (folder / f"{source}.yaml").write_text(text.replace("first_month: 2026-08\n", f"first_month: {month}\n" if month else ""))
    env = {k: v for k, v in os.environ.items() if k != "ATR_PARTITIONS_START"}
    env.update({"ATR_MAPPINGS_DIR": str(folder), "PYTHONPATH": str(ROOT)}, **({"ATR_PARTITIONS_START": start} if start else {}))
    done = subprocess.run([sys.executable, "-c", PARTITIONS_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_source_starts_at_its_own_first_month_and_partitions_start_falls_back(tmp_path: Path) -> None:
    # statewide starts in October: the grid starts at acme's August; statewide's September tick is skipped
    later = partitions_with(tmp_path / "later", {"acme_commercial": "2026-08", "statewide_medicaid": "2026-10"}, None)
    assert later["months"] == ["2026-08-01", "2026-09-01", "2026-10-01", "2026-11-01"]
    assert later["ticks"] == {"acme_commercial": ["2026-09-01|acme_commercial"],
                              "statewide_medicaid": "statewide_medicaid: 2026-09 is before its first month 2026-10 "
                                                    "(first_month in its mapping, else ATR_PARTITIONS_START)"}
    # a mapping without first_month starts at ATR_PARTITIONS_START (YYYY-MM)
    fallback = partitions_with(tmp_path / "fallback", {"acme_commercial": "2026-08", "statewide_medicaid": None}, "2026-06")
    assert fallback["months"][0] == "2026-06-01" and len(fallback["months"]) == 6
    assert fallback["ticks"]["statewide_medicaid"] == ["2026-09-01|statewide_medicaid"]


# ---------------------------------------------------------------- retries


def test_retry_policies_on_io_assets_only() -> None:
    policies = {a.key.to_user_string(): a.op.retry_policy for a in (
        assets.landed_file, assets.canonical_rows, assets.validated_rows, assets.attribution_snapshot,
        assets.fhir_resources, assets.bulk_export, assets.server_load)}
    io = {k: (p.max_retries, p.delay, p.backoff, p.jitter) for k, p in policies.items() if p is not None}
    assert io == {k: (3, 2, dg.Backoff.EXPONENTIAL, dg.Jitter.PLUS_MINUS) for k in ("landed_file", "bulk_export", "server_load")}
    assert {k for k, p in policies.items() if p is None} == {"canonical_rows", "validated_rows", "attribution_snapshot", "fhir_resources"}


def run_missing_month(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """attribution_job for a month whose file never arrived (empty inbox)."""
    (tmp_path / "inbox").mkdir()
    monkeypatch.setenv("ATR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATR_INBOX", str(tmp_path / "inbox"))
    monkeypatch.setenv("ATR_ID_KEY", "automation-test")
    job = build_definitions().resolve_job_def("attribution_job")
    return job.execute_in_process(
        partition_key=dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"}),
        instance=instance, raise_on_error=False, run_config=QUIET,
    )


def test_a_refused_delivery_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with dg.instance_for_test() as instance:
        result = run_missing_month(tmp_path, monkeypatch, instance)
    assert not result.success
    kinds = [(e.event_type_value, e.step_key) for e in result.all_events
             if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_FAILURE", "STEP_SUCCESS")]
    # The retry policy is for transient I/O; "no file for this month" fails once, at once.
    assert kinds == [("STEP_FAILURE", "landed_file")]
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.metadata["rule"].value == "no_file"
    assert failure.metadata["file"].value == "acme_commercial 2026-08"


# ---------------------------------------------------------------- the run failure sensor


def test_failure_sensor_names_the_step_the_rule_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with dg.instance_for_test() as instance:
        result = run_missing_month(tmp_path, monkeypatch, instance)
        run = instance.get_run_by_id(result.run_id)
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        ctx = dg.build_run_status_sensor_context(
            sensor_name="attribution_failure_sensor", dagster_event=failure, dagster_instance=instance, dagster_run=run,
        ).for_run_failure()
        capfd.readouterr()
        attribution_failure_sensor(ctx)  # Dagster's sensor logger writes to stderr
    lines = [line for line in capfd.readouterr().err.splitlines() if "failed at" in line]
    assert [line.split(" - ERROR - ", 1)[1] for line in lines] == [
        f"run {result.run_id} failed at landed_file (refused: no_file): {WHAT_TO_DO['landed_file']}"
    ]
    messages = lines
    assert "ATR_INBOX" in messages[0]


def test_failure_hints_cover_every_asset() -> None:
    keys = {k.to_user_string() for k in build_definitions().resolve_asset_graph().get_all_asset_keys()}
    assert set(WHAT_TO_DO) == keys


# ---------------------------------------------------------------- the SFTP sensor in the definitions


def test_definitions_load_without_sftp_settings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATR_SFTP_")}
    code = (
        "from atr_pipeline.definitions import defs\n"
        "s = defs.resolve_sensor_def('sftp_inbox_sensor')\n"
        "print(sorted(x.name for x in defs.sensors), s.default_status.value, s.job_name, sorted(s.required_resource_keys))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['attribution_failure_sensor', 'mapping_errors_sensor', 'sftp_inbox_sensor'] STOPPED attribution_job ['sftp']"


def test_unconfigured_sftp_sensor_names_the_missing_variable(no_sftp_env: None) -> None:
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("sftp_inbox_sensor")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs, resources=dict(defs.resources or {}))
        with pytest.raises(Exception, match="ATR_SFTP_HOST"):
            sensor.evaluate_tick(ctx)


def test_wired_sftp_sensor_requests_an_attribution_partition(sftp_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "ACME_ATTRIB_202608.csv"
    shutil.copy2(ROOT / "fixtures" / "acme_commercial" / name, sftp_server.root / "inbox" / name)
    for var, value in sftp_server.sensor_env(tmp_path).items():
        monkeypatch.setenv(var, value)
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("sftp_inbox_sensor")
    job = defs.resolve_job_def("attribution_job")
    cursor = None
    ticks = []
    with dg.instance_for_test() as instance:
        for _ in range(2):  # the first listing only observes; the second sees the size and mtime unchanged
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=dict(defs.resources or {}))
            data = sensor.evaluate_tick(ctx)
            ticks.append(list(data.run_requests or []))
            cursor = data.cursor
    assert ticks[0] == []
    (request,) = ticks[1]
    assert str(request.partition_key) == "2026-08-01|acme_commercial"
    assert request.tags["atr/remote_file"] == name
    assert request.run_key.startswith("sftp-")
    assert str(request.partition_key) in job.partitions_def.get_partition_keys(current_time=datetime(2026, 11, 20, tzinfo=UTC))


def test_failure_sensor_names_the_failed_check_and_its_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy2(ROOT / "fixtures" / "bad" / "trailer_count" / "SWMCD_ME_202608.txt", inbox)
    monkeypatch.setenv("ATR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATR_INBOX", str(inbox))
    monkeypatch.setenv("ATR_ID_KEY", "automation-test")
    with dg.instance_for_test() as instance:
        result = build_definitions().resolve_job_def("attribution_job").execute_in_process(
            partition_key=dg.MultiPartitionKey({"month": "2026-08-01", "source": "statewide_medicaid"}),
            instance=instance, raise_on_error=False, run_config=QUIET,
        )
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        ctx = dg.build_run_status_sensor_context(
            sensor_name="attribution_failure_sensor", dagster_event=failure, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id),
        ).for_run_failure()
        capfd.readouterr()
        attribution_failure_sensor(ctx)
    lines = [line.split(" - ERROR - ", 1)[1] for line in capfd.readouterr().err.splitlines() if "failed at" in line]
    assert lines == [
        # canonical_rows itself fails with the refusal (rule in the dg.Failure), and its check says the same
        f"run {result.run_id} failed at canonical_rows (refused: trailer_count; check control_totals_match failed: trailer_count): "
        f"{WHAT_TO_DO['canonical_rows']}"
    ]
