"""Functions that existed twice are one: the behaviour production relies on is the one tested."""

from __future__ import annotations

import logging
import tomllib

import polars as pl
import pytest
from atr_cli import ROOT

from atr_pipeline.conform import check_export
from atr_pipeline.errors import AtrError
from atr_pipeline.fhir import ids
from atr_pipeline.fhir import json as fj
from atr_pipeline.layouts import files
from atr_pipeline.layouts.spec import load_mappings
from atr_pipeline.publish.export import read_manifest
from atr_pipeline.sources import landing

MAPPINGS = load_mappings(ROOT / "mappings")


def test_inbox_matching_is_the_layouts_matching_with_a_conflict_policy(caplog):
    twin = MAPPINGS["acme_commercial"].model_copy(update={"source_id": "acme_twin"})
    both = {**MAPPINGS, "acme_twin": twin}
    name = "ACME_ATTRIB_202608.csv"
    assert landing.match_mapping(name, MAPPINGS) is files.match_mapping(name, MAPPINGS)
    assert landing.match_mapping("nothing.txt", MAPPINGS) is None
    with pytest.raises(files.MappingConflict):
        files.match_mapping(name, both)
    with caplog.at_level(logging.WARNING, logger=landing.log.name):
        assert landing.match_mapping(name, both) is None  # left in the inbox, said in the log
    assert "matched by more than one mapping (acme_commercial, acme_twin)" in caplog.text


def test_manifest_is_read_one_way(tmp_path):
    with pytest.raises(AtrError) as by_loader:
        read_manifest(tmp_path)
    with pytest.raises(AtrError) as by_checker:
        check_export(tmp_path)
    assert str(by_loader.value) == str(by_checker.value)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(AtrError, match="not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(AtrError, match="not valid JSON"):
        check_export(tmp_path)


def test_reference_and_period_builders():
    frame = pl.DataFrame({"pid": ["abc", None], "s": ["2026-09-01", None], "e": [None, None]})
    out = frame.select(
        fj.reference("Patient", "pid").alias("json"),
        ids.reference("Patient", "pid").alias("text"),
        fj.period(pl.col("s"), pl.col("e")).alias("period"),
    )
    assert out["json"].to_list() == ['{"reference":"Patient/abc"}', None]
    assert out["text"].to_list() == ["Patient/abc", None]
    assert out["period"].to_list() == [',"period":{"start":"2026-09-01"}', None]


def test_checkers_are_configured_and_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = project["project"]["optional-dependencies"]["test"]
    assert any(dep.startswith("ruff==") for dep in test_extra) and any(dep.startswith("mypy==") for dep in test_extra)
    assert set(project["tool"]["ruff"]["lint"]["select"]) >= {"E", "F", "B", "I", "UP"}
    assert project["tool"]["mypy"]["files"] == ["atr_pipeline"]
