"""Reject outputs: the sender's CSV, OperationOutcomes, threshold refusal, failure table."""

from __future__ import annotations

import csv
import io
from datetime import date

import orjson
import polars as pl
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from test_validate_rules import SPEC, TODAY, frame

from atr_pipeline.canonical import REJECT_SCHEMA
from atr_pipeline.errors import FileRefused
from atr_pipeline.validate.rejects import (
    check_reject_threshold,
    failure_table,
    read_lines,
    rejects_to_operation_outcomes,
    write_rejects_csv,
)
from atr_pipeline.validate.rules import ValidationResult, validate_rows


def rejects(*records: tuple) -> pl.DataFrame:
    return pl.DataFrame(
        [("test_payer", "atr_202601.csv", *r) for r in records], schema=REJECT_SCHEMA, orient="row"
    )


SOURCE_LINES = [
    "member_id,family_name,gender",  # line 1: column names
    "M1,Doe,female",
    "=HYPERLINK(\"http://x\"),Roe,male",  # line 3: formula in the raw record
    "M3,O'Neil,X",
    "+M4,Smith,male",
]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "atr_202601.csv"
    # CRLF endings and a BOM, as payers send them; raw records come back without the CR.
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(SOURCE_LINES).encode("utf-8") + b"\r\n")
    return path


def read_csv_rows(path) -> list[list[str]]:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(data[3:].decode("utf-8"), newline="")))


def test_rejects_csv_columns_order_raw_records_and_injection(tmp_path, source):
    recs = rejects(
        (5, "member_id", "npi_format", "-dash first"),
        (3, "gender", "gender_code", "gender: not one of male, female, other, unknown"),
        (4, "gender", "gender_code", "gender: not one of male, female, other, unknown"),
        (3, "family_name", "required", "@family_name: required"),
        (4, None, "field_count", "expected 3 fields, found 4"),
    )
    out = tmp_path / "rejects" / "atr_202601.rejects.csv"
    assert write_rejects_csv(recs, out, source_file=source) == 5
    rows = read_csv_rows(out)
    assert rows[0] == ["file_name", "line_number", "field", "rule", "reason", "raw_record"]
    assert rows[1:] == [
        ["atr_202601.csv", "3", "family_name", "required", "'@family_name: required", "'=HYPERLINK(\"http://x\"),Roe,male"],
        ["atr_202601.csv", "3", "gender", "gender_code", "gender: not one of male, female, other, unknown", "'=HYPERLINK(\"http://x\"),Roe,male"],
        ["atr_202601.csv", "4", "", "field_count", "expected 3 fields, found 4", "M3,O'Neil,X"],
        ["atr_202601.csv", "4", "gender", "gender_code", "gender: not one of male, female, other, unknown", "M3,O'Neil,X"],
        ["atr_202601.csv", "5", "member_id", "npi_format", "'-dash first", "'+M4,Smith,male"],
    ]
    # Only rejected lines are read back: line 2 (accepted) is nowhere in the file.
    assert "M1,Doe" not in out.read_text(encoding="utf-8-sig")


def test_rejects_csv_is_deterministic_and_without_source(tmp_path, source):
    recs = rejects((4, "gender", "gender_code", "r"), (2, "state", "state_code", "s"))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_rejects_csv(recs, a, source_file=source)
    write_rejects_csv(recs.reverse(), b, source_file=source)
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.csv"
    assert write_rejects_csv(recs, c, source_file=None) == 2
    assert [r[5] for r in read_csv_rows(c)[1:]] == ["", ""]


