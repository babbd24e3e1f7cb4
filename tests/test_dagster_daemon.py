"""Dagster as `dagster dev` runs it: a real `dagster-daemon run` with a QueuedRunCoordinator
dequeuing runs into run workers, several at once.

A three-month backfill of one source requested newest first (2026-10, then 09, then 08, queued
in that order and started together: up to 3 concurrent runs) ends with the same exports as the
three months run in month order by `atr run`, and `atr trends` agrees; versions follow month
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
from pathlib import Path

import pytest
from overlap_tools import FIXTURES, MAPPINGS, ROOT, differences, in_order_reference, trend_rows

pytestmark = pytest.mark.timeout(600)

ACME = "acme_commercial"
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
            "ATR_ID_KEY": "test-key", "ATR_MAPPINGS_DIR": str(MAPPINGS)}


def test_backfill_requested_newest_first_equals_months_in_order(tmp_path: Path) -> None:
    from dagster import DagsterInstance, DagsterRunStatus

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
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([_dagster("dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for month in reversed(MONTHS):  # newest first, each queued behind the previous
            tags = json.dumps({"dagster/partition": f"{month}-01|{ACME}", "dagster/partition/month": f"{month}-01",
                               "dagster/partition/source": ACME, "dagster/backfill": "newest-first"})
            launched = subprocess.run([_dagster("dagster"), "job", "launch", "-j", "attribution_job", "-w",
                                       str(ROOT / "workspace.yaml"), "--tags", tags], cwd=ROOT, env=env,
                                      capture_output=True, text=True, timeout=180)
            assert launched.returncode == 0, launched.stdout + launched.stderr
        instance = DagsterInstance.from_config(str(dagster_home))
        deadline = time.monotonic() + 480
        while True:
            runs = instance.get_runs()
            done = [r for r in runs if r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)]
            if len(runs) == 3 and len(done) == 3:
                break
            states = [(r.tags.get("dagster/partition"), r.status) for r in runs]
            assert time.monotonic() < deadline, f"runs not finished: {states}\n" + (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(1)
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
