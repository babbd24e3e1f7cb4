"""The month-order rule, deterministically (docs/OPERATIONS.md, "Month order"):

* a month that arrives after a later month was published makes the same run rebuild the later
  months on top of it, with new versions: the final exports equal a run in month order;
* a build staged before an earlier month reached history (the Dagster case: fhir_resources and
  bulk_export are two steps) is built again at publish instead of being published stale;
* Group versions follow month order whatever order the months were published in.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from overlap_tools import FIXTURES, MAPPINGS, atr, differences, in_order_reference, published, run_args, trend_rows

from atr_pipeline import pipeline
from atr_pipeline.config import load_settings
from atr_pipeline.history.stores import history_store
from atr_pipeline.layouts.spec import load_mapping

ACME = "acme_commercial"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return in_order_reference(tmp_path_factory.mktemp("ref"), ACME, ["2026-08", "2026-09", "2026-10"])


def _groups_versions(home: Path) -> dict[str, dict[str, int]]:
    return {m: {g: int(v) for g, v in versions.items()} for m, (_, versions) in published(home, ACME).items()}


def test_a_late_month_rebuilds_the_later_months_in_the_same_run(tmp_path: Path, reference: Path) -> None:
    home = tmp_path / "home"
    for month in ("2026-08", "2026-10"):
        assert atr(run_args(ACME, month), home).returncode == 0
    late = atr(run_args(ACME, "2026-09"), home)
    assert late.returncode == 0, late.stdout + late.stderr
    assert "2026-10 was published before an earlier month changed: rebuilding it" in late.stderr
    assert differences(home, reference, ACME) == []
    assert trend_rows(home, ACME) == trend_rows(reference, ACME)
    versions = _groups_versions(home)
    # Published 08, 10, 09, 10 again: 10's Groups got new versions above 09's.
    for group, v10 in versions["2026-10"].items():
        assert v10 > versions["2026-09"][group] >= versions["2026-08"][group]
    # 10's members were diffed against 09, not 08: its dropped entries are those of the run in order.
    group10 = (home / "exports" / ACME / "2026-10" / "Group.ndjson").read_text()
    assert group10.count('"code":"dropped"') == (reference / "exports" / ACME / "2026-10" / "Group.ndjson").read_text().count('"code":"dropped"')


def _record(month: date, settings, spec):
    name = f"ACME_ATTRIB_{month:%Y%m}.csv"
    landed = pipeline.land_path(FIXTURES / ACME / name, spec, settings)
    validated = pipeline.validate_read(pipeline.read_landed(landed, spec), landed, spec)
    pipeline.record_history(validated, settings, spec)
    return landed, pipeline.write_rejects(validated, settings, spec)[1]


def test_a_build_staged_before_an_earlier_month_arrived_is_rebuilt_at_publish(tmp_path: Path, reference: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATR_ID_KEY", "test-key")
    settings = load_settings(tmp_path / "home", mappings_dir=MAPPINGS)
    spec = load_mapping(MAPPINGS / f"{ACME}.yaml")
    aug, sep, oct_ = date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1)
    for month in (aug, oct_):
        _, errors = _record(month, settings, spec)
        if month == aug:
            pipeline.publish_month(spec, aug, settings, errors=errors)
    # Dagster's fhir_resources step for 10 runs now (diffed against 08)...
    stale_build = pipeline.build_month(spec, oct_, settings)
    assert stale_build.change_types != {}
    # ...then 09's run records and publishes, then 10's bulk_export step runs.
    _, errors = _record(sep, settings, spec)
    pipeline.publish_month(spec, sep, settings, errors=errors)
    export_dir = pipeline.export_month(stale_build, settings, errors=[])
    assert export_dir == settings.exports_dir / ACME / "2026-10"
    assert differences(settings.home, reference, ACME) == []
    store = history_store(settings, ACME)
    assert store.months_to_rebuild(ACME) == []
    built = json.loads((export_dir / "manifest.json").read_text())
    assert built["request"] == f"atr run --source {ACME} --month 2026-10"


def test_versions_follow_month_order_when_published_newest_first(tmp_path: Path, reference: Path) -> None:
    home = tmp_path / "home"
    for month in ("2026-10", "2026-09", "2026-08"):
        res = atr(run_args(ACME, month), home)
        assert res.returncode == 0, res.stdout + res.stderr
    assert differences(home, reference, ACME) == []
    versions = _groups_versions(home)
    for group in versions["2026-08"]:
        assert versions["2026-08"][group] <= versions["2026-09"][group] <= versions["2026-10"][group]
