"""Issue 14: every real file read right. Reader-level tests per deliverable, on small files in
the three layout kinds (tests/edge_files.py); the user-facing runs are in test_read_run_inbox.py."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from edge_files import (
    ACME,
    CSV_COLUMNS,
    EDGE_CSV,
    EDGE_PIPE,
    PIPE_NAME,
    SWMCD,
    csv_file,
    csv_row,
    good_csv,
    good_pipe,
    pipe_detail,
    pipe_file,
    swmcd_header_only,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atr_pipeline.canonical import ISSUES_COLUMN
from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import MappingError, parse_mapping
from atr_pipeline.layouts.write import render
from atr_pipeline.validate.rejects import check_reject_threshold, write_rejects_csv
from atr_pipeline.validate.rules import ValidationResult, validate_rows

SLICES = (1, 7, 64, 4096, 1 << 30)
CSV_NAME = "EDGE_CSV_202609.csv"


def write(tmp_path: Path, name: str, data: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def refusal(path: Path, spec, chunk_bytes: int = 1 << 30) -> FileRefused:
    with pytest.raises(FileRefused) as info:
        read_file(path, spec, chunk_bytes=chunk_bytes)
    return info.value


def issues(rows: pl.DataFrame) -> list[tuple[int, str, str]]:
    out = []
    for line, items in rows.select("line_number", ISSUES_COLUMN).iter_rows():
        out += [(line, i["field"], i["rule"]) for i in items]
    return out


# --- 1. multi-line quoted fields -----------------------------------------------------------------


def test_multiline_address_is_one_record_numbered_by_its_first_line(tmp_path: Path) -> None:
    rows = [csv_row("E00001"), csv_row("E00002", addr="12 Oak St\r\nApt 4\r\n\r\nRear door"), csv_row("E00003")]
    path = write(tmp_path, CSV_NAME, csv_file(rows))
    for size in SLICES:
        res = read_file(path, EDGE_CSV, chunk_bytes=size)
        assert res.records_read == 3 and res.structural_rejects.height == 0
        assert res.rows["line_number"].to_list() == [2, 3, 7]  # physical lines: 3-6 are one record
        assert res.rows["address_line1"].to_list()[1] == "12 Oak St\nApt 4\n\nRear door"
        assert res.rows["member_id"].to_list() == ["E00001", "E00002", "E00003"]


def test_multiline_record_in_a_record_type_file(tmp_path: Path) -> None:
    details = [pipe_detail("P1"), pipe_detail("P2", addr='"Unit 5\nBldg ""B"""'), pipe_detail("P3")]
    path = write(tmp_path, PIPE_NAME, pipe_file(details), "latin-1")
    for size in SLICES:
        res = read_file(path, EDGE_PIPE, chunk_bytes=size)
        assert res.rows["member_id"].to_list() == ["P1", "P2", "P3"]
        assert res.rows["line_number"].to_list() == [2, 3, 5]
        assert res.rows["address_line1"][1] == 'Unit 5\nBldg "B"'
        assert res.control.expected_records == 3


def test_unbalanced_quote_at_end_of_file_refuses_with_its_line(tmp_path: Path) -> None:
    rows = [csv_row("E00001"), csv_row("E00002"), csv_row("E00003").removesuffix('"')]  # last field never closed
    path = write(tmp_path, CSV_NAME, csv_file(rows))
    for size in SLICES:
        err = refusal(path, EDGE_CSV, size)
        assert (err.rule, err.line_number) == ("unbalanced_quote", 4)
        assert "line 4" in err.reason


def test_a_quote_open_for_too_many_lines_refuses_and_a_stray_quote_stays_alone(tmp_path: Path) -> None:
    long_spec = EDGE_CSV.model_copy(update={"format": EDGE_CSV.format.model_copy(update={"max_record_lines": 3})})
    rows = [csv_row("E00001", addr="a\nb\nc\nd"), csv_row("E00002")]
    err = refusal(write(tmp_path, CSV_NAME, csv_file(rows)), long_spec)
    assert (err.rule, err.line_number) == ("unbalanced_quote", 2)
    # A quote inside an unquoted field opens nothing: that one line is a structural reject.
    stray = csv_file([csv_row("E00001"), csv_row("E00002").replace('"Roe"', 'Ro"e'), csv_row("E00003")])
    res = read_file(write(tmp_path, CSV_NAME, stray), EDGE_CSV)
    assert res.structural_rejects.select("line_number", "rule").rows() == [(3, "quote")]
    assert res.rows["line_number"].to_list() == [2, 4]


