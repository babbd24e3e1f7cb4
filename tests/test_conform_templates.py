"""The fhir/ templates bound to the cheap conformance rules (groundwork for issue 22 item 3).

Property: for random canonical rows (tests/test_fhir_properties.py's strategy, hostile text
included), every cheap rule the per-resource checker reports on the built resources is one that
a check of the typed input columns (``column_rules``) predicts. So when the columns pass, the
templates are trusted to write text that breaks no cheap rule; a template change that breaks a
rule makes the property fail, which ``test_a_broken_template_fails_the_binding`` shows by
changing one template string.

Not yet used by the run: its conformance stage still proves the written text with
conform/fast.py's regular expressions.
"""

from __future__ import annotations

import re

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from test_fhir_properties import CTX, member_frames

import atr_pipeline.fhir.coverage as coverage_module
from atr_pipeline.conform import check_ndjson_frames
from atr_pipeline.conform.rules import MOJIBAKE_PATTERN
from atr_pipeline.fhir.build import build_resources
from atr_pipeline.systems import CHANGE_TYPES, GENDERS, PRODUCT_TYPES, RELATIONSHIPS
from atr_pipeline.validate.identifiers import npi_is_valid, tin_is_valid

_PERIODS = (("coverage_start", "coverage_end"), ("attribution_start", "attribution_end"), ("contract_start", "contract_end"))


def column_rules(rows: pl.DataFrame) -> set[str]:
    """The cheap rules the typed values of ``rows`` could make the built resources break."""
    rules: set[str] = set()
    # Periods fall back from one pair of columns to another (and to the reporting month), so any
    # end before any start-like date of its row may end up in one period.
    latest_start = pl.max_horizontal(*(pl.col(s) for s, _ in _PERIODS), pl.col("reporting_month"))
    earliest_end = pl.min_horizontal(*(pl.col(e) for _, e in _PERIODS))
    if rows.filter(latest_start > earliest_end).height:
        rules.add("period.order")
    texts = [c for c, t in rows.schema.items() if t == pl.String()]
    if rows.select(pl.any_horizontal(pl.col(c).str.contains(MOJIBAKE_PATTERN) for c in texts).any()).item():
        rules.add("text.mojibake")
    if rows.select(pl.any_horizontal(pl.col(c) == "" for c in texts).any()).item():
        rules.add("json.empty")
    for column in ("provider_npi", "provider_org_npi"):
        if not all(npi_is_valid(v) for v in rows[column].drop_nulls().to_list()):
            rules |= {"npi.format", "npi.check-digit"}
    if not all(tin_is_valid(v) for v in rows["provider_tin"].drop_nulls().to_list()):
        rules.add("tin.format")
    for column, allowed, rule in (
        ("gender", GENDERS, "patient.gender.binding"),
        ("relationship", RELATIONSHIPS, "coverage.relationship.code"),
        ("product_type", PRODUCT_TYPES, "coverage.insuranceProductType.code"),
        ("change_type", CHANGE_TYPES, "group.member.changeType.code"),
    ):
        if not rows[column].drop_nulls().is_in(list(allowed)).all():
            rules.add(rule)
    # 1..1 / 1..* elements filled from columns validate/ does not require (conservative: any row).
    names = ("family_name", "given_name", "middle_name", "name_prefix", "name_suffix")
    if rows.filter(pl.all_horizontal(pl.col(c).is_null() for c in names)).height:
        rules.add("patient.name.cardinality")
    if rows.filter(pl.all_horizontal(pl.col(c).is_null() for c in names[:3]) & pl.any_horizontal(pl.col(c).is_not_null() for c in names[3:])).height:
        rules.add("patient.name.family-or-given")
    if rows.select(pl.col("payer_name").is_null().any() | pl.col("provider_org_name").is_null().any()).item():
        rules.add("organization.name.cardinality")
    if rows.select(pl.col("provider_family_name").is_null().any() | pl.col("provider_given_name").is_null().any()).item():
        rules |= {"practitioner.name.cardinality", "practitioner.name.family"}
    if rows["provider_npi"].null_count():
        rules.add("practitioner.identifier.cardinality")
    return rules


def fired(rows: pl.DataFrame) -> set[str]:
    report = check_ndjson_frames(build_resources(rows, CTX), structural="none", fast=False)
    return {r.rule for r in report.results}


def binding_holds(rows: pl.DataFrame) -> None:
    assert fired(rows) <= column_rules(rows)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member_frames())
def test_templates_break_only_rules_the_columns_predict(rows: pl.DataFrame) -> None:
    binding_holds(rows)


def test_the_binding_has_clean_inputs_to_bind() -> None:
    """The property is not vacuous: the pipeline's own synthetic rows pass the column checks."""
    rows = _synthetic_rows()
    assert column_rules(rows) == set()
    assert fired(rows) == set()


def _synthetic_rows() -> pl.DataFrame:
    from datetime import date
    from pathlib import Path

    from atr_pipeline.canonical import conform_columns
    from atr_pipeline.layouts.spec import load_mapping
    from atr_pipeline.synthetic import population

    spec = load_mapping(Path(__file__).resolve().parents[1] / "mappings" / "acme_commercial.yaml")
    rows = population(spec, members=200, month=date(2026, 9, 1), seed=5)
    i = pl.int_range(0, rows.height)
    rows = rows.with_columns(
        pl.lit("acme_commercial").alias("source_id"), pl.lit("f.csv").alias("file_name"), pl.lit("0" * 64).alias("file_sha256"),
        (i + 2).cast(pl.Int64).alias("line_number"), pl.lit(date(2026, 9, 1)).alias("reporting_month"),
        pl.lit("ACME01").alias("payer_id"), pl.lit("Acme").alias("payer_name"),
    )
    return conform_columns(rows, keep_issues=False).with_columns(pl.lit("new").alias("change_type"), pl.lit(False).alias("inactive"))


def test_a_broken_template_fails_the_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Coverage's template with another status: the property above must fail."""
    real = coverage_module.template

    def drafted(*pieces):
        return real(*(re.sub('"status":"active"', '"status":"draft"', p) if isinstance(p, str) else p for p in pieces))

    monkeypatch.setattr(coverage_module, "template", drafted)
    assert "coverage.status.fixed" in fired(_synthetic_rows())
    # The same property over the same strategy (no shrinking: any failing example will do).
    quick = settings(max_examples=10, deadline=None, database=None, phases=(Phase.generate,),
                     suppress_health_check=[HealthCheck.too_slow])(given(member_frames())(binding_holds))
    with pytest.raises(AssertionError, match="coverage.status.fixed"):
        quick()
