"""Row rules: each rule caught on a hand-broken row with the exact line, field and rule."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from atr_pipeline.canonical import (
    CANONICAL_SCHEMA,
    ISSUE_DTYPE,
    ISSUES_COLUMN,
    PHI_FIELDS,
    REJECT_SCHEMA,
    conform_columns,
)
from atr_pipeline.layouts.spec import parse_mapping
from atr_pipeline.validate.rules import CanonicalContractError, validate_rows

TODAY = date(2026, 2, 15)
SPEC = parse_mapping(
    {
        "source_id": "test_payer",
        "file": {"pattern": r"atr_(?P<yyyymm>\d{6})\.csv"},
        "format": {"kind": "delimited", "delimiter": ",", "header_row": True},
        "fields": {"member_id": {"column": "member_id"}, "payer_id": {"constant": "P1"}, "contract_id": {"column": "contract_id"}},
        "identifier_systems": {"member_id": "urn:test:member", "payer_id": "urn:test:payer", "contract_id": "urn:test:contract"},
    }
)

VALID = {
    "source_id": "test_payer",
    "file_name": "atr_202601.csv",
    "file_sha256": "ab" * 32,
    "reporting_month": date(2026, 1, 1),
    "payer_id": "P1",
    "payer_name": "Test Health",
    "contract_id": "C1",
    "contract_start": date(2025, 1, 1),
    "contract_end": date(2026, 12, 31),
    "plan_id": "PL1",
    "product_type": "commppo",
    "coverage_start": date(2024, 1, 1),
    "coverage_end": date(2026, 12, 31),
    "subscriber_id": "S1",
    "relationship": "self",
    "mbi": "1EG4TE5MK73",
    "medicaid_id": "MCD1",
    "family_name": "Doe",
    "given_name": "Jane",
    "gender": "female",
    "birth_date": date(1950, 6, 1),
    "state": "MA",
    "postal_code": "02139",
    "provider_npi": "1234567893",
    "provider_tin": "123456789",
    "provider_org_npi": "9941339100",
    "attribution_start": date(2025, 1, 1),
    "attribution_end": date(2025, 12, 31),
}


def frame(*overrides: dict, issues: dict[int, list[dict]] | None = None) -> pl.DataFrame:
    """One valid row per override dict (line numbers 2, 3, ...; member ids M2, M3, ...)."""
    rows = []
    for i, o in enumerate(overrides):
        line = i + 2
        rows.append({**VALID, "line_number": line, "member_id": f"M{line}", **o})
    names = {k for r in rows for k in r}
    df = conform_columns(pl.DataFrame(rows, schema={k: v for k, v in CANONICAL_SCHEMA.items() if k in names}))
    issues = issues or {}
    return df.with_columns(pl.Series(ISSUES_COLUMN, [issues.get(i + 2, []) for i in range(len(rows))], dtype=ISSUE_DTYPE))


def triples(df: pl.DataFrame) -> list[tuple[int, str, str]]:
    return [(r["line_number"], r["field"], r["rule"]) for r in df.iter_rows(named=True)]


def test_valid_rows_all_accepted_in_order_without_issues_column():
    df = frame({}, {}, {})
    res = validate_rows(df, SPEC, today=TODAY)
    assert (res.rows_read, res.rows_accepted, res.rows_rejected) == (3, 3, 0)
    assert res.accepted.columns == list(CANONICAL_SCHEMA)
    assert res.accepted["line_number"].to_list() == [2, 3, 4]
    assert res.rejects.schema == REJECT_SCHEMA
    assert res.rejects.height == 0
    assert res.counts_by_rule == {}
    assert res.warnings_by_rule == {}


@pytest.mark.parametrize(
    ("override", "field", "rule"),
    [
        ({"member_id": None}, "member_id", "required"),
        ({"member_id": "   "}, "member_id", "required"),
        ({"payer_id": None}, "payer_id", "required"),
        ({"contract_id": ""}, "contract_id", "required"),
        ({"plan_id": None}, "plan_id", "required"),
        ({"provider_npi": None}, "provider_npi", "required"),
        ({"attribution_start": None, "attribution_end": None}, "attribution_start", "required"),
        ({"gender": None}, "gender", "required"),
        ({"family_name": None, "given_name": " "}, "family_name", "required"),
        ({"provider_npi": "123456789"}, "provider_npi", "npi_format"),
        ({"provider_npi": "9941339108"}, "provider_npi", "npi_check_digit"),
        ({"provider_org_npi": "12345A7893"}, "provider_org_npi", "npi_format"),
        ({"provider_org_npi": "1234567890"}, "provider_org_npi", "npi_check_digit"),
        ({"provider_tin": "12-3456789"}, "provider_tin", "tin_format"),
        ({"provider_tin": "000000000"}, "provider_tin", "tin_format"),
        ({"mbi": "1EG4-TE5-MK73"}, "mbi", "mbi_format"),
        ({"mbi": "1SG4TE5MK73"}, "mbi", "mbi_format"),
        ({"member_id": "M\x002"}, "member_id", "control_characters"),
        ({"medicaid_id": "MC\tD"}, "medicaid_id", "control_characters"),
        ({"subscriber_id": "S\x1b1"}, "subscriber_id", "control_characters"),
        ({"birth_date": date(2026, 2, 16)}, "birth_date", "date_in_future"),
        ({"birth_date": date(1906, 2, 14)}, "birth_date", "birth_date_too_old"),
        ({"deceased_date": date(2026, 3, 1)}, "deceased_date", "date_in_future"),
        ({"deceased_date": date(1950, 5, 31)}, "deceased_date", "deceased_before_birth"),
        ({"attribution_end": date(2024, 12, 31)}, "attribution_end", "period_order"),
        ({"coverage_end": date(2023, 12, 31)}, "coverage_end", "period_order"),
        ({"contract_end": date(2024, 12, 31), "attribution_end": None, "coverage_end": None}, "contract_end", "period_order"),
        ({"gender": "F"}, "gender", "gender_code"),
        ({"relationship": "01"}, "relationship", "relationship_code"),
        ({"product_type": "PPO"}, "product_type", "product_type_code"),
        ({"state": "ZZ"}, "state", "state_code"),
        ({"state": "ma"}, "state", "state_code"),
        ({"postal_code": "0213"}, "postal_code", "postal_code"),
        ({"postal_code": "02139-12"}, "postal_code", "postal_code"),
    ],
)
def test_each_rule_caught_on_exact_line_and_field(override, field, rule):
    # The broken row sits between two valid ones so the line number is not trivially 2.
    res = validate_rows(frame({}, override, {}), SPEC, today=TODAY)
    assert triples(res.rejects) == [(3, field, rule)]
    assert res.rejects["source_id"].to_list() == ["test_payer"]
    assert res.rejects["file_name"].to_list() == ["atr_202601.csv"]
    assert (res.rows_read, res.rows_accepted, res.rows_rejected) == (3, 2, 1)
    assert res.accepted["line_number"].to_list() == [2, 4]
    assert res.counts_by_rule == {rule: 1}


@pytest.mark.parametrize(
    "override",
    [
        {"birth_date": date(1906, 2, 15)},  # exactly 120 years: allowed
        {"birth_date": TODAY},
        {"postal_code": "02139-1234"},
        {"postal_code": "021391234"},
        {"state": "PR"},
        {"state": "AE"},
        {"mbi": None, "medicaid_id": None, "provider_tin": None, "provider_org_npi": None},
        {"relationship": None, "product_type": None, "state": None, "postal_code": None},
        {"family_name": None},  # given name alone is enough
        {"attribution_end": None, "coverage_end": None, "contract_end": None},
        {"attribution_end": date(2025, 1, 1)},  # one-day period
        {"member_id": "ÄÖ-77"},
    ],
)
def test_edge_values_accepted(override):
    res = validate_rows(frame(override), SPEC, today=TODAY)
    assert triples(res.rejects) == []
    assert res.rows_accepted == 1


def test_row_with_several_problems_has_one_record_each_and_counts_once():
    res = validate_rows(frame({}, {"gender": "X", "provider_npi": "1234567890", "state": "XX"}), SPEC, today=TODAY)
    assert triples(res.rejects) == [
        (3, "gender", "gender_code"),
        (3, "provider_npi", "npi_check_digit"),
        (3, "state", "state_code"),
    ]
    assert (res.rows_read, res.rows_accepted, res.rows_rejected) == (2, 1, 1)
    assert res.counts_by_rule == {"gender_code": 1, "npi_check_digit": 1, "state_code": 1}


def test_reader_issues_become_rejects_and_suppress_double_reports():
    issue = {"field": "attribution_start", "rule": "date_format", "reason": "attribution_start: not a date in MM/DD/YYYY"}
    other = {"field": "gender", "rule": "code_map", "reason": "gender: value not in the mapping's code map"}
    # The reader leaves a bad date null: the row must say "date_format", not also "required".
    df = frame({}, {"attribution_start": None, "attribution_end": None, "gender": None}, issues={3: [issue, other]})
    res = validate_rows(df, SPEC, today=TODAY)
    assert triples(res.rejects) == [(3, "attribution_start", "date_format"), (3, "gender", "code_map")]
    assert res.rejects["reason"].to_list() == [issue["reason"], other["reason"]]
    assert res.counts_by_rule == {"code_map": 1, "date_format": 1}
    assert res.rows_rejected == 1


def test_exact_duplicate_keeps_first_rejects_later_copies():
    dup = {"member_id": "MX"}
    res = validate_rows(frame(dup, {}, dup, dup), SPEC, today=TODAY)
    assert triples(res.rejects) == [(4, "member_id", "duplicate_row"), (5, "member_id", "duplicate_row")]
    assert "repeats line 2 exactly" in res.rejects["reason"][0]
    assert res.accepted["line_number"].to_list() == [2, 3]
    assert res.counts_by_rule == {"duplicate_row": 2}


def test_conflicting_duplicates_all_rejected():
    res = validate_rows(
        frame({"member_id": "MX", "family_name": "Doe"}, {}, {"member_id": "MX", "family_name": "Roe"}), SPEC, today=TODAY
    )
    assert triples(res.rejects) == [(2, "member_id", "conflicting_duplicate"), (4, "member_id", "conflicting_duplicate")]
    assert "also on line(s) 4 with different values" in res.rejects["reason"][0]
    assert res.accepted["line_number"].to_list() == [3]
    # The reason names line numbers only, never the member id or names.
    assert not res.rejects["reason"].str.contains("MX|Doe|Roe").any()


def test_same_member_other_provider_or_plan_is_not_a_duplicate():
    res = validate_rows(
        frame({"member_id": "MX"}, {"member_id": "MX", "provider_npi": "9941339100"}, {"member_id": "MX", "plan_id": "PL2"}),
        SPEC,
        today=TODAY,
    )
    assert res.rows_rejected == 0


def test_duplicates_differing_only_in_lineage_are_exact():
    res = validate_rows(frame({"member_id": "MX"}, {"member_id": "MX", "file_sha256": "cd" * 32}), SPEC, today=TODAY)
    assert triples(res.rejects) == [(3, "member_id", "duplicate_row")]


def test_rows_with_missing_key_are_not_duplicate_checked():
    res = validate_rows(frame({"member_id": None}, {"member_id": None}), SPEC, today=TODAY)
    assert triples(res.rejects) == [(2, "member_id", "required"), (3, "member_id", "required")]


def test_contract_period_is_a_warning_not_a_reject():
    res = validate_rows(
        frame(
            {"attribution_start": date(2024, 6, 1)},  # starts before the contract
            {"attribution_end": date(2027, 3, 31)},  # ends after it
            {"coverage_start": date(2020, 1, 1), "coverage_end": date(2023, 12, 31)},  # no overlap
            {"coverage_start": date(2020, 1, 1)},  # coverage wider than the contract: normal
        ),
        SPEC,
        today=TODAY,
    )
    assert res.rows_rejected == 0
    assert res.rows_accepted == 4
    assert res.warnings_by_rule == {"attribution_outside_contract": 2, "coverage_outside_contract": 1}
    assert triples(res.warnings) == [
        (2, "attribution_start", "attribution_outside_contract"),
        (3, "attribution_start", "attribution_outside_contract"),
        (4, "coverage_start", "coverage_outside_contract"),
    ]


def test_warnings_not_counted_on_rejected_rows():
    res = validate_rows(frame({"attribution_start": date(2024, 6, 1), "gender": "X"}), SPEC, today=TODAY)
    assert res.counts_by_rule == {"gender_code": 1}
    assert res.warnings_by_rule == {}


def test_invariant_and_sorting_on_a_mixed_file():
    overrides = [{}] * 20
    overrides[3] = {"gender": "bad"}
    overrides[7] = {"provider_npi": "1"}
    overrides[11] = {"member_id": "M2"}  # same key as line 2 -> exact copy? no: line differs only in lineage
    overrides[15] = {"mbi": "bad", "state": "QQ"}
    res = validate_rows(frame(*overrides), SPEC, today=TODAY)
    assert res.rows_read == res.rows_accepted + res.rows_rejected == 20
    assert res.rows_rejected == 4
    assert res.rejects["line_number"].to_list() == [5, 9, 13, 17, 17]
    assert res.rejects.equals(res.rejects.sort("line_number", "field", "rule"))
    assert res.counts_by_rule == {"duplicate_row": 1, "gender_code": 1, "mbi_format": 1, "npi_format": 1, "state_code": 1}
    assert list(res.counts_by_rule) == sorted(res.counts_by_rule)


def test_reasons_never_contain_values():
    secret = "1SECRET9999"
    res = validate_rows(frame({"mbi": secret, "member_id": "Z\x00" + secret, "provider_npi": secret[:10]}), SPEC, today=TODAY)
    assert res.rows_rejected == 1
    text = " ".join(res.rejects["reason"].to_list())
    assert "SECRET" not in text
    assert not (set(res.rejects["field"]) - set(CANONICAL_SCHEMA))
    assert set(res.rejects["field"]) & PHI_FIELDS == {"mbi", "member_id"}  # field names, not values


def test_deterministic():
    df = frame({}, {"gender": "x"}, {"member_id": "M2"}, {"state": "ZZ"})
    a, b = validate_rows(df, SPEC, today=TODAY), validate_rows(df, SPEC, today=TODAY)
    assert a.rejects.equals(b.rejects)
    assert a.accepted.equals(b.accepted)


def test_empty_frame():
    res = validate_rows(frame({}).head(0), SPEC, today=TODAY)
    assert (res.rows_read, res.rows_accepted, res.rows_rejected) == (0, 0, 0)
    assert res.rejects.schema == REJECT_SCHEMA


def test_contract_errors_are_refused_not_rejected():
    df = frame({}, {})
    with pytest.raises(CanonicalContractError, match="line_number"):
        validate_rows(df.with_columns(pl.lit(2, dtype=pl.Int64).alias("line_number")), SPEC, today=TODAY)
    with pytest.raises(CanonicalContractError, match="birth_date"):
        validate_rows(df.with_columns(pl.col("birth_date").cast(pl.String)), SPEC, today=TODAY)
    with pytest.raises(CanonicalContractError, match="extra"):
        validate_rows(df.with_columns(pl.lit("x").alias("extra")), SPEC, today=TODAY)
    with pytest.raises(CanonicalContractError, match="gender"):
        validate_rows(df.drop("gender"), SPEC, today=TODAY)
