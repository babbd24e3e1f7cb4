"""The conformance check that runs on a second thread while build_month stages each type.

Above ATR_CONFORM_FULL_MAX member entries, build_month checks each type's staged parts as soon
as they are written; check_month then hands back that report. It must be the report the check
gives on the finished staged build, the staged bytes must not change, and a build that fails
half-way must stop the checking thread instead of leaving it waiting.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import polars as pl
import pytest

from atr_pipeline import pipeline
from atr_pipeline.conform.checker import check_ndjson_frames
from atr_pipeline.config import load_settings
from atr_pipeline.errors import AtrError
from atr_pipeline.layouts.spec import load_mapping
from atr_pipeline.publish.export import StagingWatcher, stage_resources
from atr_pipeline.publish.synthetic import synthetic_resources
from atr_pipeline.systems import LOAD_ORDER

ROOT = Path(__file__).resolve().parents[1]


def _recorded_month(tmp_path: Path, name: str):
    settings = load_settings(tmp_path / name, inbox=tmp_path / f"{name}-inbox")
    settings.inbox_dir.mkdir(parents=True)
    spec = load_mapping(ROOT / "mappings/acme_commercial.yaml")
    for month in ("08", "09"):
        shutil.copy(ROOT / f"fixtures/acme_commercial/ACME_ATTRIB_2026{month}.csv", settings.inbox_dir)
        landed = pipeline.land_path(settings.inbox_dir / f"ACME_ATTRIB_2026{month}.csv", spec, settings)
        pipeline.record_history(pipeline.validate_read(pipeline.read_landed(landed, spec), landed, spec), settings, spec)
    return spec, settings, landed.month


def _staged_bytes(built) -> dict[str, bytes]:
    return {item.url: (built.resources.folder / item.url).read_bytes() for items in built.resources.files.values() for item in items}


def test_a_large_month_is_checked_while_it_is_built_with_the_same_report_and_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("ATR_ID_KEY", "k")
    monkeypatch.setenv("ATR_CONFORM_SAMPLE_SIZE", "25")
    spec, settings, month = _recorded_month(tmp_path, "a")
    monkeypatch.setenv("ATR_CONFORM_FULL_MAX", "1000")  # the fixture's 46 entries: checked after the build
    plain = pipeline.build_month(spec, month, settings)
    assert plain.report is None
    plain_bytes = _staged_bytes(plain)
    plain_report = pipeline.check_month(plain, structural="sample")

    monkeypatch.setenv("ATR_CONFORM_FULL_MAX", "10")  # now "large": checked while built
    built = pipeline.build_month(spec, month, settings)
    assert built.report is not None and built.report_structural == "sample"
    assert built.report.ok and built.report.structurally_checked == 25
    assert pipeline.check_month(built) is built.report  # auto -> sample: the build's report
    assert built.report == check_ndjson_frames(built.resources, structural="sample", sample_size=25) == plain_report
    assert _staged_bytes(built) == plain_bytes
    assert pipeline.check_month(built, structural="all").structurally_checked == sum(built.resources_by_type.values())


def test_a_build_that_fails_half_way_stops_the_checking_thread(tmp_path):
    resources = synthetic_resources(25, groups=2)
    watcher = StagingWatcher(LOAD_ORDER)
    seen: dict[str, object] = {}

    def read_all() -> None:
        try:
            seen["Patient"] = watcher["Patient"].height
            seen["Coverage"] = watcher["Coverage"].height  # never written: the build fails first
        except AtrError as exc:
            seen["error"] = str(exc)

    reader = threading.Thread(target=read_all)
    watcher.on_finish = reader.join
    reader.start()

    def failing():
        for t in ("Organization", "Practitioner", "PractitionerRole", "Patient"):
            yield t, resources[t]
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError, match="builder failed"):
        stage_resources(tmp_path / "m", failing(), watcher=watcher)
    assert not reader.is_alive()
    assert seen["Patient"] == 25
    assert seen["error"] == "the build stopped before Coverage was written (RuntimeError)"
    assert list(tmp_path.iterdir()) == []  # nothing staged


def test_the_watcher_sees_each_type_as_staged_and_empty_types_as_empty(tmp_path):
    resources = synthetic_resources(25, groups=2)
    watcher = StagingWatcher([*LOAD_ORDER])
    got: dict[str, pl.DataFrame] = {}
    reader = threading.Thread(target=lambda: got.update({t: watcher[t] for t in LOAD_ORDER}))
    watcher.on_finish = reader.join
    reader.start()
    without_roles = ((t, resources[t]) for t in LOAD_ORDER if t != "PractitionerRole")
    staged = stage_resources(tmp_path / "m", without_roles, max_lines_per_file=7, watcher=watcher)
    for t in LOAD_ORDER:
        expected = staged[t] if t in staged else pl.DataFrame(schema={"id": pl.String(), "json": pl.String()})
        assert got[t].equals(expected), t
    assert got["PractitionerRole"].height == 0 and got["Patient"].height == 25
