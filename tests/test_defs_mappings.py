"""One broken mapping is reported on every tick of mapping_errors_sensor; the other sources keep flowing."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from atr_pipeline.defs.build import (
    MappingErrors,
    build_definitions,
    load_mappings_with_errors,
    mapping_errors_sensor,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for f in (ROOT / "mappings").glob("*.yaml"):
        shutil.copy2(f, tmp_path / f.name)
    broken = (ROOT / "mappings" / "acme_commercial.yaml").read_text().replace("reject_threshold: 0.05", "reject_threshold: lots")
    assert "lots" in broken
    (tmp_path / "broken_payer.yaml").write_text(broken.replace("acme_commercial", "broken_payer"))
    monkeypatch.setenv("ATR_MAPPINGS_DIR", str(tmp_path))
    return tmp_path


def test_valid_mappings_and_errors_come_back_separately(folder: Path) -> None:
    mappings, errors = load_mappings_with_errors(folder)
    assert sorted(mappings) == ["acme_commercial", "statewide_medicaid"]
    assert list(errors) == ["broken_payer.yaml"]
    assert "reject_threshold" in errors["broken_payer.yaml"]


def test_every_tick_fails_naming_the_file_and_the_key(folder: Path) -> None:
    for _ in range(2):  # every tick, not once
        with pytest.raises(MappingErrors) as exc:
            mapping_errors_sensor(dg.build_sensor_context())
        assert "broken_payer.yaml" in str(exc.value) and "reject_threshold" in str(exc.value)
        assert "2 valid mapping(s) keep running" in str(exc.value)


def test_fixed_folder_ticks_green(folder: Path) -> None:
    (folder / "broken_payer.yaml").unlink()
    result = mapping_errors_sensor(dg.build_sensor_context())
    assert isinstance(result, dg.SkipReason) and "all 2 mapping(s)" in (result.skip_message or "")


def test_definitions_still_load_and_the_sftp_sensor_gets_the_valid_sources(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    defs = build_definitions()
    assert defs.resolve_sensor_def("mapping_errors_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("sftp_inbox_sensor") is not None
    assert any("broken_payer.yaml" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("written", "error"), [
    ("2026-13", "first_month is a month written YYYY-MM (e.g. 2026-08), got '2026-13'"),
    ("2026-08-15", "first_month is a month: write 2026-08, not 2026-08-15"),
    ("August", "first_month is a month written YYYY-MM (e.g. 2026-08), got 'August'"),
])
def test_a_bad_first_month_is_a_mapping_error_and_another_bad_key_keeps_first_month(folder: Path, written: str, error: str) -> None:
    from atr_pipeline.layouts.spec import declared_first_month

    path = folder / "acme_commercial.yaml"
    path.write_text(path.read_text().replace("first_month: 2026-08\n", f"first_month: {written}\n"))
    _, errors = load_mappings_with_errors(folder)
    assert "first_month" in errors["acme_commercial.yaml"] and error in errors["acme_commercial.yaml"]
    # the partitions fall back to ATR_PARTITIONS_START for it (earlier months appear, none vanish);
    # broken_payer's broken key is reject_threshold: its first_month still counts
    assert declared_first_month(path) is None
    assert declared_first_month(folder / "broken_payer.yaml") == date(2026, 8, 1)
