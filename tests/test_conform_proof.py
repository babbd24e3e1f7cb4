"""The run's conformance stage with the build's column proof (conform/columns.py, issue 22 item 3).

The types the proof covers skip conform/fast.py's regexes; every line is still parsed, the
structural sample still gets the full R4B check, and a rule the columns break, or a line that
does not parse, is reported exactly as the regex path (or the per-resource checker) reports it.
tests/test_conform_templates.py binds the templates to the rules the proof trusts them for.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from conform_frames import CHANGES, ROOT

import atr_pipeline.conform.fast as fast
from atr_pipeline.canonical import conform_columns
from atr_pipeline.conform.checker import check_ndjson_frames
from atr_pipeline.conform.columns import NOTHING, TRUSTED, Proof, prove
from atr_pipeline.fhir.build import BuildContext, build_resources
from atr_pipeline.layouts.spec import load_mapping
from atr_pipeline.synthetic import population

SPEC = load_mapping(ROOT / "mappings" / "acme_commercial.yaml")
CTX = BuildContext(id_key=b"test-key", systems=SPEC.identifier_systems, transaction_time=datetime(2026, 9, 5, tzinfo=UTC))
KW = dict(structural="sample", sample_size=40, seed=0)


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    rows = population(SPEC, members=600, month=date(2026, 9, 1), seed=4)
    i = pl.int_range(0, rows.height)
    rows = rows.with_columns(
        pl.lit("acme_commercial").alias("source_id"), pl.lit("acme_202609.csv").alias("file_name"),
        pl.lit("0" * 64).alias("file_sha256"), (i + 2).cast(pl.Int64).alias("line_number"),
        pl.lit(date(2026, 9, 1)).alias("reporting_month"), pl.lit("ACME01").alias("payer_id"),
        pl.lit("Acme Health Plan (synthetic)").alias("payer_name"),
    )
    return conform_columns(rows, keep_issues=False).with_columns(
        pl.Series("change_type", [CHANGES[k % 5] for k in range(rows.height)]),
        pl.Series("inactive", [k % 5 in (3, 4) and k % 2 == 0 for k in range(rows.height)]),
    )


@pytest.fixture
def regex_calls(monkeypatch) -> list[str]:
    """The types whose text conform/fast.py proves with its regexes."""
    calls: list[str] = []
    real = fast._bulk_check

    def spy(rtype, df):
        calls.append(rtype)
        return real(rtype, df)

    monkeypatch.setattr(fast, "_bulk_check", spy)
    return calls


def test_proven_types_skip_the_regexes_with_the_same_report(rows, regex_calls):
    frames = build_resources(rows, CTX)
    proof = prove(rows, CTX)
    assert all(proof.covers(t) for t in TRUSTED)
    proven = check_ndjson_frames(frames, proof=proof, **KW)
    assert regex_calls == []
    regex = check_ndjson_frames(frames, **KW)
    assert sorted(set(regex_calls)) == sorted(TRUSTED)  # Group: its member arrays
    assert proven == regex == check_ndjson_frames(frames, fast=False, **KW)
    assert proven.ok and proven.structurally_checked == 40  # the full structure check of the sample


def _edit(frames, rtype: str, index: int, edit) -> dict[str, pl.DataFrame]:
    df = frames[rtype]
    texts = df.get_column("json").to_list()
    texts[index] = edit(texts[index])
    return dict(frames, **{rtype: df.with_columns(pl.Series("json", texts))})


@pytest.mark.parametrize(("rtype", "edit", "rule"), [
    ("Patient", lambda t: t[:-1], "json.parse"),
    ("Coverage", lambda t: t + " x", "json.parse"),
    ("Group", lambda t: t.replace('"member":[', '"member":[,', 1), "json.parse"),
    ("RelatedPerson", lambda t: t.replace('"id":"', '"id":"0', 1), "export.id-mismatch"),
    # Valid JSON text to msgspec (it skips the field unbuilt), a double overflow to orjson.
    ("Patient", lambda t: t[:-1] + ',"x":1e999}', "json.parse"),
    ("Coverage", lambda t: t[:-1] + ',"x":[-2.5E+400]}', "json.parse"),
    # Deeper than either parser goes (msgspec: RecursionError; orjson: recursion limit).
    ("Coverage", lambda t: t[:-1] + ',"x":' + "[" * 1100 + "]" * 1100 + "}", "json.parse"),
    ("Patient", lambda t: t.replace('"id":"', '"id":"\\ud800', 1), "json.parse"),
])
def test_a_proven_line_that_does_not_parse_is_reported_as_before(rows, rtype, edit, rule):
    frames = _edit(build_resources(rows, CTX), rtype, 3 if rtype != "Group" else 0, edit)
    proven = check_ndjson_frames(frames, proof=prove(rows, CTX), **KW)
    assert proven == check_ndjson_frames(frames, **KW) == check_ndjson_frames(frames, fast=False, **KW)
    assert rule in [r.rule for r in proven.results]


def test_a_rule_the_columns_break_falls_back_to_the_regex_path(rows, regex_calls):
    # One coverage ending before it starts: no type trusted for period.order is proven (the
    # rule applies to any type, so that is every trusted type: conservative, never wrong).
    k = rows.height // 2
    bad = rows.with_columns(
        pl.when(pl.int_range(0, pl.len()) == k).then(pl.col("coverage_start") - pl.duration(days=400)).otherwise(pl.col("coverage_end")).alias("coverage_end")
    )
    proof = prove(bad, CTX)
    assert not proof.covers("Coverage") and not proof.covers("Group") and "period.order" not in proof.rules["Coverage"]
    assert not any(proof.covers(t) for t in TRUSTED)
    frames = build_resources(bad, CTX)
    proven = check_ndjson_frames(frames, proof=proof, **KW)
    assert "Coverage" in regex_calls
    slow = check_ndjson_frames(frames, fast=False, **KW)
    assert proven == check_ndjson_frames(frames, **KW) == slow  # same rule, resource ids and paths
    assert [r.rule for r in proven.results] == ["period.order"]


def test_a_context_it_cannot_vouch_for_proves_nothing(rows):
    npi_member_ids = CTX.systems.model_copy(update={"member_id": "http://hl7.org/fhir/sid/us-npi"})
    assert prove(rows, BuildContext(id_key=b"k", systems=npi_member_ids, transaction_time=CTX.transaction_time)) == NOTHING
    assert prove(rows, BuildContext(id_key=b"k", systems=CTX.systems, transaction_time=CTX.transaction_time, payer_name="")) == NOTHING
    assert not any(NOTHING.covers(t) for t in TRUSTED) and not Proof({"Patient": TRUSTED["Patient"] - {"json.null"}}).covers("Patient")


def test_the_run_hands_its_proof_to_the_conformance_stage(tmp_path: Path, monkeypatch, regex_calls):
    from atr_pipeline import pipeline
    from atr_pipeline.config import load_settings

    monkeypatch.setenv("ATR_ID_KEY", "test-key")
    monkeypatch.setenv("ATR_CONFORM_FULL_MAX", "100")  # sampled, as a large month is
    settings = load_settings(tmp_path / "home", mappings_dir=ROOT / "mappings")
    landed = pipeline.land_path(ROOT / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202609.csv", SPEC, settings)
    pipeline.record_history(pipeline.validate_read(pipeline.read_landed(landed, SPEC), landed, SPEC), settings, SPEC)
    built = pipeline.build_month(SPEC, date(2026, 9, 1), settings)
    assert built.proof is not None and all(built.proof.covers(t) for t in TRUSTED)
    report = pipeline.check_month(built)
    assert regex_calls == []
    assert report == check_ndjson_frames(built.resources, structural="sample", sample_size=2000) and report.ok
    built.resources.discard()
