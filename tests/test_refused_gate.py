"""A refused file never reaches history or FHIR: not in the same run (blocking checks) and not
in a later run that re-materializes only the downstream assets (the ledger gate)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from atr_pipeline.errors import FileRefused

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
KEY = dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"})


@pytest.fixture
def env(tmp_path, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    monkeypatch.setenv("ATR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATR_INBOX", str(inbox))
    monkeypatch.setenv("ATR_MAPPINGS_DIR", str(ROOT / "mappings"))
    monkeypatch.setenv("ATR_ID_KEY", "gate-test")
    with dg.instance_for_test() as instance:
        yield inbox, tmp_path / "home", instance


def _defs():
    from atr_pipeline.defs.build import build_definitions

    return build_definitions()


def test_threshold_refused_file_is_stopped_now_and_in_later_runs(env):
    inbox, home, instance = env
    shutil.copy(ROOT / "fixtures/bad/bad_values/ACME_ATTRIB_202608.csv", inbox)
    job = _defs().resolve_job_def("attribution_job")
    res = job.execute_in_process(partition_key=KEY, instance=instance, raise_on_error=False, run_config=QUIET)
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in res.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks == {"control_totals_match": True, "rejects_under_threshold": False}
    materialized = {e.asset_key.to_user_string() for e in res.get_asset_materialization_events()}
    assert "attribution_snapshot" not in materialized and "fhir_resources" not in materialized
    assert not (home / "history" / "acme_commercial.duckdb").exists()
    # The sender still gets the rejects CSV.
    assert (home / "rejects" / "acme_commercial" / "2026-08" / "ACME_ATTRIB_202608.rejects.csv").exists()

    # A later run of only the history asset: the refused validated_rows stored no value (it failed),
    # so there is nothing to load and history is not written.
    defs = _defs()
    later = dg.materialize(
        list(defs.assets),  # type: ignore[arg-type]
        selection=["attribution_snapshot"],
        partition_key=KEY,
        instance=instance,
        resources=dict(defs.resources),  # type: ignore[arg-type]
        raise_on_error=False,
        run_config=QUIET,
    )
    assert not later.success
    failure = next(e for e in later.all_events if e.event_type_value == "STEP_FAILURE")
    assert "validated_rows" in failure.event_specific_data.error.message  # type: ignore[union-attr]
    assert not (home / "history" / "acme_commercial.duckdb").exists()


def test_ledger_gate_refuses_a_delivery_marked_refused(env, tmp_path):
    from atr_pipeline import pipeline
    from atr_pipeline.config import load_settings
    from atr_pipeline.layouts.spec import load_mapping

    inbox, home, _ = env
    shutil.copy(ROOT / "fixtures/acme_commercial/ACME_ATTRIB_202608.csv", inbox)
    settings = load_settings()
    spec = load_mapping(ROOT / "mappings/acme_commercial.yaml")
    landed = pipeline.land_for_partition(spec, pipeline.parse_month("2026-08"), settings)
    pipeline.ensure_current_delivery(landed, settings)  # landed, not refused: passes
    pipeline.mark_refused(landed, settings, "trailer_count")
    with pytest.raises(FileRefused) as exc:
        pipeline.ensure_current_delivery(landed, settings)
    assert exc.value.rule == "refused_earlier"
