"""Dagster as `dagster dev` runs it: a real `dagster-daemon run` with a QueuedRunCoordinator
dequeuing runs into run workers, several at once.

The monthly schedules: both are started with `dagster schedule start --start-all`, as an operator
turns them on, and their stored start time is then moved back to one minute before the latest
`0 6 5 * *` (UTC) tick, as if they had been on since then and the daemon was down when it was due.
That is the one thing the test fakes (the daemon's clock is real and cannot wait a month). The
daemon's scheduler then catches up that tick on its own: the test checks that the daemon recorded
one successful tick per source at exactly that scheduled time and that each launched one run of
attribution_job for the month before the tick, for its own source only (partition
`<month>|<source>`, run key `schedule:<source>:<month>`). The inbox holds no file for that month,
so each run stops at landed_file with the no_file refusal naming that source and month: the run
looked for the month the schedule chose. (Ticks for other dates are in test_defs_automation.py.)

Then a three-month backfill of one source requested newest first (2026-10, then 09, then 08,
queued in that order and started together: up to 3 concurrent runs) ends with the same exports as
the three months run in month order by `atr run`, and `atr trends` agrees; versions follow month
order. Without the month-order rule, 10's run reached history first and published every member
as new.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from overlap_tools import FIXTURES, MAPPINGS, ROOT, differences, in_order_reference, trend_rows

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

pytestmark = pytest.mark.timeout(600)

ACME = "acme_commercial"
SOURCES = ["acme_commercial", "statewide_medicaid"]
SCHEDULE_DAY = 5
MONTHS = ["2026-08", "2026-09", "2026-10"]
DAGSTER_YAML = """\
nux:
  enabled: false
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 3
    dequeue_interval_seconds: 1
"""


def _dagster(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else name


def _env(dagster_home: Path, home: Path, inbox: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(dagster_home), "ATR_HOME": str(home), "ATR_INBOX": str(inbox),
            "ATR_ID_KEY": "test-key", "ATR_MAPPINGS_DIR": str(MAPPINGS), "ATR_SCHEDULE_DAY": str(SCHEDULE_DAY)}


def latest_tick(now: datetime) -> datetime:
    """The latest `0 6 <SCHEDULE_DAY> * *` (UTC) at or before ``now``."""
    tick = now.replace(day=SCHEDULE_DAY, hour=6, minute=0, second=0, microsecond=0)
    return tick if tick <= now else (tick.replace(day=1) - timedelta(days=1)).replace(day=SCHEDULE_DAY)


def start_schedules_before(tick: datetime, env: dict[str, str], dagster_home: Path) -> None:
    """`dagster schedule start --start-all`, then the monthly schedules' start moved to a minute before ``tick``."""
    from dagster import DagsterInstance
    from dagster._core.scheduler.instigation import InstigatorType, ScheduleInstigatorData

    started = subprocess.run([_dagster("dagster"), "schedule", "start", "--start-all", "-w", str(ROOT / "workspace.yaml")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    instance = DagsterInstance.from_config(str(dagster_home))
    moved = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE):
        if state.instigator_name.endswith("_monthly_schedule"):
            assert state.is_running, state.instigator_name
            data = ScheduleInstigatorData(state.instigator_data.cron_schedule,  # type: ignore[union-attr]
                                          start_timestamp=tick.timestamp() - 60)
            instance.update_instigator_state(state.with_data(data))
            moved.append(state.instigator_name)
    instance.dispose()
    assert sorted(moved) == [f"{s}_monthly_schedule" for s in SOURCES]


def finished(instance: DagsterInstance, tag: str, count: int, log: Path, timeout: float = 480) -> list[DagsterRun]:
    """The ``count`` runs carrying ``tag``, once all of them have ended."""
    from dagster import DagsterRunStatus

    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in instance.get_runs() if tag in r.tags]
        ended = [r for r in runs if r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)]
        if len(runs) == count and len(ended) == count:
            return runs
        states = [(r.tags.get("dagster/partition"), r.status) for r in runs]
        assert time.monotonic() < deadline, f"{tag} runs not finished: {states}\n" + log.read_text()[-3000:]
        time.sleep(1)


