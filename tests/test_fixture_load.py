"""The fixture exports, produced by the real pipeline, load completely into the Medplum test
server: by `atr load` and by the Dagster load_job with its load_complete check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from fhir_server_fixture import fhir, fhir_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atr_pipeline.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _manifest_counts(export: Path) -> dict[str, int]:
    manifest = json.loads((export / "manifest.json").read_text())
    return {o["type"]: o["count"] for o in manifest["output"]}


def test_atr_load_of_every_fixture_export_is_complete_and_idempotent(fhir, tmp_path):  # noqa: F811
    env = {**os.environ, "ATR_HOME": str(tmp_path / "home"), "ATR_ID_KEY": "load-test", "COLUMNS": "200"}
    env.pop("ATR_INBOX", None)
    for source in ("acme_commercial", "statewide_medicaid"):
        res = _run("run", "--mapping", f"mappings/{source}.yaml", "--inbox", f"fixtures/{source}", env=env)
        assert res.returncode == 0, res.stdout + res.stderr
    for source in ("acme_commercial", "statewide_medicaid"):
        fhir.reset()
        export = tmp_path / "home" / "exports" / source / "2026-10"
        expected = _manifest_counts(export)
        for attempt in range(2):  # the second run must leave every count unchanged
            res = _run("load", str(export), "--server", fhir.base_url, "--kind", "medplum", "--restart", env=env)
            assert res.returncode == 0, res.stdout + res.stderr
            assert {t: fhir.count(t) for t in expected} == expected, attempt
        for group in fhir.search("Group"):
            members = group["member"]
            assert len(members) == sum(1 for m in members if m["entity"]["reference"].startswith("Patient/"))
            for m in members[:5]:
                assert fhir.get(m["entity"]["reference"]).status_code == 200
                for ext in m["extension"]:
                    if "valueReference" in ext:
                        assert fhir.get(ext["valueReference"]["reference"]).status_code == 200


def test_load_job_reports_load_complete(fhir, tmp_path, monkeypatch):  # noqa: F811
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "ACME_ATTRIB_202608.csv").write_bytes((ROOT / "fixtures/acme_commercial/ACME_ATTRIB_202608.csv").read_bytes())
    for var, value in {"ATR_HOME": str(tmp_path / "home"), "ATR_INBOX": str(inbox), "ATR_ID_KEY": "load-job",
                       "ATR_MAPPINGS_DIR": str(ROOT / "mappings"), "ATR_FHIR_URL": fhir.base_url, "ATR_FHIR_KIND": "medplum"}.items():
        monkeypatch.setenv(var, value)
    from atr_pipeline.defs.build import build_definitions

    defs = build_definitions()
    key = dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"})
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("attribution_job").execute_in_process(partition_key=key, instance=instance, run_config=QUIET).success
        res = defs.resolve_job_def("load_job").execute_in_process(partition_key=key, instance=instance, run_config=QUIET)
    assert res.success
    (check,) = [e.event_specific_data for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert check.check_name == "load_complete" and check.passed
    export = tmp_path / "home" / "exports" / "acme_commercial" / "2026-08"
    assert {t: fhir.count(t) for t in _manifest_counts(export)} == _manifest_counts(export)