def test_rejects_csv_carries_the_whole_multiline_record(tmp_path: Path) -> None:
    rows = [csv_row("E00001"), csv_row("E00002", addr="9 Pine\nSuite 1").replace('"01/30/1979"', '"02/30/1979"')]
    path = write(tmp_path, CSV_NAME, csv_file(rows))
    res = read_file(path, EDGE_CSV)
    val = validate_rows(res.rows, EDGE_CSV, today=res.reference_date)
    assert val.rejects.select("line_number", "rule").rows() == [(3, "date_format")]
    out = tmp_path / "rejects.csv"
    write_rejects_csv(val.rejects, out, source_file=path, spec=EDGE_CSV)
    record = next(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert record["raw_record"] == csv_row("E00002", addr="9 Pine\nSuite 1").replace('"01/30/1979"', '"02/30/1979"')


_TEXT = st.text(alphabet=st.sampled_from(list('ab ,|"\n') + ["é", "ß"]), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(_TEXT, _TEXT, _TEXT), min_size=1, max_size=12), delimiter=st.sampled_from([",", "|"]))
def test_writer_and_reader_round_trip_quoted_line_breaks_at_every_slice_size(tmp_path: Path, values, delimiter: str) -> None:
    """Random text with line breaks, delimiters and quotes: layouts/write renders it (quoting
    what needs it), the reader gives back exactly the values whatever the slice size."""
    spec = parse_mapping({
        "source_id": "rt", "file": {"pattern": r"RT_(?P<yyyymm>\d{6})\.csv"},
        "format": {"kind": "delimited", "delimiter": delimiter, "quote": '"', "header_row": True},
        "fields": {"payer_id": {"constant": "P"}, "contract_id": {"constant": "C"},
                   "member_id": {"column": "ID", "transforms": []}, "family_name": {"column": "LAST", "transforms": []},
                   "given_name": {"column": "FIRST", "transforms": []}, "address_line1": {"column": "ADDR", "transforms": []}},
        "identifier_systems": {"member_id": "urn:m", "payer_id": "urn:p", "contract_id": "urn:c"},
    })  # fmt: skip
    rows = pl.DataFrame(
        {"member_id": [f"M{i}" for i in range(len(values))], "family_name": [v[0] for v in values],
         "given_name": [v[1] for v in values], "address_line1": [v[2] for v in values], "payer_id": "P", "contract_id": "C"}
    )  # fmt: skip
    path = tmp_path / "RT_202609.csv"
    path.write_bytes(render(spec, rows, date(2026, 9, 1)))
    expected = [tuple(v or None for v in row) for row in values]
    for size in SLICES:
        res = read_file(path, spec, chunk_bytes=size)
        assert res.structural_rejects.height == 0
        assert res.rows.select("family_name", "given_name", "address_line1").rows() == expected
        assert res.rows["member_id"].to_list() == rows["member_id"].to_list()


# --- 2. encodings ------------------------------------------------------------------------------


def test_utf8_bytes_on_a_latin1_feed_are_refused_naming_the_first_line(tmp_path: Path) -> None:
    details = [pipe_detail("P1"), pipe_detail("P2", given="Björn"), pipe_detail("P3")]
    path = write(tmp_path, PIPE_NAME, pipe_file(details), "utf-8")
    for size in SLICES:
        err = refusal(path, EDGE_PIPE, size)
        assert (err.rule, err.line_number) == ("encoding_mismatch", 3)
        assert "Björn" not in str(err) and "detect_encoding" in err.reason


