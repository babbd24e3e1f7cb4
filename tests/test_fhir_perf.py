"""The FHIR build's performance rewrite (issue 8) keeps every byte.

* a 6,000-row synthetic month (benchmarks/bench_fhir.py shape, shuffled) gives the sha256 per
  type the build gave before the rewrite (computed with the pre-change code);
* the id rank columns order like the id text, also when two ids share a 64-bit prefix;
* ``representative`` picks the same row as the window form it replaced, in id order;
* the flat Patient template equals the nested obj/arr form on hostile text;
* dates formatted once per distinct value equal per-row formatting; the Group member
  tie-break ranks order like the values; ``to_frame`` still sorts rows that come unsorted.
"""

from __future__ import annotations

import hashlib
import sys
from datetime import date
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fhir_cases import SYSTEMS
from test_fhir_properties import CTX, member_frames

from atr_pipeline.canonical import CANONICAL_SCHEMA
from atr_pipeline.fhir import rows as R
from atr_pipeline.fhir.build import build_resources, prepare
from atr_pipeline.fhir.group import _small_rank
from atr_pipeline.fhir.ids import _order, add_id, resource_id
from atr_pipeline.fhir.json import arr, const, obj, resource, safe_text, text, to_frame, typed_identifier
from atr_pipeline.fhir.patient import human_name, patient_json
from atr_pipeline.systems import (
    ID_TYPE_MEDICAID,
    ID_TYPE_MEDICARE,
    ID_TYPE_MEMBER,
    ID_TYPE_MRN,
    ID_TYPE_SSN,
    PROFILE_BY_TYPE,
    SYS_MBI,
    SYS_SSN,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_fhir import context, synthetic_members  # noqa: E402

# sha256 over "id\tjson\n" lines per type, from the build before the rewrite (commit a67f9a7).
BEFORE = {
    "Organization": (6, "da97b5a4db345ac16d463281a0d3e00767a3e05281eaa495f43013ef768b7f00"),
    "Practitioner": (30, "dd0fe502a4f1015e959c303d6f3c2c45e791334987f941b5ead716eb4e8ccf52"),
    "PractitionerRole": (30, "90ab4ec363a52aac09519566fa400e29ff3ba75c460ed1fe9818a899e165f1ce"),
    "Patient": (5825, "707818304dd57309c81909c5ac4691e45a169d26cdb661d1b9e6c6a6fa9b00d5"),
    "RelatedPerson": (1165, "ca8311134439a7497a1be527d3429bf42da2421fac143ef3a25a3d78d8338a10"),
    "Coverage": (5825, "3d24eb96878e0f2ac578527b73906d5b65b2ec07ab2e58433475ea11009a27d4"),
    "Group": (2, "6c232d0909c9670a4f07b8fd7e658c6e7aa2cde0f1d7378968936367e4e27a66"),
}


def _digest(df: pl.DataFrame) -> tuple[int, str]:
    h = hashlib.sha256()
    for rid, js in df.iter_rows():
        h.update(f"{rid}\t{js}\n".encode())
    return df.height, h.hexdigest()


def test_synthetic_month_is_byte_identical_to_the_build_before_the_rewrite() -> None:
    members = synthetic_members(6000).sample(fraction=1.0, shuffle=True, seed=11)
    out = build_resources(members, context())
    assert {t: _digest(df) for t, df in out.items()} == BEFORE
    for df in out.values():
        assert df.get_column("id").is_sorted()


def test_order_falls_back_to_the_text_when_prefixes_tie() -> None:
    ids = pl.Series(["b", "a", "d", "c"])
    # every prefix equal: the numeric sort cannot tell them apart, the text must
    assert _order(ids, pl.Series([7, 7, 7, 7], dtype=pl.UInt64)).to_list() == [1, 0, 3, 2]
    # a prefix order that disagrees with the text is never trusted
    assert _order(ids, pl.Series([1, 2, 3, 4], dtype=pl.UInt64)).to_list() == [1, 0, 3, 2]


def test_order_key_is_the_dense_rank_of_the_id_text() -> None:
    df = pl.DataFrame({"a": [f"m{i % 700}" for i in range(2000)] + [None, "m3"], "b": ["x"] * 2002})
    out = add_id(df, b"k", "T", ["a", "b"], "id", when=pl.col("a").is_not_null(), order_key="k")
    assert out.columns == ["a", "b", "id", "k"]
    assert out.row(2000) == (None, "x", None, None)
    assert out["id"][0] == resource_id(b"k", "T", "m0", "x")
    present = out.drop_nulls("id")
    expected = (present["id"].rank("dense") - 1).cast(pl.UInt32)
    assert present["k"].to_list() == expected.to_list()
    assert present["k"].max() == 699


def _window_representative(rows: pl.DataFrame, id_column: str) -> pl.DataFrame:
    """The form ``representative`` replaced: min preference rank over a window on the id."""
    present = rows.filter(pl.col(id_column).is_not_null())
    return present.filter(pl.col(R.RANK) == pl.col(R.RANK).min().over(id_column)).sort(id_column)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member_frames())
