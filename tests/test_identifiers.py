"""Identifier rules: known values, and scalar == vectorised on generated values."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import luhn

from atr_pipeline.validate import identifiers as ids


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1234567893", True),  # CMS's worked example
        ("9941339100", True),  # ATR IG Practitioner example
        ("9941339108", False),  # ATR IG Group example: wrong check digit
        ("1234567890", False),
        ("123456789", False),  # 9 digits
        ("12345678930", False),  # 11 digits
        ("123456789X", False),
        (" 234567893", False),
        ("１２３４５６７８９３", False),  # full-width digits are not ASCII digits
        ("", False),
        (None, False),
    ],
)
def test_npi_known_values(value, expected):
    assert ids.npi_is_valid(value) is expected
    got = pl.DataFrame({"v": [value]}, schema={"v": pl.String}).select(ids.npi_valid_expr("v")).item()
    assert got is (None if value is None else expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1EG4TE5MK73", True),  # CMS's published example (printed 1EG4-TE5-MK73)
        ("1EG4-TE5-MK73", False),  # dashes are for print only
        ("1eg4te5mk73", False),  # lower case
        ("0EG4TE5MK73", False),  # position 1 must be 1-9
        ("1SG4TE5MK73", False),  # S is excluded at position 2
        ("1EZ4TE5MK73", False),  # Z excluded at position 3
        ("1E94TE5MK73", True),  # position 3 may be a digit
        ("1EG4T55MK73", True),  # position 6 may be a digit
        ("1EG4TE5M173", False),  # position 9 must be a letter
        ("1EG4TE5MKA3", False),  # position 10 must be a digit
        ("1EG4TE5MK7", False),  # 10 characters
        ("", False),
        (None, False),
    ],
)
def test_mbi_known_values(value, expected):
    assert ids.mbi_is_valid(value) is expected
    got = pl.DataFrame({"v": [value]}, schema={"v": pl.String}).select(ids.mbi_valid_expr("v")).item()
    assert got is (None if value is None else expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123456789", True),
        ("000000001", True),
        ("000000000", False),
        ("12-3456789", False),  # canonical rows hold digits only
        ("12345678", False),
        ("1234567890", False),
        ("12345678a", False),
        (None, False),
    ],
)
def test_tin_known_values(value, expected):
    assert ids.tin_is_valid(value) is expected
    got = pl.DataFrame({"v": [value]}, schema={"v": pl.String}).select(ids.tin_valid_expr("v")).item()
    assert got is (None if value is None else expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("M0001", True),
        ("ÄÖÜ-123", True),
        ("", False),
        ("   ", False),
        ("M\x000001", False),
        ("M0001\t", False),
        ("M0001\r", False),
        ("M\x7f1", False),
        ("M\x851", False),  # C1 control (NEL)
        (None, False),
    ],
)
def test_member_id_known_values(value, expected):
    assert ids.member_id_is_valid(value) is expected
    assert ids.medicaid_id_is_valid(value) is expected
    got = pl.DataFrame({"v": [value]}, schema={"v": pl.String}).select(ids.member_id_valid_expr("v")).item()
    assert got is (None if value is None else expected)


def _agree(values: list[str | None], scalar, expr_fn) -> None:
    df = pl.DataFrame({"v": values}, schema={"v": pl.String})
    vector = df.select(expr_fn("v")).to_series().to_list()
    for value, got in zip(values, vector, strict=True):
        if value is None:
            assert got is None
        else:
            assert got is scalar(value), repr(value)


_digits = st.text(alphabet="0123456789", min_size=8, max_size=12)
_mbi_like = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=10, max_size=12)
_any_text = st.text(max_size=14)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_digits, _any_text, st.none()), max_size=40))
def test_npi_scalar_and_vector_agree(values):
    _agree(values, ids.npi_is_valid, ids.npi_valid_expr)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789", min_size=9, max_size=9), min_size=1, max_size=40))
def test_npi_luhn_matches_stdnum(prefixes):
    # Append every possible check digit: exactly one must pass, the one stdnum computes.
    values = [p + str(d) for p in prefixes for d in range(10)]
    _agree(values, ids.npi_is_valid, ids.npi_valid_expr)
    for p in prefixes:
        passing = [d for d in range(10) if ids.npi_is_valid(p + str(d))]
        assert passing == [int(luhn.calc_check_digit(ids.NPI_PREFIX + p))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_mbi_like, _any_text, st.none()), max_size=40))
def test_mbi_scalar_and_vector_agree(values):
    _agree(values, ids.mbi_is_valid, ids.mbi_valid_expr)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_digits, _any_text, st.just("000000000"), st.none()), max_size=40))
def test_tin_scalar_and_vector_agree(values):
    _agree(values, ids.tin_is_valid, ids.tin_valid_expr)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_any_text, st.text(alphabet=" \t\x00\x1f\x7f\x85\xa0\u2003A", max_size=4), st.none()), max_size=40))
def test_member_id_scalar_and_vector_agree(values):
    _agree(values, ids.member_id_is_valid, ids.member_id_valid_expr)
