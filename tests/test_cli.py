"""`atr` end to end on the bundled fixtures: what a data engineer runs and sees."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ATR = [sys.executable, "-m", "atr_pipeline.cli"]


def atr(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "ATR_HOME": str(home), "ATR_ID_KEY": "test-key", "COLUMNS": "200", **(env or {})}
    full_env.pop("ATR_INBOX", None)
    return subprocess.run([*ATR, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def acme_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", "fixtures/acme_commercial", home=home)
    return home, res


def test_run_processes_every_month_and_prints_a_summary(acme_run):
    home, res = acme_run
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "ACME_ATTRIB_202608.csv (2026-08): 42 rows read, 42 accepted, 0 rejected" in out
    assert "ACME_ATTRIB_202609.csv (2026-09): 40 rows read, 40 accepted, 0 rejected" in out
    assert "ACME_ATTRIB_202610.csv (2026-10): 40 rows read, 40 accepted, 0 rejected" in out
    assert "Organization 3, Practitioner 6, PractitionerRole 6, Patient 40, RelatedPerson 16, Coverage 40, Group 2" in out
    for month in ("2026-08", "2026-09", "2026-10"):
        manifest = json.loads((home / "exports" / "acme_commercial" / month / "manifest.json").read_text())
        assert manifest["requiresAccessToken"] is True
        assert {o["type"] for o in manifest["output"]} == {"Organization", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Coverage", "Group"}


def test_second_run_skips_and_reprocess_is_byte_identical(acme_run):
    home, _ = acme_run
    export = home / "exports" / "acme_commercial"
    before = tree_digest(export)
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", "fixtures/acme_commercial", home=home)
    assert res.returncode == 0
    assert res.stdout.count("already processed") == 3
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", "fixtures/acme_commercial", "--reprocess", home=home)
    assert res.returncode == 0, res.stderr
    assert tree_digest(export) == before


def test_conform_passes_on_every_fixture_export_with_full_structure_check(acme_run):
    home, _ = acme_run
    for month in ("2026-08", "2026-09", "2026-10"):
        res = atr("conform", str(home / "exports" / "acme_commercial" / month), "--structural", "all", "--json-out", home=home)
        assert res.returncode == 0, res.stdout
        report = json.loads(res.stdout)
        assert report["resources_checked"] == report["structurally_checked"] > 100
        assert [r for r in report["results"] if r["severity"] == "error"] == []


def test_fixed_width_source_runs_and_trends_show_changes(tmp_path):
    res = atr("run", "--mapping", "mappings/statewide_medicaid.yaml", "--inbox", "fixtures/statewide_medicaid", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "SWMCD_ME_202608.txt (2026-08): 37 rows read, 37 accepted, 0 rejected" in res.stdout
    res = atr("trends", "--source", "statewide_medicaid", "--markdown", str(tmp_path / "t.md"), home=tmp_path)
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "t.md").read_text()
    assert "2026-09" in md and "2026-10" in md


def test_refused_file_exits_1_and_others_still_processed(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(ROOT / "fixtures/statewide_medicaid/SWMCD_ME_202609.txt", inbox)
    bad = next((ROOT / "fixtures/bad/trailer_count").iterdir())
    assert bad.name == "SWMCD_ME_202608.txt"
    shutil.copy(bad, inbox / bad.name)
    res = atr("run", "--mapping", "mappings/statewide_medicaid.yaml", "--inbox", str(inbox), home=tmp_path / "home")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "SWMCD_ME_202609.txt (2026-09): 34 rows read, 34 accepted, 0 rejected" in res.stdout
    assert "refused  SWMCD_ME_202608.txt: refused (trailer_count): header says 7 detail records, the file has 5" in res.stdout
    assert not (tmp_path / "home" / "exports" / "statewide_medicaid" / "2026-08").exists()


def test_duplicate_delivery_under_new_name_is_refused(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    src = ROOT / "fixtures/acme_commercial/ACME_ATTRIB_202608.csv"
    shutil.copy(src, inbox / src.name)
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", str(inbox), home=tmp_path / "home")
    assert res.returncode == 0
    shutil.copy(src, inbox / "ACME_ATTRIB_202609.csv")  # same bytes, another name
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", str(inbox), home=tmp_path / "home")
    assert res.returncode == 1
    assert "ACME_ATTRIB_202609.csv: same bytes as ACME_ATTRIB_202608.csv" in res.stdout


def test_unmatched_file_is_reported_and_left_in_place(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "random_notes.txt").write_text("hello\n")
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", str(inbox), home=tmp_path / "home")
    assert res.returncode == 0
    assert "random_notes.txt: matches no mapping's file pattern; left where it is" in res.stderr
    assert (inbox / "random_notes.txt").exists()


def test_invalid_mapping_exits_2_naming_the_key_path(tmp_path):
    bad = tmp_path / "broken.yaml"
    text = (ROOT / "mappings/acme_commercial.yaml").read_text().replace("source_id: acme_commercial", "source_id: broken")
    bad.write_text(text.replace("date: MM/DD/YYYY}", "date: MM/QQ/YYYY}", 1))
    res = atr("check-mapping", str(bad), home=tmp_path)
    assert res.returncode == 2
    assert "fields.contract_start.date: unknown date token" in res.stderr
    res = atr("run", "--mapping", str(bad), "--inbox", "fixtures/acme_commercial", home=tmp_path)
    assert res.returncode == 2
    assert not (tmp_path / "exports").exists()


def test_check_mapping_prints_what_it_understood(tmp_path):
    res = atr("check-mapping", "mappings/statewide_medicaid.yaml", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "fixed width, record length 400" in res.stdout
    assert "record count from header.record_count" in res.stdout
    assert "hash total of risk_score against trailer.risk_hash" in res.stdout
    assert "mapping is valid" in res.stdout


def test_fixtures_command_writes_a_file_the_mapping_reads(tmp_path):
    res = atr("fixtures", "--mapping", "mappings/acme_commercial.yaml", "--members", "500", "--month", "2026-09",
              "--out", str(tmp_path / "gen"), "--seed", "3", home=tmp_path)
    assert res.returncode == 0, res.stderr
    files = list((tmp_path / "gen").iterdir())
    assert [f.name for f in files] == ["ACME_ATTRIB_202609.csv"]
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", str(tmp_path / "gen"), home=tmp_path / "home")
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0 rejected" in res.stdout


def test_bad_month_argument_is_a_usage_error(tmp_path):
    res = atr("run", "--mapping", "mappings/acme_commercial.yaml", "--month", "2026/09", home=tmp_path)
    assert res.returncode == 2


def test_nonconformant_month_is_not_exported(tmp_path, monkeypatch):
    """A conformance failure refuses the file and leaves no export: a builder defect is simulated
    by breaking Group.type (fixed to `person` by the profile) before the real checker runs."""
    from atr_pipeline import pipeline
    from atr_pipeline.config import load_settings
    from atr_pipeline.layouts.spec import load_mapping

    monkeypatch.setenv("ATR_ID_KEY", "k")
    settings = load_settings(tmp_path / "home", inbox=tmp_path)
    spec = load_mapping(ROOT / "mappings/acme_commercial.yaml")
    shutil.copy(ROOT / "fixtures/acme_commercial/ACME_ATTRIB_202608.csv", tmp_path)
    landed = pipeline.land_path(tmp_path / "ACME_ATTRIB_202608.csv", spec, settings)
    real_build = pipeline.build_month

    def broken_build(*args, **kwargs):
        built = real_build(*args, **kwargs)
        # The check reads the staged bytes that would be published: break them there.
        for item in built.resources.files["Group"]:
            part = built.resources.folder / item.url
            part.write_text(part.read_text().replace('"type":"person"', '"type":"animal"'))
        return built

    monkeypatch.setattr(pipeline, "build_month", broken_build)
    outcome = pipeline.process_landed(landed, spec, settings)
    assert outcome.status == "refused"
    assert "conformance errors, nothing exported" in outcome.message
    assert not (settings.exports_dir / "acme_commercial" / "2026-08").exists()
    assert sorted(p.name for p in (settings.exports_dir / "acme_commercial").iterdir()) == []  # staged build removed
