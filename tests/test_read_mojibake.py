"""Issue 14, item 2: the conformance check flags mojibake (UTF-8 read as latin-1/cp1252) as an
error, on the per-resource path, on the fast column path, and in `atr run` (nothing exported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
from conform_frames import built_frames
from edge_files import EDGE_MAPPINGS, csv_file, csv_row
from test_conform_rules import valid_set

from atr_pipeline.conform import check_resources
from atr_pipeline.conform.checker import check_ndjson_frames

ROOT = Path(__file__).resolve().parents[1]


def _rules(report) -> dict[str, int]:
    return {r.rule: r.count for r in report.results}


def test_mojibake_in_a_name_is_an_error_and_real_names_are_not() -> None:
    resources = valid_set()
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    patient["name"][0]["given"] = ["BjÃ¶rn"]  # 'Björn' as UTF-8 bytes read as latin-1
    report = check_resources(resources)
    assert _rules(report) == {"text.mojibake": 1}
    finding = next(r for r in report.results if r.rule == "text.mojibake")
    assert finding.severity == "error" and "BjÃ¶rn" not in str(finding)
    for fine in ("JOÃO", "SÃO PAULO", "Björn", "Ángel"):
        resources = valid_set()
        next(r for r in resources if r["resourceType"] == "Patient")["name"][0]["given"] = [fine]
        assert _rules(check_resources(resources)) == {}, fine
    resources = valid_set()
    next(r for r in resources if r["resourceType"] == "Organization")["name"] = "MÃ¼ller Clinic"  # cp1252: ü -> Ã¼
    assert _rules(check_resources(resources)) == {"text.mojibake": 1}


def test_mojibake_declines_the_fast_path_and_is_reported() -> None:
    frames = built_frames(30, seed=3)
    assert _rules(check_ndjson_frames(frames, structural="none")) == {}
    patients = frames["Patient"]
    texts = patients.get_column("json").to_list()
    doc = orjson.loads(texts[4])
    doc["name"][0]["family"] = "Ã\u0096sterberg"  # Ö = C3 96: 'Ã' + a C1 control
    texts[4] = orjson.dumps(doc).decode()
    frames = {**frames, "Patient": patients.with_columns(pl.Series("json", texts))}
    assert _rules(check_ndjson_frames(frames, structural="none")) == {"text.mojibake": 1}


def test_atr_run_exports_nothing_for_a_mojibake_month(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "EDGE_CSV_202609.csv").write_text(csv_file([csv_row("E1", family="MÃ¼ller"), csv_row("E2")]), encoding="utf-8")
    env = {**os.environ, "ATR_HOME": str(tmp_path / "home"), "ATR_ID_KEY": "k", "COLUMNS": "250"}
    env.pop("ATR_INBOX", None)
    res = subprocess.run(
        [sys.executable, "-m", "atr_pipeline.cli", "run", "--mapping", str(EDGE_MAPPINGS / "edge_csv.yaml"), "--inbox", str(inbox)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "conformance errors, nothing exported: {'text.mojibake': 1}" in res.stdout
    assert "Müller" not in res.stdout + res.stderr and "MÃ¼ller" not in res.stdout + res.stderr
    assert not (tmp_path / "home" / "exports" / "edge_csv" / "2026-09" / "manifest.json").exists()
