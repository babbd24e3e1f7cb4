"""Row rules: canonical rows in, accepted rows + reject records out.

In:  a DataFrame with exactly the canonical columns (``canonical.CANONICAL_SCHEMA``) and,
     optionally, ``_issues`` (problems the reader already found in each row).
Out: ``ValidationResult``: the rows that passed every rule (canonical columns, original order),
     one reject record per (row, problem) in ``canonical.REJECT_SCHEMA``, counts by rule, and
     warnings (rows that go forward but look wrong).
Refused: a frame that breaks the canonical contract (missing/extra columns, wrong dtypes, null
     or repeated line numbers) raises ``CanonicalContractError``: that is a reader bug, not bad
     input, so it must not be turned into rejects.

How: pandera (polars backend, on a DataFrame so data-level checks run) holds the schema
contract; every row rule is a boolean polars expression ("this row breaks the rule"), all
evaluated in one vectorised ``select``. Only failing rows are turned into records, so a clean
file costs one pass. Rule names, fields and reasons live in ``rule_table`` below and in
docs/BAD_INPUT.md. Reasons never contain a value (PHI): field name and what was expected.

Policies (see docs/BAD_INPUT.md for why):
- a member entry key (``canonical.MEMBER_ENTRY_KEY``) repeated with identical values keeps the
  first line and rejects later copies (``duplicate_row``); repeated with different values,
  every copy is rejected (``conflicting_duplicate``);
- attribution or coverage outside the contract period is a warning, not a reject;
- a rule on a field the reader already flagged for that row is not reported twice (a bad date
  format is reported as such, not also as "required").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from atr_pipeline import systems
from atr_pipeline.canonical import (
    CANONICAL_SCHEMA,
    ISSUE_DTYPE,
    ISSUES_COLUMN,
    LINEAGE_FIELDS,
    MEMBER_ENTRY_KEY,
    REJECT_SCHEMA,
    empty_rejects,
)
from atr_pipeline.errors import AtrError
from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.validate import identifiers as ids

Severity = Literal["error", "warning"]

# USPS state and territory codes: 50 states, DC, and AS GU MP PR VI UM plus the military
# "states" AA AE AP (APO/FPO addresses are real member addresses) and the freely associated
# states FM MH PW that USPS still delivers to.
US_STATES: frozenset[str] = frozenset(
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM "
    "NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC "
    "AS GU MP PR VI UM FM MH PW AA AE AP".split()
)
POSTAL_CODE_PATTERN = r"^[0-9]{5}(-?[0-9]{4})?$"  # ZIP, ZIP+4 with or without the hyphen
MAX_AGE_YEARS = 120

# Required: every one must be present (not null, not blank) or the row cannot become ATR FHIR.
REQUIRED_FIELDS: tuple[str, ...] = (
    "member_id",
    "payer_id",
    "contract_id",
    "plan_id",
    "provider_npi",
    "attribution_start",
    "gender",
)
# Ids that must carry no control characters when present (member_id's blank case is "required").
CONTROL_CHECKED_FIELDS: tuple[str, ...] = ("member_id", "subscriber_id", "medicaid_id", "mrn")
NPI_FIELDS: tuple[str, ...] = ("provider_npi", "provider_org_npi")
# Fields compared to tell an exact duplicate from a conflicting one: everything but lineage.
COMPARED_FIELDS: tuple[str, ...] = tuple(n for n in CANONICAL_SCHEMA if n not in LINEAGE_FIELDS)


class CanonicalContractError(AtrError):
    """The frame handed to validate_rows is not canonical rows (a reader bug, not bad input)."""


@dataclass(frozen=True)
class Rule:
    rule: str
    field: str
    reason: str
    failed: pl.Expr  # True where a row breaks the rule; null counts as "not broken"
    severity: Severity = "error"


@dataclass
class ValidationResult:
    accepted: pl.DataFrame  # canonical columns only, rows that passed every rule, original order
    rejects: pl.DataFrame  # canonical.REJECT_SCHEMA, one record per (row, problem)
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    counts_by_rule: dict[str, int]  # rejected rows per rule name, sorted by rule name
    warnings_by_rule: dict[str, int]  # accepted rows per warning rule, sorted by rule name
    # Warning records for accepted rows (REJECT_SCHEMA shape): they go forward, a steward looks.
    warnings: pl.DataFrame = field(default_factory=empty_rejects)


# --- expressions ----------------------------------------------------------------------------


def _present(name: str) -> pl.Expr:
    c = pl.col(name)
    if CANONICAL_SCHEMA[name] == pl.String:
        return c.is_not_null() & (c.str.strip_chars() != "")
    return c.is_not_null()


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def rule_table(*, today: date) -> list[Rule]:
    """Every row rule, in report order. ``today`` anchors the date plausibility rules."""
    rules: list[Rule] = []
    for name in REQUIRED_FIELDS:
        rules.append(Rule("required", name, f"{name}: required but empty", _present(name).not_()))
    rules.append(
        Rule(
            "required",
            "family_name",
            "family_name: family_name or given_name is required, both are empty",
            _present("family_name").not_() & _present("given_name").not_(),
        )
    )
    for name in NPI_FIELDS:
        present = _present(name)
        fmt_ok = ids.npi_format_expr(name)
        rules.append(Rule("npi_format", name, f"{name}: must be 10 digits", present & fmt_ok.not_()))
        rules.append(
            Rule(
                "npi_check_digit",
                name,
                f"{name}: check digit invalid (Luhn with 80840 prefix)",
                present & fmt_ok & ids.npi_valid_expr(name).not_(),
            )
        )
    rules.append(
        Rule(
            "tin_format",
            "provider_tin",
            "provider_tin: must be 9 digits without a hyphen, not all zeros",
            _present("provider_tin") & ids.tin_valid_expr("provider_tin").not_(),
        )
    )
    rules.append(
        Rule(
            "mbi_format",
            "mbi",
            "mbi: not a CMS MBI (11 characters, upper case, no dashes, letters and digits in the CMS positions)",
            _present("mbi") & ids.mbi_valid_expr("mbi").not_(),
        )
    )
    for name in CONTROL_CHECKED_FIELDS:
        rules.append(
            Rule("control_characters", name, f"{name}: contains control characters", ids.control_characters_expr(name))
        )

    # Dates. Period order breaks FHIR's per-1 invariant (start <= end), so it is a reject.
    birth, deceased = pl.col("birth_date"), pl.col("deceased_date")
    rules.append(Rule("date_in_future", "birth_date", "birth_date: after the validation date", birth > pl.lit(today)))
    rules.append(
        Rule(
            "birth_date_too_old",
            "birth_date",
            f"birth_date: more than {MAX_AGE_YEARS} years before the validation date",
            birth < pl.lit(_years_before(today, MAX_AGE_YEARS)),
        )
    )
    rules.append(Rule("date_in_future", "deceased_date", "deceased_date: after the validation date", deceased > pl.lit(today)))
    rules.append(Rule("deceased_before_birth", "deceased_date", "deceased_date: before birth_date", deceased < birth))
    for prefix in ("attribution", "coverage", "contract"):
        start, end = pl.col(f"{prefix}_start"), pl.col(f"{prefix}_end")
        rules.append(Rule("period_order", f"{prefix}_end", f"{prefix}_end: before {prefix}_start", end < start))

    # Codes
    code_sets: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("gender_code", "gender", systems.GENDERS),
        ("relationship_code", "relationship", systems.RELATIONSHIPS),
        ("product_type_code", "product_type", tuple(systems.PRODUCT_TYPES)),
    )
    for rule, name, allowed in code_sets:
        rules.append(
            Rule(
                rule,
                name,
                f"{name}: not one of {', '.join(allowed)}",
                _present(name) & pl.col(name).is_in(list(allowed)).not_(),
            )
        )
    rules.append(
        Rule(
            "state_code",
            "state",
            "state: not a USPS state or territory code (2 upper-case letters)",
            _present("state") & pl.col("state").is_in(sorted(US_STATES)).not_(),
        )
    )
    rules.append(
        Rule(
            "postal_code",
            "postal_code",
            "postal_code: not a ZIP (12345) or ZIP+4 (12345-6789 or 123456789)",
            _present("postal_code") & pl.col("postal_code").str.contains(POSTAL_CODE_PATTERN).not_(),
        )
    )

    # Contract period: warnings (docs/BAD_INPUT.md explains why not rejects).
    cs, ce = pl.col("contract_start"), pl.col("contract_end")
    rules.append(
        Rule(
            "attribution_outside_contract",
            "attribution_start",
            "attribution period not inside the contract period",
            (pl.col("attribution_start") < cs) | (pl.col("attribution_end") > ce),
            "warning",
        )
    )
    rules.append(
        Rule(
            "coverage_outside_contract",
            "coverage_start",
            "coverage period does not overlap the contract period",
            (pl.col("coverage_end") < cs) | (pl.col("coverage_start") > ce),
            "warning",
        )
    )
    return rules


# --- the canonical contract (pandera) -------------------------------------------------------


def _contract_schema() -> pa.DataFrameSchema:
    columns: dict[str, pa.Column] = {name: pa.Column(dtype, nullable=True) for name, dtype in CANONICAL_SCHEMA.items()}
    # line_number is how every reject points back at the file: one per row, never missing.
    columns["line_number"] = pa.Column(pl.Int64, nullable=False, unique=True)
    columns[ISSUES_COLUMN] = pa.Column(ISSUE_DTYPE, nullable=True, required=False)
    return pa.DataFrameSchema(columns, strict=True, ordered=False, name="canonical_rows")


_CONTRACT = _contract_schema()


def check_contract(rows: pl.DataFrame) -> None:
    """Raise CanonicalContractError naming the columns and checks that failed (never values)."""
    try:
        _CONTRACT.validate(rows, lazy=True)
    except (SchemaErrors, SchemaError) as exc:
        cases = getattr(exc, "failure_cases", None)
        problems: list[str] = []
        if isinstance(cases, pl.DataFrame) and {"column", "check", "failure_case", "index"} <= set(cases.columns):
            grouped = cases.group_by("column", "check", maintain_order=True).agg(
                pl.col("failure_case").cast(pl.String), pl.col("index").is_null().all().alias("schema_level")
            )
            for column, check, failed, schema_level in grouped.iter_rows():
                # Schema-level failure cases are column names and dtypes; data-level ones could be
                # values, so only their count is shown.
                what = ", ".join(sorted(set(failed))) if schema_level else f"{len(failed)} row(s)"
                problems.append(f"{column}: {check} ({what})")
        else:
            problems.append(type(exc).__name__)
        raise CanonicalContractError("rows break the canonical contract: " + "; ".join(problems)) from None


# --- validation -----------------------------------------------------------------------------

_INDEX = "_row"


def _issue_records(rows: pl.DataFrame) -> pl.DataFrame:
    if ISSUES_COLUMN not in rows.columns:
        return pl.DataFrame(schema={_INDEX: pl.UInt32, "field": pl.String, "rule": pl.String, "reason": pl.String})
    return (
        rows.lazy()
        .select(pl.col(ISSUES_COLUMN))
        .with_row_index(_INDEX)
        .filter(pl.col(ISSUES_COLUMN).list.len() > 0)
        .explode(ISSUES_COLUMN, empty_as_null=True)
        .filter(pl.col(ISSUES_COLUMN).is_not_null())
        .select(_INDEX, pl.col(ISSUES_COLUMN).struct.unnest())
        .with_columns(
            pl.col("field").fill_null(""),
            pl.col("rule").fill_null("reader"),
            pl.col("reason").fill_null("problem found while reading"),
        )
        .collect()
    )


def _line_list(lines: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def _duplicate_records(rows: pl.DataFrame, dup_mask: pl.Series) -> pl.DataFrame:
    """Reject records for repeated member entry keys (see the module docstring for the policy)."""
    schema = {_INDEX: pl.UInt32, "field": pl.String, "rule": pl.String, "reason": pl.String}
    if not dup_mask.any():
        return pl.DataFrame(schema=schema)
    sub = (
        rows.select(*COMPARED_FIELDS, "line_number")
        .with_row_index(_INDEX)
        .filter(dup_mask)
        .with_columns(
            _variants=pl.struct(COMPARED_FIELDS).n_unique().over(MEMBER_ENTRY_KEY),
            _first=pl.col(_INDEX).min().over(MEMBER_ENTRY_KEY),
            _lines=pl.col("line_number").implode().over(MEMBER_ENTRY_KEY),
        )
    )
    out: list[tuple[int, str, str, str]] = []
    first_line = dict(sub.select(_INDEX, "line_number").iter_rows())
    for row, line, variants, first, lines in sub.select(_INDEX, "line_number", "_variants", "_first", "_lines").iter_rows():
        if variants == 1:
            if row == first:
                continue
            reason = f"member entry (member_id, payer_id, contract_id, plan_id, provider_npi) repeats line {first_line[first]} exactly; the first copy is kept"
            out.append((row, "member_id", "duplicate_row", reason))
        else:
            others = sorted(n for n in lines if n != line)
            reason = (
                "member entry (member_id, payer_id, contract_id, plan_id, provider_npi) also on line(s) "
                f"{_line_list(others)} with different values; all copies are rejected"
            )
            out.append((row, "member_id", "conflicting_duplicate", reason))
    return pl.DataFrame(out, schema=schema, orient="row")


def _to_reject_schema(rows: pl.DataFrame, records: pl.DataFrame, spec: MappingSpec) -> pl.DataFrame:
    if records.height == 0:
        return empty_rejects()
    lineage = rows.select("source_id", "file_name", "line_number")[records[_INDEX]]
    return (
        lineage.with_columns(records["field"], records["rule"], records["reason"])
        .with_columns(pl.col("source_id").fill_null(spec.source_id))
        .select(list(REJECT_SCHEMA))
        .cast(REJECT_SCHEMA)
        .unique(maintain_order=True)
        .sort("line_number", "field", "rule", "reason")
    )


def _rows_per_rule(records: pl.DataFrame) -> dict[str, int]:
    if records.height == 0:
        return {}
    counts = records.group_by("rule").agg(pl.col(_INDEX).n_unique().alias("n")).sort("rule")
    return {r: int(n) for r, n in counts.iter_rows()}


def validate_rows(rows: pl.DataFrame, spec: MappingSpec, *, today: date) -> ValidationResult:
    """Check canonical rows against every rule; split them into accepted rows and reject records."""
    check_contract(rows)
    n = rows.height
    rules = rule_table(today=today)
    key_present = pl.all_horizontal([_present(k) for k in MEMBER_ENTRY_KEY])
    flag_exprs = [r.failed.fill_null(False).alias(f"r{i}") for i, r in enumerate(rules)]
    flags = rows.select(
        *flag_exprs,
        _dup=(key_present & pl.struct(MEMBER_ENTRY_KEY).is_duplicated()).fill_null(False),
    )
    flag_cols = [f"r{i}" for i in range(len(rules))]

    rule_frame = pl.DataFrame(
        {
            "_rule_idx": flag_cols,
            "field": [r.field for r in rules],
            "rule": [r.rule for r in rules],
            "reason": [r.reason for r in rules],
            "severity": [r.severity for r in rules],
        }
    )
    hits = (
        flags.select(flag_cols)
        .with_row_index(_INDEX)
        .filter(pl.any_horizontal(flag_cols))
        .unpivot(index=_INDEX, on=flag_cols, variable_name="_rule_idx", value_name="_hit")
        .filter(pl.col("_hit"))
        .join(rule_frame, on="_rule_idx", how="inner")
        .select(_INDEX, "field", "rule", "reason", "severity")
    )
    issues = _issue_records(rows)
    # A field the reader already flagged is reported once, with the reader's reason.
    hits = hits.join(issues.select(_INDEX, "field").unique(), on=[_INDEX, "field"], how="anti")
    errors = pl.concat(
        [
            issues,
            hits.filter(pl.col("severity") == "error").drop("severity"),
            _duplicate_records(rows, flags["_dup"]),
        ]
    )
    rejected_idx = errors[_INDEX].unique()
    rejected_mask = pl.repeat(False, n, dtype=pl.Boolean, eager=True).scatter(rejected_idx, True) if n else pl.Series([], dtype=pl.Boolean)
    warnings = hits.filter(pl.col("severity") == "warning").drop("severity")
    warnings = warnings.filter(pl.col(_INDEX).is_in(rejected_idx.implode()).not_())

    # A clean file keeps its rows as they are: filtering with an all-true mask copies every column.
    kept = rows.filter(rejected_mask.not_()) if rejected_idx.len() else rows
    accepted = kept.select(list(CANONICAL_SCHEMA))
    rows_rejected = rejected_idx.len()
    return ValidationResult(
        accepted=accepted,
        rejects=_to_reject_schema(rows, errors, spec),
        rows_read=n,
        rows_accepted=accepted.height,
        rows_rejected=rows_rejected,
        counts_by_rule=_rows_per_rule(errors),
        warnings_by_rule=_rows_per_rule(warnings),
        warnings=_to_reject_schema(rows, warnings, spec),
    )
