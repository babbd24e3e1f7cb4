"""`atr load` as a command: exit codes, resume/restart flags, settings errors, the summary."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import typer
from fhir_server_fixture import fhir, fhir_server  # noqa: F401
from typer.testing import CliRunner

from atr_pipeline.publish.cli import load
from atr_pipeline.publish.export import write_bulk_export
from atr_pipeline.publish.loader import REPORT_NAME
from atr_pipeline.publish.synthetic import synthetic_resources

app = typer.Typer()
app.command()(load)
runner = CliRunner()


def _export(tmp_path, members=30):
    out = tmp_path / "export"
    write_bulk_export(out, synthetic_resources(members), errors=None, transaction_time=datetime(2026, 11, 1, tzinfo=UTC), request="r")
    return out


def test_load_then_resume_then_restart(fhir, tmp_path, monkeypatch):
    monkeypatch.delenv("ATR_FHIR_TOKEN", raising=False)
    monkeypatch.delenv("ATR_SMART_TOKEN_URL", raising=False)
    export_dir = _export(tmp_path)
    first = runner.invoke(app, [str(export_dir), "--server", fhir.base_url, "--kind", "medplum", "--bundle-size", "10"])
    assert first.exit_code == 0, first.output
    assert "status: complete" in first.output
    assert fhir.count("Patient") == 30
    report = orjson.loads((export_dir / REPORT_NAME).read_bytes())
    assert (report["bundle_size"], report["mode"]) == (10, "batch")

    again = runner.invoke(app, [str(export_dir), "--server", fhir.base_url, "--kind", "medplum", "--bundle-size", "10"])
    assert again.exit_code == 0
    assert "requests 0" in again.output
    assert "checkpoint checked against the server: Organization 2, Practitioner 3" in again.output
    assert "resumed from the checkpoint" in again.output

    restart = runner.invoke(app, [str(export_dir), "--server", fhir.base_url, "--kind", "medplum", "--bundle-size", "10", "--restart", "--mode", "transaction"])
    assert restart.exit_code == 0
    # the server already holds every one of them unchanged: read, compared, not written again
    assert orjson.loads((export_dir / REPORT_NAME).read_bytes())["counts"]["Patient"]["unchanged"] == 30
    assert fhir.count("Patient") == 30


def test_failures_exit_1_and_bad_settings_exit_2(fhir, tmp_path, monkeypatch):
    monkeypatch.delenv("ATR_FHIR_TOKEN", raising=False)
    monkeypatch.delenv("ATR_SMART_TOKEN_URL", raising=False)
    export_dir = _export(tmp_path, members=5)
    fhir.faults("500", count=1, type="Bundle")
    failed = runner.invoke(app, [str(export_dir), "--server", fhir.base_url, "--max-attempts", "1", "--always-put"])
    assert failed.exit_code == 1
    assert "status: failed_entries" in failed.output
    assert "max-attempts" in failed.output

    too_big = runner.invoke(app, [str(export_dir), "--server", fhir.base_url, "--kind", "medplum", "--mode", "transaction", "--bundle-size", "80"])
    assert too_big.exit_code == 2
    assert "more than 50 PUTs" in too_big.output

    no_export = tmp_path / "empty"
    no_export.mkdir()
    missing = runner.invoke(app, [str(no_export), "--server", fhir.base_url])
    assert missing.exit_code == 2
    assert "not a complete bulk export" in missing.output

    no_token = runner.invoke(app, [str(export_dir), "--server", fhir.base_url, "--auth", "bearer"])
    assert no_token.exit_code == 2
    assert "needs ATR_FHIR_TOKEN" in no_token.output