def test_detect_encoding_reads_utf8_on_a_latin1_feed(tmp_path: Path) -> None:
    spec = EDGE_PIPE.model_copy(update={"file": EDGE_PIPE.file.model_copy(update={"detect_encoding": True})})
    path = write(tmp_path, PIPE_NAME, pipe_file([pipe_detail("P1", given="Björn"), pipe_detail("P2", family="Müller")]), "utf-8")
    res = read_file(path, spec)
    assert res.rows["given_name"].to_list() == ["Björn", "Jane"]
    assert res.rows["family_name"].to_list() == ["Doe", "Müller"]
    # Real latin-1 bytes on the same feed read as declared.
    path = write(tmp_path, PIPE_NAME, pipe_file([pipe_detail("P1", given="Björn")]), "latin-1")
    assert read_file(path, spec).rows["given_name"].to_list() == ["Björn"]
    assert read_file(path, EDGE_PIPE).rows["given_name"].to_list() == ["Björn"]


def test_c0_and_c1_controls_reject_the_row_not_the_file(tmp_path: Path) -> None:
    # latin-1 byte 0x85 is U+0085 (NEL, a C1 control): what UTF-8 "Ã…" read as latin-1 leaves.
    details = [pipe_detail("P1"), pipe_detail("P2", given="Bj\x85rn"), pipe_detail("P3", addr="1 Main\x01St"), pipe_detail("P4")]
    path = write(tmp_path, PIPE_NAME, pipe_file(details), "latin-1")
    for size in SLICES:
        res = read_file(path, EDGE_PIPE, chunk_bytes=size)
        assert issues(res.rows) == [(3, "given_name", "control_characters"), (4, "address_line1", "control_characters")]
    val = validate_rows(res.rows, EDGE_PIPE, today=res.reference_date)
    assert val.rows_rejected == 2 and val.counts_by_rule == {"control_characters": 2}


def test_cp1252_and_utf16_with_bom_are_supported(tmp_path: Path) -> None:
    text = csv_file([csv_row("E1", family="O’Brien", given="Zoë", addr="“Rear” €5 St")])
    cp = EDGE_CSV.model_copy(update={"file": EDGE_CSV.file.model_copy(update={"encoding": "cp1252"})})
    res = read_file(write(tmp_path, CSV_NAME, text, "cp1252"), cp)
    assert res.rows.select("family_name", "given_name", "address_line1").rows() == [("O’Brien", "Zoë", "“Rear” €5 St")]
    u16 = EDGE_CSV.model_copy(update={"file": EDGE_CSV.file.model_copy(update={"encoding": "utf-16"})})
    for data in (text.encode("utf-16"), b"\xfe\xff" + text.encode("utf-16-be")):
        res = read_file(write(tmp_path, CSV_NAME, data), u16)
        assert res.rows.select("family_name", "given_name", "address_line1").rows() == [("O’Brien", "Zoë", "“Rear” €5 St")]


# --- 3. binary, empty, header-only -----------------------------------------------------------------

BINARY_NO_NUL = bytes((i * 37 + 11) % 255 + 1 for i in range(3000))  # control bytes, no NUL


@pytest.mark.parametrize(
    ("spec", "name", "header_only"),
    [(EDGE_CSV, CSV_NAME, csv_file([])), (EDGE_PIPE, PIPE_NAME, pipe_file([])), (SWMCD, "SWMCD_ME_202611.txt", swmcd_header_only())],
    ids=["csv_header_row", "pipe_record_types", "fixed_width"],
)
def test_binary_empty_and_header_only_have_their_own_rules(tmp_path: Path, spec, name: str, header_only: str) -> None:
    cases = {
        b"": "empty",
        b"\r\n  \n": "empty",
        b"PK\x03\x04\x14\x00\x00\x00" + bytes(range(256)): "binary",
        BINARY_NO_NUL: "binary",
        header_only.encode(spec.file.encoding): "no_detail_records",
    }
    for data, rule in cases.items():
        for size in (1, 64, 1 << 30):
            assert refusal(write(tmp_path, name, data), spec, size).rule == rule


