"""Turn raw text columns into canonical fields, one polars expression per field.

In: a frame of raw string columns (one per mapped field, named ``raw:<field>``) and the
mapping's ``FieldSpec`` per canonical field. Out: a ``FieldPlan`` per field: the cleaned-text
expression, the canonical value expression and the ``Check``s (failure tests) that become
{field, rule, reason} entries of the row's ``_issues`` list.

Order per field: transforms (in the mapping's order), empty -> null, ``default`` when null,
then the code map, then the dtype (date format, number). ``constant`` is taken as the final
canonical value (dates in ISO form). A value that fails to convert becomes null and the row
carries an issue: ``date_format``, ``code_not_in_map`` or ``number_format``. Reasons name the
field and what was expected, never the value (it may be PHI).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from atr_pipeline.canonical import FIELD_BY_NAME, ISSUE_DTYPE, ISSUES_COLUMN
from atr_pipeline.layouts.spec import FieldSpec

ISO_DATE = "%Y-%m-%d"


def raw_name(field: str) -> str:
    return f"raw:{field}"


def _transform(expr: pl.Expr, name: str) -> pl.Expr:
    if name == "trim":
        return expr.str.strip_chars()
    if name == "upper":
        return expr.str.to_uppercase()
    if name == "lower":
        return expr.str.to_lowercase()
    if name == "title":
        return expr.str.to_titlecase()
    if name == "digits":
        return expr.str.replace_all(r"[^0-9]", "")
    if name == "strip_zeros":
        return expr.str.strip_chars_start("0")
    raise ValueError(f"unknown transform {name!r}")  # spec.py's Literal makes this unreachable


def cleaned(field: str, spec: FieldSpec) -> pl.Expr:
    """The field's text after transforms, empty -> null, default: what maps and dates see."""
    expr = pl.col(raw_name(field))
    for t in spec.transforms:
        expr = _transform(expr, t)
    expr = pl.when(expr == "").then(None).otherwise(expr)
    if spec.default is not None:
        expr = expr.fill_null(pl.lit(spec.default))
    return expr


def _fixed_digits_width(fmt: str) -> int | None:
    """Length of a date written with ``fmt`` when the format has no separators (e.g. %Y%m%d).

    chrono accepts '2026011' for %Y%m%d (one-digit day); a separator-less legacy date must
    have its full width, or we would read a truncated field as a real date.
    """
    sample = date(2000, 12, 31).strftime(fmt)
    return len(sample) if sample.isdigit() else None


def parse_date(text: pl.Expr, fmt: str) -> pl.Expr:
    """Strictly real dates: 02/30 is null (chrono does not roll over), short digit runs are null."""
    parsed = text.str.to_date(fmt, strict=False)
    ok = parsed.is_not_null()
    width = _fixed_digits_width(fmt)
    if width is not None:
        ok = ok & (text.str.len_chars() == width)
    if "%Y" in fmt:
        ok = ok & (parsed.dt.year() >= 1000)  # %Y means a 4-digit year; '26' is not year 0026
    return pl.when(ok).then(parsed)


def text_name(field: str) -> str:
    return f"text:{field}"


@dataclass(frozen=True)
class Check:
    """A per-row failure test of one field; true means the row gets this issue."""

    field: str
    rule: str
    reason: str
    failed: pl.Expr


@dataclass(frozen=True)
class FieldPlan:
    """Two stages so each cleaned text is computed once: ``text`` from the raw column, then
    ``value`` and ``checks`` from the materialised ``text_name(field)`` column."""

    field: str
    text: pl.Expr | None
    value: pl.Expr
    checks: list[Check]


