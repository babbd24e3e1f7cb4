"""Identifier rules: NPI, TIN, MBI, member-style ids.

Each rule exists twice with the same answers (a property test holds them together):
a scalar ``*_is_valid(value) -> bool`` for one value, and a vectorised ``*_valid_expr(col)``
polars expression for a whole column (``True`` valid, ``False`` invalid, ``null`` for a null
input, so "when present" rules are ``expr.not_()`` filled with ``False``).

Canonical forms (what ``layouts/`` must deliver; mappings normalise with ``transforms``):
- NPI: exactly 10 ASCII digits whose Luhn check digit is right once the ISO prefix ``80840``
  is put in front (CMS NPI standard; same as ``stdnum.luhn.is_valid("80840" + npi)``).
- TIN (EIN, SSN or ITIN used as a tax id): exactly 9 ASCII digits, not all zeros. A hyphenated
  ``NN-NNNNNNN`` is refused here on purpose: canonical rows store digits only, so the mapping
  applies the ``digits`` transform; refusing keeps one spelling per provider in history/.
- MBI: CMS format, 11 characters, no dashes (dashes are for printing only), upper case:
  pos 1 digit 1-9; pos 2, 5, 8, 9 a letter from A-Z without S, L, O, I, B, Z;
  pos 3, 6 such a letter or a digit; pos 4, 7, 10, 11 a digit.
- Member / Medicaid / subscriber ids: not empty or blank and no control characters (C0, DEL,
  C1), which break fixed-width files, CSV exports and FHIR string rules.

Nothing here raises on bad input, and nothing logs a value.
"""

from __future__ import annotations

import re

import polars as pl
from stdnum import luhn

NPI_PREFIX = "80840"
# Sum the Luhn algorithm gives the "80840" prefix when it sits in front of a 10-digit NPI
# (digits 0,8,0,4,8 from the right at positions 11..15; the 4 and the second 0 are doubled).
_NPI_PREFIX_LUHN_SUM = 24

_MBI_LETTER = "ACDEFGHJKMNPQRTUVWXY"  # A-Z without B, I, L, O, S, Z
_L = f"[{_MBI_LETTER}]"
_A = f"[{_MBI_LETTER}0-9]"
MBI_PATTERN = f"^[1-9]{_L}{_A}[0-9]{_L}{_A}[0-9]{_L}{_L}[0-9][0-9]$"
NPI_PATTERN = r"^[0-9]{10}$"
TIN_PATTERN = r"^[0-9]{9}$"
# C0 controls, DEL and C1 controls. Tab counts: it is a delimiter in many legacy layouts.
CONTROL_PATTERN = r"[\x00-\x1f\x7f-\x9f]"

_MBI_RE = re.compile(MBI_PATTERN)
_NPI_RE = re.compile(NPI_PATTERN)
_TIN_RE = re.compile(TIN_PATTERN)
_CONTROL_RE = re.compile(CONTROL_PATTERN)


# --- scalar rules ---------------------------------------------------------------------------


def npi_format_is_valid(value: str | None) -> bool:
    """Exactly 10 ASCII digits."""
    return isinstance(value, str) and _NPI_RE.fullmatch(value) is not None


def npi_is_valid(value: str | None) -> bool:
    """10 digits and a correct Luhn check digit with the 80840 prefix."""
    return npi_format_is_valid(value) and luhn.is_valid(NPI_PREFIX + value)  # type: ignore[operator]


def tin_is_valid(value: str | None) -> bool:
    """9 ASCII digits, not 000000000."""
    return isinstance(value, str) and _TIN_RE.fullmatch(value) is not None and value != "000000000"


def mbi_is_valid(value: str | None) -> bool:
    """CMS Medicare Beneficiary Identifier format (11 characters, no dashes, upper case)."""
    return isinstance(value, str) and _MBI_RE.fullmatch(value) is not None


def has_control_characters(value: str | None) -> bool:
    return isinstance(value, str) and _CONTROL_RE.search(value) is not None


def member_id_is_valid(value: str | None) -> bool:
    """Not empty or blank, no control characters (also used for Medicaid and subscriber ids)."""
    return isinstance(value, str) and value.strip() != "" and not has_control_characters(value)


medicaid_id_is_valid = member_id_is_valid


# --- vectorised rules -----------------------------------------------------------------------


def npi_format_expr(col: str) -> pl.Expr:
    return pl.col(col).str.contains(NPI_PATTERN)


def npi_valid_expr(col: str) -> pl.Expr:
    """Vectorised ``npi_is_valid``: string slicing and integer arithmetic, no Python per row."""
    c = pl.col(col)
    total = pl.lit(_NPI_PREFIX_LUHN_SUM, dtype=pl.Int32)
    for i in range(10):
        d = c.str.slice(i, 1).cast(pl.Int32, strict=False)
        # From the right, the check digit (i=9) is position 1; even positions are doubled,
        # i.e. NPI digits at even indexes. Doubling then summing digits is 2d - 9 when d >= 5.
        if i % 2 == 0:
            d = d * 2 - pl.when(d >= 5).then(9).otherwise(0)
        total = total + d
    # Non-digits become null in the cast; the format test turns those rows into False.
    return pl.when(c.is_null()).then(None).otherwise(npi_format_expr(col) & (total % 10 == 0).fill_null(False))


def tin_valid_expr(col: str) -> pl.Expr:
    c = pl.col(col)
    return c.str.contains(TIN_PATTERN) & (c != "000000000")


def mbi_valid_expr(col: str) -> pl.Expr:
    return pl.col(col).str.contains(MBI_PATTERN)


def control_characters_expr(col: str) -> pl.Expr:
    return pl.col(col).str.contains(CONTROL_PATTERN)


def member_id_valid_expr(col: str) -> pl.Expr:
    c = pl.col(col)
    return (c.str.strip_chars() != "") & c.str.contains(CONTROL_PATTERN).not_()


medicaid_id_valid_expr = member_id_valid_expr
