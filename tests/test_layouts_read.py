"""The reader's refusals, structural rejects, line numbers, encodings and per-value issues."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atr_pipeline.canonical import ISSUES_COLUMN, REJECT_SCHEMA
from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.files import MappingConflict, match_mapping, sha256_file
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import load_mappings, parse_mapping

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = load_mappings(REPO / "mappings")
ACME = MAPPINGS["acme_commercial"]
SWMCD = MAPPINGS["statewide_medicaid"]
BAD = REPO / "fixtures" / "bad"


def refused(path: Path, spec=None) -> FileRefused:
    with pytest.raises(FileRefused) as info:
        read_file(path, spec or match_mapping(path.name, MAPPINGS))
    return info.value


# --- file-level refusals ------------------------------------------------------------------------


def test_encoding_refused_with_line_of_first_bad_byte() -> None:
    err = refused(BAD / "encoding" / "ACME_ATTRIB_202608.csv")
    assert (err.rule, err.line_number) == ("encoding", 4)
    assert "line 4" in err.reason and "utf-8" in err.reason


def test_binary_refused() -> None:
    err = refused(BAD / "binary" / "ACME_ATTRIB_202608.csv")
    assert err.rule == "binary"


def test_empty_file_and_header_only_refused() -> None:
    assert refused(BAD / "empty" / "ACME_ATTRIB_202608.csv").rule == "empty"
    err = refused(BAD / "header_only" / "ACME_ATTRIB_202608.csv")
    # Intended change (issue 14): a file with records but no detail record has its own rule.
    assert err.rule == "no_detail_records" and err.reason.startswith("no detail records")


def test_missing_columns_named() -> None:
    err = refused(BAD / "missing_columns" / "ACME_ATTRIB_202608.csv")
    assert (err.rule, err.line_number) == ("missing_columns", 1)
    assert "['PCP_NPI']" in err.reason


def test_trailer_count_gives_both_numbers() -> None:
    err = refused(BAD / "trailer_count" / "SWMCD_ME_202608.txt")
    assert err.rule == "trailer_count"
    assert err.reason == "header says 7 detail records, the file has 5"


def test_hash_total_gives_both_numbers() -> None:
    err = refused(BAD / "hash_total" / "SWMCD_ME_202608.txt")
    assert err.rule == "hash_total"
    assert err.reason == "trailer hash total of risk_score is 12.1034, the detail records sum to 12.1033"


def test_missing_trailer_refused() -> None:
    err = refused(BAD / "truncated" / "SWMCD_ME_202608.txt")
    assert err.rule == "missing_trailer"
    assert "'TR'" in err.reason


def test_unreadable_month_refused() -> None:
    err = refused(BAD / "month" / "SWMCD_ME_202608.txt")
    assert (err.rule, err.line_number) == ("month", 1)


def test_header_month_must_agree_with_file_name(tmp_path: Path) -> None:
    good = (REPO / "fixtures" / "statewide_medicaid" / "SWMCD_ME_202608.txt").read_bytes()
    (tmp_path / "SWMCD_ME_202609.txt").write_bytes(good)
    err = refused(tmp_path / "SWMCD_ME_202609.txt", SWMCD)
    assert err.reason == "header reports 2026-08 but the file name says 2026-09"


def test_month_from_file_name_refused_when_absent(tmp_path: Path) -> None:
    src = REPO / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202608.csv"
    (tmp_path / "acme.csv").write_bytes(src.read_bytes())
    assert refused(tmp_path / "acme.csv", ACME).rule == "month"


def test_header_out_of_place_refused(tmp_path: Path) -> None:
    lines = (REPO / "fixtures" / "statewide_medicaid" / "SWMCD_ME_202608.txt").read_bytes().split(b"\n")
    lines[0], lines[1] = lines[1], lines[0]
    (tmp_path / "SWMCD_ME_202608.txt").write_bytes(b"\n".join(lines))
    err = refused(tmp_path / "SWMCD_ME_202608.txt", SWMCD)
    assert (err.rule, err.line_number) == ("record_order", 2)


def test_refusal_messages_carry_no_member_values() -> None:
    text = (BAD / "missing_columns" / "ACME_ATTRIB_202608.csv").read_text()
    err = refused(BAD / "missing_columns" / "ACME_ATTRIB_202608.csv")
    assert "M" + text.split('"M', 1)[1].split('"', 1)[0] not in str(err)


# --- structural rejects and line numbers -------------------------------------------------------


def test_ragged_lines_become_structural_rejects_with_line_numbers() -> None:
    result = read_file(BAD / "ragged" / "ACME_ATTRIB_202608.csv", ACME)
    rej = result.structural_rejects
    assert rej.schema == REJECT_SCHEMA
    assert rej.select("line_number", "rule", "reason").rows() == [
        (3, "field_count", "expected 36 fields, found 34"),
        (5, "quote", "unbalanced or misplaced quote"),
        (6, "field_count", "expected 36 fields, found 37"),
    ]
    assert result.rows.get_column("line_number").to_list() == [2, 4, 7, 8]
    assert result.records_read == result.rows.height + rej.get_column("line_number").n_unique() == 7


def test_fixed_width_long_line_and_unknown_record_type() -> None:
    result = read_file(BAD / "structure" / "SWMCD_ME_202608.txt", SWMCD)
    assert result.structural_rejects.select("line_number", "rule", "reason").rows() == [
        (3, "record_length", "expected 400 characters, found 408"),
        (5, "record_type", "record type is not one of HD, ME, TR"),
    ]
    assert result.rows.get_column("line_number").to_list() == [2, 4, 6]
    # the trailer counts all five detail records, rejected ones included
    assert (result.records_read, result.control.expected_records) == (5, 5)
    assert result.control.expected_hash == result.control.actual_hash == Decimal("12.1033")


def test_bom_and_lf_read_like_crlf() -> None:
    bom = read_file(BAD / "bom_lf" / "ACME_ATTRIB_202608.csv", ACME).rows
    crlf = read_file(REPO / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202608.csv", ACME).rows
    assert bom.height == 7
    cols = [c for c in bom.columns if c != "file_sha256"]
    assert bom.select(cols).equals(crlf.select(cols).head(7))


def test_trailing_blank_lines_and_interior_blank_lines_are_not_records(tmp_path: Path) -> None:
    src = (REPO / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202608.csv").read_bytes().split(b"\r\n")
    data = b"\r\n".join(src[:3] + [b"   "] + src[3:5]) + b"\r\n\r\n\r\n"
    path = tmp_path / "ACME_ATTRIB_202608.csv"
    path.write_bytes(data)
    result = read_file(path, ACME)
    assert result.rows.get_column("line_number").to_list() == [2, 3, 5, 6]
    assert result.records_read == 4 and result.structural_rejects.height == 0


# --- values that fail: kept, nulled, with an issue ---------------------------------------------


def test_bad_values_land_in_issues_without_the_value() -> None:
    rows = read_file(BAD / "bad_values" / "ACME_ATTRIB_202608.csv", ACME).rows
    flagged = rows.filter(pl.col(ISSUES_COLUMN).list.len() > 0)
    assert flagged.select("line_number", ISSUES_COLUMN).rows() == [
        (2, [{"field": "birth_date", "rule": "date_format", "reason": "birth_date: '%m/%d/%Y' date expected"}]),
        (3, [{"field": "gender", "rule": "code_not_in_map", "reason": "gender: code not in the mapping's code map"}]),
        (4, [{"field": "risk_score", "rule": "number_format", "reason": "risk_score: Float64 number expected"}]),
    ]
    assert flagged.select("birth_date", "gender", "risk_score").rows() == [
        (None, "male", rows["risk_score"][0]),
        (flagged["birth_date"][1], None, flagged["risk_score"][1]),
        (flagged["birth_date"][2], flagged["gender"][2], None),
    ]


def _tiny_spec(**field_overrides):
    fields = {"member_id": {"column": 1}, "payer_id": {"constant": "P"}, "contract_id": {"constant": "C"}}
    fields.update(field_overrides)
    return parse_mapping(
        {
            "source_id": "tiny",
            "file": {"pattern": r"T_(?P<yyyymm>\d{6})\.txt"},
            "format": {"kind": "delimited", "delimiter": "|"},
            "fields": fields,
            "identifier_systems": {"member_id": "urn:m", "payer_id": "urn:p", "contract_id": "urn:c"},
        }
    )


def test_dates_are_real_and_full_width(tmp_path: Path) -> None:
    spec = _tiny_spec(birth_date={"column": 2, "date": "YYYYMMDD"})
    path = tmp_path / "T_202608.txt"
    path.write_text("a|20260230\nb|2026011\nc|20240229\nd|\n")
    rows = read_file(path, spec).rows
    assert rows.get_column("birth_date").cast(pl.String).to_list() == [None, None, "2024-02-29", None]
    assert rows.get_column(ISSUES_COLUMN).list.len().to_list() == [1, 1, 0, 0]


def test_transforms_default_and_keep_unmapped(tmp_path: Path) -> None:
    spec = _tiny_spec(
        gender={"column": 2, "transforms": ["trim", "upper"], "default": "U", "map": {"M": "male", "U": "unknown"}},
        relationship={"column": 3, "map": {"18": "self"}, "unmapped": "keep"},
        provider_npi={"column": 4, "transforms": ["digits"]},
        phone={"column": 5, "transforms": ["strip_zeros"]},
    )
    path = tmp_path / "T_202608.txt"
    path.write_text("a| m |18|12-34|0042\nb||spouse| |000\n")
    rows = read_file(path, spec).rows
    assert rows.select("gender", "relationship", "provider_npi", "phone").rows() == [("male", "self", "1234", "42"), ("unknown", "spouse", None, None)]
    assert rows.get_column(ISSUES_COLUMN).list.len().to_list() == [0, 0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.lists(st.text(alphabet='ab,"x ', max_size=6), min_size=3, max_size=3), min_size=1, max_size=8), cut=st.integers(0, 7))
def test_quoted_csv_round_trips_and_broken_lines_are_never_lost(tmp_path: Path, cells, cut) -> None:
    """Properly quoted lines read back exactly; a line with a field removed is rejected, not dropped."""
    spec = _tiny_spec(given_name={"column": 2, "transforms": []}, family_name={"column": 3, "transforms": []})
    spec = spec.model_copy(update={"format": spec.format.model_copy(update={"delimiter": ","})})

    def q(v: str) -> str:
        return '"' + v.replace('"', '""') + '"'

    lines = [",".join(q(f"m{i}") if j == 0 else q(v) for j, v in enumerate(row)) for i, row in enumerate(cells)]
    broken = cut % len(lines)
    lines_bad = list(lines)
    # Drop the last field whole: cutting inside a quoted field would open a multi-line field.
    lines_bad[broken] = ",".join(q(f"m{broken}") if j == 0 else q(v) for j, v in enumerate(cells[broken][:-1]))
    path = tmp_path / "T_202608.txt"
    path.write_text("\n".join(lines) + "\n")
    rows = read_file(path, spec).rows
    assert rows.select("given_name", "family_name").rows() == [tuple(v or None for v in r[1:]) for r in cells]
    if len(lines) > 2:
        path.write_text("\n".join(lines_bad) + "\n")
        res = read_file(path, spec)
        assert res.records_read == len(lines)
        assert res.structural_rejects.get_column("line_number").to_list() == [broken + 1]


# --- mapping match and hashing -------------------------------------------------------------------


def test_match_mapping() -> None:
    assert match_mapping("ACME_ATTRIB_202608.csv", MAPPINGS).source_id == "acme_commercial"  # type: ignore[union-attr]
    assert match_mapping("SWMCD_ME_202608.txt", MAPPINGS).source_id == "statewide_medicaid"  # type: ignore[union-attr]
    assert match_mapping("ACME_ATTRIB_202608.csv.pgp", MAPPINGS) is None
    twin = ACME.model_copy(update={"source_id": "acme_twin"})
    with pytest.raises(MappingConflict) as info:
        match_mapping("ACME_ATTRIB_202608.csv", {**MAPPINGS, "acme_twin": twin})
    assert info.value.source_ids == ["acme_commercial", "acme_twin"]


def test_sha256_file_and_given_digest_is_used() -> None:
    path = REPO / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202609.csv"
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    rows = read_file(path, ACME, sha256="f" * 64).rows
    assert rows.get_column("file_sha256").unique().to_list() == ["f" * 64]
