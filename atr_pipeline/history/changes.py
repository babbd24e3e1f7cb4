"""Change types of an ATR member list: one month's rows diffed against the previous month's.

In: two frames of canonical rows (the current month's snapshot and the previous recorded
month's, both holding at least ``MEMBER_ENTRY_KEY`` + ``CHANGE_FIELDS`` + ``attribution_end``
+ ``reporting_month``; usually all canonical columns).
Out: the member list: every current row with ``change_type`` new | changed | nochange and
``inactive`` false, plus every previous row whose key is absent now, once, as ``dropped`` with
``inactive`` true and ``attribution_end`` cut to the last day of the previous month.
Refused: nothing here; key uniqueness is guaranteed upstream (validate/, HistoryStore).

Pure and vectorised (polars joins); no I/O. ``HistoryStore.member_list`` calls it.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import date

import polars as pl

from atr_pipeline.canonical import FIELDS, MEMBER_ENTRY_KEY, Group

CHANGE_TYPE_COLUMN = "change_type"
INACTIVE_COLUMN = "inactive"
# Which recorded month a list was diffed against (null for a source's first month).
PREVIOUS_MONTH_COLUMN = "previous_month"

NEW, CHANGED, NOCHANGE, DROPPED = "new", "changed", "nochange", "dropped"

# "Member information" (ATR 2.1 §2.2 leaves it undefined): every non-key field of the plan,
# member, demographics and attribution groups that feeds a member-level ATR element (Patient,
# Coverage, Group.member.period). Not counted: lineage (file, line number), payer and contract
# fields (Group-level, not member-level), provider fields (the provider NPI is part of the key;
# names/TIN describe the provider, not the member), and attribution fields with no ATR element
# (change_reason is the payer's note about a change, risk_score is recomputed monthly).
_MEMBER_INFO_GROUPS = (Group.PLAN, Group.MEMBER, Group.DEMOGRAPHICS, Group.ATTRIBUTION)
CHANGE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in FIELDS if f.group in _MEMBER_INFO_GROUPS and f.fhir and f.name not in MEMBER_ENTRY_KEY
)

# The member as a person, for provider-switch counting (a member id is unique per payer).
MEMBER_KEY: tuple[str, ...] = ("member_id", "payer_id")

_PREV = "__prev"
_IN_PREV = "__in_prev"


def last_day_of_month(month: date) -> date:
    return month.replace(day=monthrange(month.year, month.month)[1])


def previous_calendar_month(month: date) -> date:
    return date(month.year - 1, 12, 1) if month.month == 1 else date(month.year, month.month - 1, 1)


def compute_changes(
    current: pl.DataFrame,
    previous: pl.DataFrame | None,
    *,
    month: date,
    previous_month: date | None = None,
) -> pl.DataFrame:
    """The member list for ``month``: ``current``'s columns + change_type, inactive, previous_month.

    ``previous`` is the snapshot of the nearest earlier recorded month (None for the first
    month: every entry is ``new``). ``previous_month`` is that month; when omitted it is taken
    from ``previous``'s ``reporting_month`` (or the calendar month before ``month``). A dropped
    entry's ``attribution_end`` becomes the last day of ``previous_month`` when it was later or
    null: the entry was last seen attributed in that month.
    Order: the current rows in file line order, then the dropped rows in the previous file's
    line order (ties, e.g. rows from several files, broken by the member entry key).
    """
    key = list(MEMBER_ENTRY_KEY)
    columns = current.columns
    if previous is None:
        return in_line_order(current).with_columns(
            pl.lit(NEW).alias(CHANGE_TYPE_COLUMN),
            pl.lit(False).alias(INACTIVE_COLUMN),
            pl.lit(None, dtype=pl.Date).alias(PREVIOUS_MONTH_COLUMN),
        )

    if previous_month is None:
        seen = previous["reporting_month"].max() if previous.height else None
        previous_month = seen if isinstance(seen, date) else previous_calendar_month(month)
    previous = previous.select(columns)

    current = in_line_order(current)
    prev_info = previous.select(
        *key,
        *(pl.col(f).alias(f + _PREV) for f in CHANGE_FIELDS),
        pl.lit(True).alias(_IN_PREV),
    )
    joined = current.join(prev_info, on=key, how="left", nulls_equal=True, maintain_order="left")
    differs = pl.any_horizontal(*(pl.col(f).ne_missing(pl.col(f + _PREV)) for f in CHANGE_FIELDS))
    present = joined.select(
        *columns,
        pl.when(pl.col(_IN_PREV).is_null())
        .then(pl.lit(NEW))
        .when(differs)
        .then(pl.lit(CHANGED))
        .otherwise(pl.lit(NOCHANGE))
        .alias(CHANGE_TYPE_COLUMN),
        pl.lit(False).alias(INACTIVE_COLUMN),
    )

    cutoff = last_day_of_month(previous_month)
    end = pl.col("attribution_end")
    gone = previous.join(current.select(key), on=key, how="anti", nulls_equal=True, maintain_order="left")
    dropped = in_line_order(gone).with_columns(
        # The dropped entry belongs to this month's list; its other lineage fields still say
        # where it was last seen (file, line).
        pl.lit(month, dtype=pl.Date).alias("reporting_month"),
        pl.when(end.is_null() | (end > cutoff)).then(pl.lit(cutoff, dtype=pl.Date)).otherwise(end).alias("attribution_end"),
        pl.lit(DROPPED).alias(CHANGE_TYPE_COLUMN),
        pl.lit(True).alias(INACTIVE_COLUMN),
    )
    return pl.concat([present, dropped], how="vertical").with_columns(
        pl.lit(previous_month, dtype=pl.Date).alias(PREVIOUS_MONTH_COLUMN)
    )


def provider_switches(current: pl.DataFrame, previous: pl.DataFrame | None) -> pl.DataFrame:
    """Per contract: members present in both months whose set of attributed providers changed.

    A member moving from provider A to B counts once; so does a member who keeps A and loses
    (or gains) B. Returns columns contract_id, provider_switches (UInt32).
    """
    schema = {"contract_id": pl.String, "provider_switches": pl.UInt32}
    if previous is None or not previous.height or not current.height:
        return pl.DataFrame(schema=schema)
    group = ["contract_id", *MEMBER_KEY]

    def provider_sets(df: pl.DataFrame) -> pl.DataFrame:
        return df.group_by(group).agg(pl.col("provider_npi").unique().sort().alias("providers"))

    both = provider_sets(current).join(provider_sets(previous), on=group, how="inner", nulls_equal=True, suffix="_prev")
    return (
        both.filter(pl.col("providers") != pl.col("providers_prev"))
        .group_by("contract_id")
        .agg(pl.len().cast(pl.UInt32).alias("provider_switches"))
        .select(list(schema))
        .cast(schema)  # type: ignore[arg-type]
    )


def in_line_order(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows in file line order (the order the payer sent them); the key breaks ties.

    Line numbers are unique within one file, so this is a total order and the list is
    deterministic whatever order the rows were stored or passed in. Sorting by one integer
    (or noticing rows already are in order) costs a fraction of a five-string key sort.
    """
    if "line_number" in rows.columns and rows.height:
        lines = rows["line_number"]
        if lines.null_count() == 0:
            steps = lines.diff().drop_nulls()
            if steps.is_empty() or steps.min() > 0:  # type: ignore[operator]
                return rows
            if lines.is_unique().all():
                return rows.sort("line_number")
    order = ["line_number"] if "line_number" in rows.columns else []
    return rows.sort([*order, *MEMBER_ENTRY_KEY], nulls_last=True)