def test_representative_is_the_window_choice_in_id_order(frame: pl.DataFrame) -> None:
    rows = prepare(frame, CTX)
    for id_column in (R.PATIENT_ID, R.COVERAGE_ID, R.RELATED_PERSON_ID, R.PRACTITIONER_ID, R.GROUP_ID, R.PROVIDER_ORG_ID):
        got = R.representative(rows, id_column).collect()
        assert got.equals(_window_representative(rows, id_column))


def _nested_patient(ctx) -> pl.Expr:
    """patient_json as it was written before (obj/arr nesting)."""
    s = ctx.systems
    ids = [typed_identifier(ID_TYPE_MEMBER, s.member_id, "member_id"), typed_identifier(ID_TYPE_MEDICARE, SYS_MBI, "mbi")]
    if s.medicaid_id:
        ids.append(typed_identifier(ID_TYPE_MEDICAID, s.medicaid_id, "medicaid_id"))
    if s.mrn:
        ids.append(typed_identifier(ID_TYPE_MRN, s.mrn, "mrn"))
    ids.append(typed_identifier(ID_TYPE_SSN, SYS_SSN, "ssn"))
    address = obj(
        line=arr(text("address_line1"), text("address_line2")), city=text("city"), state=text("state"), postalCode=text("postal_code"),
    )
    return resource(
        "Patient",
        R.PATIENT_ID,
        identifier=arr(*ids),
        name=arr(human_name()),
        telecom=arr(obj(system=pl.when(pl.col("phone").is_not_null()).then(const("phone")), value=text("phone"))),
        gender=text(pl.col("gender").fill_null("unknown")),
        birthDate=safe_text("birth_date"),
        deceasedDateTime=safe_text("deceased_date"),
        address=arr(pl.concat_str([address.str.strip_suffix("}"), pl.lit(',"country":"US"}')])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member_frames())
def test_flat_patient_equals_the_nested_form(frame: pl.DataFrame) -> None:
    rows = prepare(frame, CTX)
    flat = rows.select(patient_json(CTX)).to_series().to_list()
    nested = rows.select(_nested_patient(CTX)).to_series().to_list()
    assert flat == nested
    assert SYSTEMS.medicaid_id and SYSTEMS.mrn  # both optional identifier slices are exercised


def test_patient_with_nothing_but_ids_has_no_empty_elements() -> None:
    row = {c: None for c in CANONICAL_SCHEMA.names()} | {"_patient_id": "00000000-0000-8000-8000-000000000000"}
    df = pl.DataFrame([row], schema={**dict(CANONICAL_SCHEMA), "_patient_id": pl.String()})
    df = df.with_columns(pl.col(c).cast(pl.String) for c in ("birth_date", "deceased_date"))
    assert df.select(patient_json(CTX)).item() == (
        '{"resourceType":"Patient","id":"00000000-0000-8000-8000-000000000000",'
        f'"meta":{{"profile":["{PROFILE_BY_TYPE["Patient"]}"]}},"gender":"unknown"}}'
    )


@given(st.lists(st.one_of(st.none(), st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31))), max_size=30))
def test_dates_formatted_once_per_value_equal_per_row_formatting(values: list[date | None]) -> None:
    dates = pl.Series("d", values, dtype=pl.Date)
    assert R._date_text(dates).to_list() == dates.dt.to_string("%Y-%m-%d").to_list()
    assert R._date_text(dates).dtype == pl.String


@given(st.lists(st.one_of(st.none(), st.text(max_size=4)), max_size=30))
def test_small_rank_orders_like_the_values_with_nulls_last(values: list[str | None]) -> None:
    s = pl.Series("v", values, dtype=pl.String)
    ranks = _small_rank(s)
    by_rank = [v for _, v in sorted(zip(ranks.to_list(), values, strict=True), key=lambda p: p[0])]
    assert by_rank == s.sort(nulls_last=True).to_list()
    assert all((a == b) == (ra == rb) for a, ra in zip(values, ranks, strict=True) for b, rb in zip(values, ranks, strict=True))


def test_to_frame_sorts_rows_that_come_unsorted() -> None:
    df = pl.DataFrame({"i": ["c", "a", "b"]})
    out = to_frame(df, "i", pl.concat_str([pl.lit("<"), pl.col("i"), pl.lit(">")]))
    assert out.rows() == [("a", "<a>"), ("b", "<b>"), ("c", "<c>")]
    ordered = to_frame(df.sort("i"), "i", pl.col("i"))
    assert ordered.rows() == [("a", "a"), ("b", "b"), ("c", "c")] and ordered["id"].flags["SORTED_ASC"]