def test_read_lines_other_encodings(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes("a\r\nJosé\nc".encode("utf-16"))
    assert read_lines(p, [2, 3], encoding="utf-16") == {2: "José", 3: "c"}
    p.write_bytes("a\nJos\xe9\n".encode("latin-1"))
    assert read_lines(p, [2], encoding="latin-1") == {2: "José"}
    assert read_lines(p, [2]) == {2: "Jos\ufffd"}  # undecodable bytes do not fail the report


def test_operation_outcomes_one_per_line_valid_r4_no_values():
    recs = rejects(
        (7, "provider_npi", "npi_check_digit", "provider_npi: check digit invalid (Luhn with 80840 prefix)"),
        (3, "member_id", "required", "member_id: required but empty"),
        (7, "member_id", "duplicate_row", "member entry repeats line 3 exactly; the first copy is kept"),
        (9, None, "quote", "unbalanced or misplaced quote"),
    )
    lines = rejects_to_operation_outcomes(recs, file_sha256="ab" * 32)
    assert len(lines) == 3
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    docs = [orjson.loads(line) for line in lines]
    for doc in docs:
        OperationOutcome.model_validate(doc)
    assert [d["issue"][0]["details"]["text"] for d in docs] == [
        "file atr_202601.csv, line 3, rule required",
        "file atr_202601.csv, line 7, rule duplicate_row",
        "file atr_202601.csv, line 9, rule quote",
    ]
    line7 = docs[1]["issue"]
    assert [(i["code"], i["expression"], i["severity"]) for i in line7] == [
        ("duplicate", ["member_id"], "error"),
        ("value", ["provider_npi"], "error"),
    ]
    assert docs[0]["issue"][0]["code"] == "required"
    assert docs[2]["issue"][0]["code"] == "structure"
    assert "expression" not in docs[2]["issue"][0]
    # keys sorted, ids stable and distinct
    assert lines[0].startswith(b'{"id":"')
    assert len({d["id"] for d in docs}) == 3
    assert rejects_to_operation_outcomes(recs.reverse(), file_sha256="ab" * 32) == lines
    assert rejects_to_operation_outcomes(recs, file_sha256="cd" * 32)[0] != lines[0]


def test_operation_outcomes_from_real_validation_carry_no_phi():
    res = validate_rows(frame({}, {"mbi": "1ZZ9ZZ9ZZ99", "member_id": "SECRET\x01"}), SPEC, today=TODAY)
    blob = b"".join(rejects_to_operation_outcomes(res.rejects))
    assert b"SECRET" not in blob and b"1ZZ9" not in blob
    assert blob.count(b'"resourceType":"OperationOutcome"') == 1


def _result(read: int, rejected: int) -> ValidationResult:
    empty = pl.DataFrame(schema=REJECT_SCHEMA)
    return ValidationResult(empty, empty, read, read - rejected, rejected, {}, {})


def test_threshold_refusal_message():
    with pytest.raises(FileRefused) as exc:
        check_reject_threshold(_result(40, 12), file_name="atr_202601.csv", threshold=0.05)
    assert exc.value.rule == "reject_threshold"
    assert exc.value.file_name == "atr_202601.csv"
    assert exc.value.reason == "12 of 40 rows rejected (30.0%), above the 5.0% threshold"


def test_threshold_boundary_and_structural_rejects():
    check_reject_threshold(_result(20, 1), file_name="f", threshold=0.05)  # exactly 5%: kept
    check_reject_threshold(_result(0, 0), file_name="f", threshold=0.0)
    with pytest.raises(FileRefused, match=r"2 of 21 rows rejected \(9\.5%\), above the 5\.0% threshold"):
        check_reject_threshold(_result(20, 1), file_name="f", threshold=0.05, structural_rejected=1)
    with pytest.raises(FileRefused, match=r"1 of 100 rows rejected \(1\.0%\), above the 0\.0% threshold"):
        check_reject_threshold(_result(100, 1), file_name="f", threshold=0.0)


def test_threshold_from_a_real_validation():
    res = validate_rows(frame({}, {"gender": "X"}, {}, {}), SPEC, today=TODAY)
    with pytest.raises(FileRefused, match=r"1 of 4 rows rejected \(25\.0%\)"):
        check_reject_threshold(res, file_name="atr_202601.csv", threshold=SPEC.reject_threshold)


def test_failure_table():
    recs = rejects(
        (2, "gender", "gender_code", "g"),
        (5, "gender", "gender_code", "g"),
        (3, "state", "state_code", "s"),
        (4, "provider_npi", "npi_format", "n"),
        (4, "provider_org_npi", "npi_format", "n"),
        (9, "gender", "gender_code", "g"),
        (12, None, "field_count", "f"),
    )
    assert failure_table(recs, max_examples=2) == [
        {"rule": "gender_code", "count": 3, "fields": ["gender"], "example_lines": [2, 5]},
        {"rule": "field_count", "count": 1, "fields": [], "example_lines": [12]},
        {"rule": "npi_format", "count": 1, "fields": ["provider_npi", "provider_org_npi"], "example_lines": [4]},
        {"rule": "state_code", "count": 1, "fields": ["state"], "example_lines": [3]},
    ]
    assert failure_table(rejects()) == []


def test_validation_date_is_not_wall_clock():
    # The same rows validated "today" and a year earlier differ only by the birth-date rule.
    df = frame({"birth_date": date(2025, 6, 1)})
    assert validate_rows(df, SPEC, today=date(2026, 1, 1)).rows_rejected == 0
    assert validate_rows(df, SPEC, today=date(2025, 1, 1)).counts_by_rule == {"date_in_future": 1}