# --- 4. month from the header when the name has none ------------------------------------------------


def test_month_from_header_when_the_name_holds_a_date_but_no_month(tmp_path: Path) -> None:
    assert EDGE_PIPE.month_from_name(PIPE_NAME) is None  # was KeyError: 'year'
    res = read_file(write(tmp_path, PIPE_NAME, good_pipe(), "latin-1"), EDGE_PIPE)
    assert res.reporting_month == date(2026, 9, 1)
    assert set(res.rows["reporting_month"].to_list()) == {date(2026, 9, 1)}
    err = refusal(write(tmp_path, PIPE_NAME, pipe_file([pipe_detail("P1")], period="2026XX"), "latin-1"), EDGE_PIPE)
    assert err.rule == "month"


# --- 5. mapping format ------------------------------------------------------------------------------


def test_null_code_map_target_maps_to_empty(tmp_path: Path) -> None:
    res = read_file(write(tmp_path, PIPE_NAME, pipe_file([pipe_detail("P1"), pipe_detail("P2", end="20261231")]), "latin-1"), EDGE_PIPE)
    assert res.rows["attribution_end"].to_list() == [None, date(2026, 12, 31)]
    assert issues(res.rows) == []


def test_implied_decimals(tmp_path: Path) -> None:
    details = [pipe_detail("P1", risk="0012345"), pipe_detail("P2", risk="-0000500"), pipe_detail("P3", risk="1.2345")]
    res = read_file(write(tmp_path, PIPE_NAME, pipe_file(details, risk_hash="25190", risk_sum="1.1845"), "latin-1"), EDGE_PIPE)
    assert res.rows["risk_score"].to_list() == [1.2345, -0.05, None]
    assert issues(res.rows) == [(4, "risk_score", "number_format")]


def test_header_fields_feed_row_values(tmp_path: Path) -> None:
    res = read_file(write(tmp_path, PIPE_NAME, pipe_file([pipe_detail("P1")], payer=" acme9 "), "latin-1"), EDGE_PIPE)
    assert res.rows["payer_id"].to_list() == ["ACME9"]
    # A header value goes through the field's format: one that fails refuses the file (every
    # row would carry it), naming the header field and the canonical field.
    from atr_pipeline.layouts.spec import FieldSpec

    dated = EDGE_PIPE.model_copy(update={"fields": {**EDGE_PIPE.fields, "contract_start": FieldSpec(record_field="header.created", date="MM/DD/YYYY")}})
    err = refusal(write(tmp_path, PIPE_NAME, pipe_file([pipe_detail("P1")]), "latin-1"), dated)
    assert (err.rule, err.reason) == ("record_field", "header field 'created' for contract_start: '%m/%d/%Y' date expected")
    dated = dated.model_copy(update={"fields": {**EDGE_PIPE.fields, "contract_start": FieldSpec(record_field="header.created", date="YYYYMMDD")}})
    assert read_file(write(tmp_path, PIPE_NAME, pipe_file([pipe_detail("P1")]), "latin-1"), dated).rows["contract_start"].to_list() == [date(2026, 9, 15)]


def test_every_control_check_is_applied(tmp_path: Path) -> None:
    details = [pipe_detail("P1"), pipe_detail("P2")]
    ok = read_file(write(tmp_path, PIPE_NAME, pipe_file(details), "latin-1"), EDGE_PIPE)
    assert ok.control.expected_records == 2
    wrong = {
        "header_count": ({"header_count": 3}, "trailer_count", "header says 3 detail records, the file has 2"),
        "trailer_count": ({"trailer_count": 1}, "trailer_count", "trailer says 1 detail records, the file has 2"),
        "hash": ({"risk_hash": "24691"}, "hash_total", "trailer hash total of risk_score is 2.4691, the detail records sum to 2.4690"),
        "sum": ({"risk_sum": "2.4680"}, "control_sum", "trailer sum of risk_score is 2.4680, the detail records sum to 2.4690"),
    }
    for kwargs, rule, reason in wrong.values():
        err = refusal(write(tmp_path, PIPE_NAME, pipe_file(details, **kwargs), "latin-1"), EDGE_PIPE)
        assert (err.rule, err.reason) == (rule, reason)


