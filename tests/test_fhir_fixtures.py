"""The repository's fixture files, read by layouts/ and built here: R4B-valid, closed, one Patient per member."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir_refs import references

from atr_pipeline.canonical import ISSUES_COLUMN, MEMBER_ENTRY_KEY
from atr_pipeline.fhir.build import BuildContext, build_resources
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import load_mapping

ROOT = Path(__file__).resolve().parent.parent
CASES = [("acme_commercial", "ACME_ATTRIB_202608.csv"), ("statewide_medicaid", "SWMCD_ME_202608.txt")]


@pytest.mark.parametrize(("source", "file_name"), CASES)
def test_fixture_builds_valid_closed_resources(source: str, file_name: str) -> None:
    path = ROOT / "fixtures" / source / file_name
    if not path.exists():
        pytest.skip(f"fixture {source}/{file_name} not present")
    spec = load_mapping(ROOT / "mappings" / f"{source}.yaml")
    rows = read_file(path, spec).rows
    members = (
        rows.filter(pl.col(ISSUES_COLUMN).list.len() == 0)
        .drop(ISSUES_COLUMN)
        .unique(subset=list(MEMBER_ENTRY_KEY), keep="first", maintain_order=True)
        .with_columns(pl.lit("new").alias("change_type"), pl.lit(False).alias("inactive"))
    )
    ctx = BuildContext(id_key=b"fixture-key", systems=spec.identifier_systems,
                       transaction_time=datetime(2026, 9, 1, tzinfo=UTC), intended_recipient=spec.intended_recipient)
    out = build_resources(members, ctx)
    parsed = {t: [json.loads(j) for j in df["json"].to_list()] for t, df in out.items()}
    known = {f"{t}/{r['id']}" for t, rs in parsed.items() for r in rs}
    refs: list[str] = []
    for rtype, resources in parsed.items():
        model = get_fhir_model_class(rtype)
        for res in resources:
            model.model_validate(res)
            references(res, refs)
    assert members.height > 10
    assert len(parsed["Patient"]) == members.select("payer_id", "member_id").unique().height
    assert sum(len(g["member"]) for g in parsed["Group"]) == members.height
    assert set(refs) <= known
