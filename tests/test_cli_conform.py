"""`atr conform` through the real entry point: an export that is not a whole ATR attribution
list fails (exit 1), whatever else in it is clean."""

from __future__ import annotations

import orjson
from atr_cli import atr
from test_conform_export import write_export
from test_conform_rules import valid_set


def test_valid_export_passes(tmp_path):
    res = atr("conform", str(write_export(tmp_path / "exp", valid_set())))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ATR conformance: PASS" in res.stdout


def test_manifest_listing_nothing_fails(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "manifest.json").write_bytes(orjson.dumps({"output": []}))
    res = atr("conform", str(exp))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ATR conformance: FAIL" in res.stdout
    assert "export.output-empty" in res.stdout and "export.type-absent" in res.stdout


def test_group_removed_from_the_manifest_fails(tmp_path):
    exp = write_export(tmp_path / "exp", valid_set())
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    manifest["output"] = [o for o in manifest["output"] if o["type"] != "Group"]
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))
    res = atr("conform", str(exp), "--json-out")
    assert res.returncode == 1
    report = orjson.loads(res.stdout)
    fired = {r["rule"]: r for r in report["results"]}
    assert fired["export.file-unlisted"]["severity"] == "error"
    assert fired["export.file-unlisted"]["examples"] == ["Group.ndjson"]
    assert fired["export.type-absent"]["examples"] == ["Group"]


def test_export_without_patients_or_coverage_fails(tmp_path):
    for missing in ("Patient", "Coverage"):
        exp = write_export(tmp_path / missing, [r for r in valid_set() if r["resourceType"] != missing])
        res = atr("conform", str(exp))
        assert res.returncode == 1, res.stdout
        assert "export.type-absent" in res.stdout and missing in res.stdout


def test_not_an_export_is_a_usage_error(tmp_path):
    res = atr("conform", str(tmp_path))
    assert res.returncode == 2
    assert "no manifest.json" in res.stderr