def test_optional_column_may_be_absent_but_required_ones_may_not(tmp_path: Path) -> None:
    without_phone = [c for c in CSV_COLUMNS if c != "PHONE"]
    res = read_file(write(tmp_path, CSV_NAME, csv_file([csv_row("E1", columns=without_phone)], columns=without_phone)), EDGE_CSV)
    assert res.rows["phone"].to_list() == [None] and res.structural_rejects.height == 0
    without_city = [c for c in CSV_COLUMNS if c != "CITY"]
    err = refusal(write(tmp_path, CSV_NAME, csv_file([csv_row("E1", columns=without_city)], columns=without_city)), EDGE_CSV)
    assert (err.rule, err.reason) == ("missing_columns", "header row lacks column(s) ['CITY']")


def test_reference_date_is_the_files_own_date(tmp_path: Path) -> None:
    res = read_file(write(tmp_path, PIPE_NAME, good_pipe(), "latin-1"), EDGE_PIPE)
    assert res.reference_date == date(2026, 9, 15)  # header creation date
    res = read_file(write(tmp_path, CSV_NAME, good_csv()), EDGE_CSV)
    assert res.reference_date == date(2026, 9, 30)  # no date field: the reporting month's end
    born = csv_file([csv_row("E1").replace('"01/30/1979"', '"10/02/2026"')])
    res = read_file(write(tmp_path, CSV_NAME, born), EDGE_CSV)
    # Born after the file's date: rejected today and on any later re-run alike.
    assert validate_rows(res.rows, EDGE_CSV, today=res.reference_date).counts_by_rule == {"date_in_future": 1}


def test_mapping_errors_for_the_new_keys_name_the_key() -> None:
    base = {
        "source_id": "m", "file": {"pattern": r"M_(?P<yyyymm>\d{6})\.txt"}, "format": {"kind": "delimited", "delimiter": "|"},
        "identifier_systems": {"member_id": "urn:m", "payer_id": "urn:p", "contract_id": "urn:c"},
    }  # fmt: skip
    bad = {
        "payer_id": {"record_field": "header.payer"},
        "member_id": {"column": 1, "required": False},
        "contract_id": {"column": 2},
        "family_name": {"column": 3, "implied_decimals": 2},
    }
    with pytest.raises(MappingError) as info:
        parse_mapping({**base, "fields": bad})
    text = str(info.value)
    assert "record_field" in text or "required" in text or "implied_decimals" in text
    ok = parse_mapping({**base, "fields": {"payer_id": {"constant": "P"}, "member_id": {"column": 1}, "contract_id": {"column": 2},
                                           "gender": {"column": 3, "map": {"X": None, "F": "female"}}}})  # fmt: skip
    assert ok.fields["gender"].map == {"X": None, "F": "female"}


# --- 6. reject threshold with a minimum ------------------------------------------------------------


def _result(read: int, rejected: int) -> ValidationResult:
    empty = pl.DataFrame()
    return ValidationResult(empty, empty, read, read - rejected, rejected, {}, {})


def test_threshold_refuses_only_above_both_share_and_minimum() -> None:
    check_reject_threshold(_result(40, 3), file_name="f", threshold=0.05, minimum=3)  # 7.5% but only 3: kept
    with pytest.raises(FileRefused) as info:
        check_reject_threshold(_result(40, 4), file_name="f", threshold=0.05, minimum=3)
    assert info.value.reason == "4 of 40 rows rejected (10.0%), above the 5.0% threshold and the minimum of 3 rows"
    check_reject_threshold(_result(100, 4), file_name="f", threshold=0.05, minimum=3)  # 4 > 3 but 4%: kept
    with pytest.raises(FileRefused):  # nothing accepted: refused whatever the minimum
        check_reject_threshold(_result(2, 2), file_name="f", threshold=0.05, minimum=3)
    with pytest.raises(FileRefused):  # default minimum 0: the share alone, as before
        check_reject_threshold(_result(40, 3), file_name="f", threshold=0.05)


