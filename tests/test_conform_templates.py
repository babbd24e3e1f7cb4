"""The fhir/ templates bound to the cheap conformance rules they are trusted for (issue 22 item 3).

conform/columns.py proves cheap rules on the typed columns before the templates write them, and
``pipeline.check_month`` then skips the regex proof of the text of every type the proof covers
(conform/columns.TRUSTED: Patient, RelatedPerson, Coverage, Group). That is sound only while each
template writes nothing that breaks a rule it is trusted for when the columns pass.

Property: for random canonical rows (tests/test_fhir_properties.py's strategy, hostile text
included), every cheap rule the per-resource checker reports on a resource of a trusted type is
one the type is trusted for and one the column checks predict (so it is not in the ``Proof``);
for the other types every rule is predicted. A template change that breaks a rule fails it:
``test_a_broken_template_fails_the_binding`` changes each trusted template in turn.
"""

from __future__ import annotations

import re
from collections import defaultdict

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from test_fhir_properties import CTX, member_frames

import atr_pipeline.fhir.coverage as coverage_module
import atr_pipeline.fhir.group as group_module
import atr_pipeline.fhir.patient as patient_module
import atr_pipeline.fhir.related_person as related_person_module
from atr_pipeline import systems as S
from atr_pipeline.conform.checker import Checker, frame_order
from atr_pipeline.conform.columns import TRUSTED, column_rules, prove
from atr_pipeline.conform.findings import Findings
from atr_pipeline.fhir.build import build_resources


class _ByType(Findings):
    """Findings that also remember which rules fired on which resource type (every finding,
    ref.unresolved included, goes through ``add`` with the offending resource's key)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_type: dict[str, set[str]] = defaultdict(set)

    def add(self, rule: str, key: str, path: str = "", n: int = 1) -> None:
        super().add(rule, key, path, n)
        self.by_type[key.split("/")[0]].add(rule)


def fired_by_type(rows: pl.DataFrame) -> dict[str, set[str]]:
    """Per resource type, the rules the per-resource checker fires on the built resources."""
    frames = build_resources(rows, CTX)
    checker = Checker(structural="none")
    checker.findings = findings = _ByType()
    for rtype in frame_order(frames):
        for rid, text in frames[rtype].select("id", "json").iter_rows():
            checker.add_text(text, expected_type=rtype, expected_id=rid)
    checker.report()
    return {t: rules for t, rules in findings.by_type.items() if rules}


def fired(rows: pl.DataFrame) -> set[str]:
    return set().union(*fired_by_type(rows).values())


def binding_holds(rows: pl.DataFrame) -> None:
    predicted = column_rules(rows)
    proof = prove(rows, CTX)
    for rtype, rules in fired_by_type(rows).items():
        assert rules <= predicted, (rtype, rules - predicted)
        if rtype in TRUSTED:
            # Trusted for every rule that can fire on it, and none of them proven silent.
            assert rules <= TRUSTED[rtype], (rtype, rules - TRUSTED[rtype])
            assert not rules & proof.rules[rtype], (rtype, rules & proof.rules[rtype])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member_frames())
def test_templates_break_only_rules_the_columns_predict(rows: pl.DataFrame) -> None:
    binding_holds(rows)


def test_the_binding_has_clean_inputs_to_bind() -> None:
    """The property is not vacuous: the pipeline's own synthetic rows pass the column checks."""
    rows = _synthetic_rows()
    assert column_rules(rows) == set()
    assert fired(rows) == set()
    assert all(prove(rows, CTX).covers(t) for t in TRUSTED)


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


def _rewriting(module, old: str, new: str, *, inside: str = ""):
    """``module``'s template with ``old`` written as ``new`` in its literal pieces (those holding
    ``inside``)."""
    real = module.template

    def broken(*pieces):
        return real(*(p.replace(old, new) if isinstance(p, str) and inside in p else p for p in pieces))

    return broken


def _without_patient(*args, **members):
    members.pop("patient", None)
    return related_person_module.__dict__["_real_resource"](*args, **members)


# One change per trusted template, each breaking a rule that template is trusted for.
MUTATIONS = {
    "Coverage": ("coverage.status.fixed", lambda mp: mp.setattr(
        coverage_module, "template", _rewriting(coverage_module, '"status":"active"', '"status":"draft"'))),
    "Patient": ("patient.gender.cardinality", lambda mp: mp.setattr(
        patient_module, "template", _rewriting(patient_module, ',"gender":', ',"sex":'))),
    "Group": ("group.member.changeType.code", lambda mp: mp.setattr(
        group_module, "template", _rewriting(group_module, '"valueCode":"', '"valueCode":"re', inside=S.EXT_CHANGE_TYPE))),
    "RelatedPerson": ("relatedperson.patient.cardinality", lambda mp: (
        mp.setitem(related_person_module.__dict__, "_real_resource", related_person_module.resource),
        mp.setattr(related_person_module, "resource", _without_patient))),
}


def test_every_trusted_template_has_a_mutation() -> None:
    assert set(MUTATIONS) == set(TRUSTED)
    assert all(rule in TRUSTED[rtype] for rtype, (rule, _) in MUTATIONS.items())


@pytest.mark.parametrize("rtype", sorted(MUTATIONS))
def test_a_broken_template_fails_the_binding(rtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted template changed to break a rule it is trusted for: the property above must fail
    (and the columns still prove the type, so without the property the run would skip its regex)."""
    rule, mutate = MUTATIONS[rtype]
    rows = _synthetic_rows()
    assert prove(rows, CTX).covers(rtype)
    assert rule not in fired_by_type(rows).get(rtype, set())
    mutate(monkeypatch)
    assert rule in fired_by_type(rows)[rtype]
    # The same property over the same strategy (no shrinking: any failing example will do).
    quick = settings(max_examples=10, deadline=None, database=None, phases=(Phase.generate,),
                     suppress_health_check=[HealthCheck.too_slow])(given(member_frames())(binding_holds))
    with pytest.raises(AssertionError, match=re.escape(rule)):
        quick()