def field_plan(field: str, spec: FieldSpec) -> FieldPlan:
    dtype = FIELD_BY_NAME[field].dtype
    if spec.record_field is not None:
        # Known only once the header/trailer record is read: the reader sets it on every row
        # at the end (``record_field_values``); until then the column is empty.
        return FieldPlan(field, None, pl.lit(None, dtype=dtype).alias(field), [])
    if spec.constant is not None:
        if dtype == pl.Date():
            return FieldPlan(field, None, pl.lit(date.fromisoformat(spec.constant)).alias(field), [])
        return FieldPlan(field, None, pl.lit(spec.constant).cast(dtype).alias(field), [])

    text = pl.col(text_name(field))
    checks: list[Check] = []
    if spec.map is not None:
        keys = list(spec.map)
        values = [spec.map[k] for k in keys]
        in_map = text.is_in(keys)
        mapped = text.replace_strict(keys, values, default=None, return_dtype=pl.String())
        if spec.unmapped == "reject":
            checks.append(Check(field, "code_not_in_map", f"{field}: code not in the mapping's code map", text.is_not_null() & in_map.not_()))
            text = mapped
        else:
            text = pl.when(in_map).then(mapped).otherwise(text)

    if dtype == pl.Date():
        fmt = spec.strftime or ISO_DATE
        value = parse_date(text, fmt)
        checks.append(Check(field, "date_format", f"{field}: '{fmt}' date expected", text.is_not_null() & value.is_null()))
    elif dtype == pl.String():
        value = text
    elif spec.implied_decimals is not None:
        # COBOL 9(3)V9(4): an optional sign and digits only; the point is implied.
        # The point is put back in the text and the text parsed, so 0012345 (V9(4)) is exactly
        # the float a file writing 1.2345 would give (dividing would round differently).
        n = spec.implied_decimals
        ok = pl.when(text.str.contains(r"^[+-]?[0-9]{1,18}$")).then(text)
        body = ok.str.extract(r"([0-9]+)$", 1).str.zfill(n + 1)
        point = pl.concat_str(ok.str.extract(r"^([+-]?)", 1), body.str.head(-n) if n else body, pl.lit("." if n else ""), body.str.tail(n) if n else pl.lit(""))
        value = point.cast(pl.Float64, strict=False).cast(dtype)
        checks.append(
            Check(field, "number_format", f"{field}: digits with {spec.implied_decimals} implied decimals expected", text.is_not_null() & value.is_null())
        )
    else:
        value = text.cast(dtype, strict=False)
        checks.append(Check(field, "number_format", f"{field}: {dtype} number expected", text.is_not_null() & value.is_null()))
    if dtype == pl.String():
        checks.append(control_check(field, text))
    return FieldPlan(field, cleaned(field, spec).alias(text_name(field)), value.alias(field), checks)


# C0 controls other than TAB, LF and CR (a quoted field may hold line breaks), DEL and C1
# controls. They break fixed-width exports and FHIR's string rules, and a C1 control in a name
# is the mark of a wrong encoding (U+0085 from UTF-8 bytes read as latin-1).
CONTROL_IN_TEXT = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"


def control_check(field: str, text: pl.Expr) -> Check:
    """``control_characters`` on a text field's cleaned value. The reader evaluates it only in
    slices where some line holds such a character (``Check.rule`` tells it apart)."""
    return Check(field, "control_characters", f"{field}: contains control characters", text.str.contains(CONTROL_IN_TEXT))


def issues_expr(checks: list[Check], flag_names: list[str]) -> pl.Expr:
    """The ``_issues`` list from materialised boolean flag columns (one per check).

    Building lists of structs is slow per row, so callers evaluate this only on the (rare)
    rows where some flag is true and give every other row an empty list.
    """
    if not checks:
        return pl.lit([], dtype=ISSUE_DTYPE).alias(ISSUES_COLUMN)
    items = [
        pl.when(pl.col(flag)).then(pl.struct(field=pl.lit(c.field), rule=pl.lit(c.rule), reason=pl.lit(c.reason)))
        for c, flag in zip(checks, flag_names, strict=True)
    ]
    return pl.concat_list(items).list.drop_nulls().cast(ISSUE_DTYPE).alias(ISSUES_COLUMN)