# --- 7. rejects CSV decoded with the mapping's encoding ----------------------------------------------


def test_rejects_csv_raw_record_uses_the_mapping_encoding(tmp_path: Path) -> None:
    details = [pipe_detail("P1", family="Müller", given="Zoë"), pipe_detail("P2", family="Jiménez").replace("19800412", "19801345")]
    path = write(tmp_path, PIPE_NAME, pipe_file(details), "latin-1")
    res = read_file(path, EDGE_PIPE)
    val = validate_rows(res.rows, EDGE_PIPE, today=res.reference_date)
    out = tmp_path / "rejects.csv"
    write_rejects_csv(val.rejects, out, source_file=path, spec=EDGE_PIPE)
    record = next(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert record["line_number"] == "3" and record["rule"] == "date_format"
    assert record["raw_record"] == details[1] and "Jiménez" in record["raw_record"] and "\ufffd" not in record["raw_record"]


def test_fixed_width_positions_count_characters_in_utf8(tmp_path: Path) -> None:
    """docs/MAPPINGS.md: positions count characters, so a multi-byte name does not shift fields."""
    spec = SWMCD.model_copy(update={"file": SWMCD.file.model_copy(update={"encoding": "utf-8"})})
    src = (Path(__file__).resolve().parents[1] / "fixtures/statewide_medicaid/SWMCD_ME_202608.txt").read_text("latin-1")
    lines = src.split("\n")
    lines[1] = lines[1][:27] + "Ñúñez".ljust(25) + lines[1][52:]
    res = read_file(write(tmp_path, "SWMCD_ME_202608.txt", "\n".join(lines), "utf-8"), spec)
    assert res.rows["family_name"][0] == "Ñúñez"
    assert res.rows["given_name"][0] == read_file(write(tmp_path, "SWMCD_ME_202608.txt", src, "latin-1"), SWMCD).rows["given_name"][0]
    assert ACME.file.encoding == "utf-8"


@pytest.mark.parametrize("spec", [EDGE_PIPE, EDGE_CSV], ids=["pipe_record_types", "csv_header_row"])
def test_synthetic_files_in_the_edge_layouts_read_back_clean(tmp_path: Path, spec) -> None:
    """`atr fixtures` honours the new keys: control checks, header record fields, the reference
    date field and implied decimals, so a generated file reads with no reject and no issue."""
    from atr_pipeline.synthetic import write_synthetic

    path = write_synthetic(spec, members=300, month=date(2026, 9, 1), out_dir=tmp_path, seed=5)
    res = read_file(path, spec, chunk_bytes=4096)
    assert res.structural_rejects.height == 0 and issues(res.rows) == []
    assert res.rows["payer_id"].null_count() == 0
    if spec is EDGE_PIPE:
        assert res.rows["risk_score"].null_count() == 0
        assert res.reference_date == date(2026, 9, 1) and res.control.expected_records == res.records_read


def test_an_open_record_never_holds_more_than_max_record_lines() -> None:
    """Bounded memory: a stray opening quote early in a long file is carried across slices for at
    most ``max_record_lines`` lines, then the rest of the file is dropped unread until the refusal."""
    from atr_pipeline.layouts.multiline import BLANK, LINE, LINE_NO, RecordJoiner

    joiner = RecordJoiner(",", '"', 5, "f.csv")
    held = []
    for first in range(1, 2001, 4):  # 500 slices of 4 lines; line 2 opens a quote that never closes
        texts = [f'a,"open{n}' if n == 2 else f"a,b{n}" for n in range(first, first + 4)]
        frame = pl.DataFrame({LINE_NO: list(range(first, first + 4)), LINE: texts, BLANK: [False] * 4})
        out = joiner.join(frame)
        held.append(len(joiner.open.parts) if joiner.open else 0)
        if first > 8:
            assert out.height == 0
    assert max(held) <= 5
    with pytest.raises(FileRefused) as info:
        joiner.finish()
    assert (info.value.rule, info.value.line_number) == ("unbalanced_quote", 2)