def previous_month(day: date) -> date:
    return (day.replace(day=1) - timedelta(days=1)).replace(day=1)


def test_monthly_schedules_then_a_newest_first_backfill_under_the_daemon(tmp_path: Path) -> None:
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    reference = in_order_reference(tmp_path / "reference", ACME, MONTHS)
    dagster_home, home, inbox = tmp_path / "dagster", tmp_path / "home", tmp_path / "inbox"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    inbox.mkdir()
    for f in (FIXTURES / ACME).iterdir():
        shutil.copy2(f, inbox / f.name)
    env = _env(dagster_home, home, inbox)
    # Create the instance's sqlite storages first: the daemon and `dagster job launch` creating
    # them at once race on alembic_version ("table alembic_version already exists").
    instance = DagsterInstance.from_config(str(dagster_home))
    instance.get_runs()
    instance.dispose()
    tick = latest_tick(datetime.now(UTC))
    due_month = previous_month(tick.date())
    assert due_month >= date(2026, 8, 1), "the mappings' first_month is 2026-08: this test assumes a date after 2026-09-05"
    start_schedules_before(tick, env, dagster_home)
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([_dagster("dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The daemon's scheduler catches up the due tick by itself: one run per source.
        instance = DagsterInstance.from_config(str(dagster_home))
        scheduled = finished(instance, "dagster/schedule_name", len(SOURCES), tmp_path / "daemon.log")
        assert sorted((r.tags["dagster/schedule_name"], r.tags["dagster/partition"], r.tags["dagster/run_key"], r.job_name)
                      for r in scheduled) == [
            (f"{s}_monthly_schedule", f"{due_month:%Y-%m-01}|{s}", f"schedule:{s}:{due_month:%Y-%m}", "attribution_job")
            for s in SOURCES]
        for run in scheduled:
            assert run.status == DagsterRunStatus.FAILURE
            failures = [e.dagster_event for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)]
            assert [e.step_key for e in failures] == ["landed_file"]
            refusal = failures[0].step_failure_data.user_failure_data.metadata
            assert (refusal["rule"].value, refusal["file"].value) == ("no_file", f"{run.tags['dagster/partition/source']} {due_month:%Y-%m}")
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE):
            if state.instigator_name.endswith("_monthly_schedule"):
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
                assert [(t.status, t.timestamp) for t in ticks] == [(TickStatus.SUCCESS, tick.timestamp())], state.instigator_name
                assert len(ticks[0].run_ids) == 1
        instance.dispose()

        for month in reversed(MONTHS):  # newest first, each queued behind the previous
            tags = json.dumps({"dagster/partition": f"{month}-01|{ACME}", "dagster/partition/month": f"{month}-01",
                               "dagster/partition/source": ACME, "dagster/backfill": "newest-first"})
            launched = subprocess.run([_dagster("dagster"), "job", "launch", "-j", "attribution_job", "-w",
                                       str(ROOT / "workspace.yaml"), "--tags", tags], cwd=ROOT, env=env,
                                      capture_output=True, text=True, timeout=180)
            assert launched.returncode == 0, launched.stdout + launched.stderr
        instance = DagsterInstance.from_config(str(dagster_home))
        runs = finished(instance, "dagster/backfill", len(MONTHS), tmp_path / "daemon.log")
        # The queue started them newest first.
        starts = sorted(runs, key=lambda r: instance.get_run_record_by_id(r.run_id).start_time or 0)
        assert [r.tags["dagster/partition"][:7] for r in starts] == list(reversed(MONTHS))
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), [(r.tags["dagster/partition"], r.status) for r in runs]
        instance.dispose()
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
        log.close()
    assert differences(home, reference, ACME) == []
    assert trend_rows(home, ACME) == trend_rows(reference, ACME)
