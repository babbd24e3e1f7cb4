"""Property tests: random valid canonical rows -> R4B-valid resources, no nulls, closed references.

Values are drawn from small pools so rows collide (same member in two contracts, a subscriber
who is also a member, one NPI in many rows), and free text includes JSON-looking content
(quotes, backslashes, ``,"k":null``) to attack the null-stripping in fhir/json.py.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
from fhir.resources.R4B import get_fhir_model_class
from fhir_refs import references
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fhir_cases import SYSTEMS

from atr_pipeline.canonical import CANONICAL_SCHEMA
from atr_pipeline.fhir.build import BuildContext, build_resources
from atr_pipeline.fhir.json import arr, boolean, obj, text
from atr_pipeline.systems import CHANGE_TYPES, GENDERS, PRODUCT_TYPES, RELATIONSHIPS

NASTY = ['a","b":null', '{"x":null}', "null", "\\", '\\"', "[]", "{}", ",", "é ü", "line\nbreak", "  padded  ", "tab\tin"]
text_values = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10),
)


def opt(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


@st.composite
def member_row(draw: st.DrawFn, line: int) -> dict[str, Any]:
    inactive = draw(st.booleans())
    return {
        "source_id": "prop",
        "file_name": draw(st.sampled_from(["a.csv", "b.csv"])),
        "file_sha256": "f" * 64,
        "line_number": line,
        "reporting_month": draw(st.sampled_from([date(2026, 1, 1), date(2026, 2, 1)])),
        "payer_id": draw(st.sampled_from(["P1", "P2"])),
        "payer_name": draw(opt(text_values)),
        "contract_id": draw(st.sampled_from(["C1", "C2", "C3"])),
        "contract_name": draw(opt(text_values)),
        "contract_start": draw(opt(dates)),
        "contract_end": draw(opt(dates)),
        "settlement_entity_id": draw(opt(st.sampled_from(["S1", "S2"]))),
        "settlement_entity_name": draw(opt(text_values)),
        "plan_id": draw(opt(st.sampled_from(["PL1", "PL2"]))),
        "plan_name": draw(opt(text_values)),
        "product_type": draw(opt(st.sampled_from(sorted(PRODUCT_TYPES)))),
        "coverage_start": draw(opt(dates)),
        "coverage_end": draw(opt(dates)),
        "member_id": draw(st.sampled_from(["M1", "M2", "M3", "M4"])),
        "subscriber_id": draw(opt(st.sampled_from(["M1", "M2", "X9"]))),
        "relationship": draw(opt(st.sampled_from(RELATIONSHIPS))),
        "mbi": draw(opt(text_values)),
        "medicaid_id": draw(opt(text_values)),
        "mrn": draw(opt(text_values)),
        "ssn": draw(opt(st.sampled_from(["123456789", "987654321"]))),
        "family_name": draw(opt(text_values)),
        "given_name": draw(opt(text_values)),
        "middle_name": draw(opt(text_values)),
        "name_prefix": draw(opt(text_values)),
        "name_suffix": draw(opt(text_values)),
        "gender": draw(opt(st.sampled_from(GENDERS))),
        "birth_date": draw(opt(dates)),
        "deceased_date": draw(opt(dates)),
        "address_line1": draw(opt(text_values)),
        "address_line2": draw(opt(text_values)),
        "city": draw(opt(text_values)),
        "state": draw(opt(st.sampled_from(["IL", "NY"]))),
        "postal_code": draw(opt(st.sampled_from(["62701", "10001-1234"]))),
        "phone": draw(opt(text_values)),
        "provider_npi": draw(opt(st.sampled_from(["1234567893", "1987654328", "1555555550"]))),
        "provider_family_name": draw(opt(text_values)),
        "provider_given_name": draw(opt(text_values)),
        "provider_tin": draw(opt(st.sampled_from(["123456789", "555443333"]))),
        "provider_org_name": draw(opt(text_values)),
        "provider_org_npi": draw(opt(st.sampled_from(["1666666668", "1777777776"]))),
        "attribution_start": draw(opt(dates)),
        "attribution_end": draw(opt(dates)),
        "change_reason": draw(opt(text_values)),
        "risk_score": draw(opt(st.floats(0, 10))),
        "change_type": "dropped" if inactive else draw(st.sampled_from([c for c in CHANGE_TYPES if c != "dropped"])),
        "inactive": inactive,
    }


@st.composite
def member_frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 8))
    rows = [draw(member_row(i + 1)) for i in range(n)]
    schema = {**dict(CANONICAL_SCHEMA), "change_type": pl.String(), "inactive": pl.Boolean()}
    return pl.DataFrame(rows, schema=schema)


CTX = BuildContext(id_key=b"prop-key", systems=SYSTEMS, transaction_time=datetime(2026, 2, 3, 4, 5, 6, 789000, tzinfo=UTC))


def _empties(value: Any) -> int:
    if value is None or value == "" or value == [] or value == {}:
        return 1
    if isinstance(value, dict):
        return sum(_empties(v) for v in value.values())
    if isinstance(value, list):
        return sum(_empties(v) for v in value)
    return 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member_frames())
def test_random_rows_give_valid_closed_output(frame: pl.DataFrame) -> None:
    out = build_resources(frame, CTX)
    parsed = {t: [json.loads(j) for j in df["json"].to_list()] for t, df in out.items()}
    known = {f"{t}/{r['id']}" for t, rs in parsed.items() for r in rs}
    for rtype, resources in parsed.items():
        model = get_fhir_model_class(rtype)
        for res in resources:
            model.model_validate(res)
            assert _empties(res) == 0
            assert set(references(res)) <= known
    groups = parsed["Group"]
    assert sum(len(g["member"]) for g in groups) == frame.height
    assert sum(g["quantity"] for g in groups) == frame.filter(~pl.col("inactive")).height
    assert len(parsed["Patient"]) == frame.select("payer_id", "member_id").unique().height
    assert all(g["meta"]["lastUpdated"] == "2026-02-03T04:05:06.789Z" for g in groups)
    # deterministic regardless of row order
    again = build_resources(frame.reverse(), CTX)
    assert all(again[t].equals(out[t]) for t in out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(opt(text_values), opt(text_values), opt(st.booleans())), min_size=1, max_size=5))
def test_text_builders_drop_absent_and_keep_text(values: list[tuple]) -> None:
    df = pl.DataFrame(values, schema={"a": pl.String(), "b": pl.String(), "c": pl.Boolean()}, orient="row")
    built = obj(
        a=text("a"),
        inner=pl.when(pl.col("b").is_not_null()).then(obj(b=text("b"), c=boolean(pl.col("c")))),
        lst=arr(text("a"), text("b")),
        c=boolean(pl.col("c")),
    )
    got = df.select(built).to_series().to_list()
    for (a, b, c), encoded in zip(values, got, strict=True):
        expected: dict[str, Any] = {}
        if a is not None:
            expected["a"] = a
        if b is not None:
            expected["inner"] = {"b": b} if c is None else {"b": b, "c": c}
        if a is not None or b is not None:
            expected["lst"] = [v for v in (a, b) if v is not None]
        if c is not None:
            expected["c"] = c
        if expected:
            assert json.loads(encoded) == expected
        else:
            assert encoded is None  # never "{}"
