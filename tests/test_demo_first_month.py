"""`atr demo` on a file dated before its source's first month: a clear outcome, not a Dagster traceback."""

from __future__ import annotations

from atr_pipeline.demo import run_partitions


def test_a_month_before_the_first_month_is_reported_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    [result] = run_partitions([("acme_commercial", "2026-07-01")], progress=lambda _: None)
    assert not result.success and result.month == "2026-07"
    assert result.failure == ("not run: 2026-07 is before the source's first month 2026-08 "
                              "(first_month in its mapping)")
