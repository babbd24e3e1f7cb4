"""Providers' accepted requests applied to a member list (pure polars, no I/O).

In: the member list of month M as diffed from the payer's files (``member_list`` before this
step), the accepted request rows of M and of the previous recorded month P (canonical columns
plus ``action`` = add | remove and ``request_order``), and each contract's list status for M.
Out: the list the consumer sees for M:

* M's own requests, in the order they were accepted: an **add** puts its entry in the list
  (``new``, active; an inactive entry of the same key is replaced); a **remove** marks the
  matching entries ``inactive`` and ``dropped`` while the list is ``draft`` (ATR §4.3: kept
  while draft) and takes them out of the list when it is ``open`` or ``final`` (open lists
  SHOULD remove at once; final lists SHOULD not hold inactive members).
* P's requests make M's diff start from the list the consumer last saw for P, not from P's
  file alone: an entry added in P and absent from M's file is ``dropped`` in M; one present
  is ``nochange``/``changed`` (compared like any entry); an entry removed in P that M's file
  lists again is ``new`` (the payer attributes it again), and one M's file does not list is
  not dropped a second time.

Only the net effect per entry key counts (the last accepted request on a key wins).
"""

from __future__ import annotations

from datetime import date

import polars as pl

from atr_pipeline.canonical import CANONICAL_SCHEMA, MEMBER_ENTRY_KEY
from atr_pipeline.history.changes import (
    CHANGE_FIELDS,
    CHANGE_TYPE_COLUMN,
    CHANGED,
    DROPPED,
    INACTIVE_COLUMN,
    NEW,
    NOCHANGE,
    PREVIOUS_MONTH_COLUMN,
    last_day_of_month,
)

ACTION_COLUMN = "action"
ORDER_COLUMN = "request_order"
ADD, REMOVE = "add", "remove"
_KEY = list(MEMBER_ENTRY_KEY)
_OTHER = "__other_"


def _net(requests: pl.DataFrame) -> pl.DataFrame:
    """The last accepted request per entry key."""
    if requests.is_empty():
        return requests
    return requests.sort(ORDER_COLUMN).unique(subset=_KEY, keep="last", maintain_order=True)


def _has_key(frame: pl.DataFrame, keys: pl.DataFrame) -> pl.Series:
    """Per row of ``frame``: is its entry key among ``keys``' (null matches null)."""
    if keys.is_empty() or frame.is_empty():
        return pl.Series([False] * frame.height, dtype=pl.Boolean)
    marked = keys.select(_KEY).unique().with_columns(pl.lit(True).alias("__hit"))
    joined = frame.select(_KEY).join(marked, on=_KEY, how="left", nulls_equal=True, maintain_order="left")
    return joined.get_column("__hit").fill_null(False)


def _as_list_rows(rows: pl.DataFrame, month: date, previous: date | None, change_type: str, inactive: bool) -> pl.DataFrame:
    return rows.select(
        *(pl.col(c).cast(CANONICAL_SCHEMA[c]) for c in CANONICAL_SCHEMA.names()),
    ).with_columns(
        pl.lit(month, dtype=pl.Date).alias("reporting_month"),
        pl.lit(change_type, dtype=pl.String).alias(CHANGE_TYPE_COLUMN),
        pl.lit(inactive, dtype=pl.Boolean).alias(INACTIVE_COLUMN),
        pl.lit(previous, dtype=pl.Date).alias(PREVIOUS_MONTH_COLUMN),
    )


def apply_requests(
    listed: pl.DataFrame,
    *,
    month: date,
    previous_month: date | None,
    own: pl.DataFrame,
    previous: pl.DataFrame,
    statuses: dict[str, str],
) -> pl.DataFrame:
    """``listed`` (member_list columns) with the accepted requests of M (``own``) and P applied."""
    columns = listed.columns
    out = listed
    prev = _net(previous)
    if not prev.is_empty():
        added = prev.filter(pl.col(ACTION_COLUMN) == ADD)
        removed = prev.filter(pl.col(ACTION_COLUMN) == REMOVE)
        present = pl.col(CHANGE_TYPE_COLUMN) != DROPPED
        was_removed = _has_key(out, removed)
        out = out.with_columns(
            pl.when(present & pl.lit(was_removed)).then(pl.lit(NEW)).otherwise(pl.col(CHANGE_TYPE_COLUMN)).alias(CHANGE_TYPE_COLUMN)
        )
        # Entries the consumer saw removed in P are not dropped again in M.
        out = out.filter(~(pl.lit(was_removed) & ~present))
        if not added.is_empty():
            # Entries added in P and listed by M's file: compared with the added row, like any entry.
            other = added.select(*_KEY, *[pl.col(f).alias(_OTHER + f) for f in CHANGE_FIELDS])
            hit = pl.lit(_has_key(out, added))
            joined = out.join(other, on=_KEY, how="left", nulls_equal=True, maintain_order="left")
            differs = pl.any_horizontal(*[pl.col(f).ne_missing(pl.col(_OTHER + f)) for f in CHANGE_FIELDS])
            out = joined.with_columns(
                pl.when(hit & (pl.col(CHANGE_TYPE_COLUMN) == NEW))
                .then(pl.when(differs).then(pl.lit(CHANGED)).otherwise(pl.lit(NOCHANGE)))
                .otherwise(pl.col(CHANGE_TYPE_COLUMN))
                .alias(CHANGE_TYPE_COLUMN)
            ).select(columns)
            # Added in P, absent from M's file: dropped once, ended at the end of P.
            gone = added.filter(~_has_key(added, out))
            if not gone.is_empty() and previous_month is not None:
                cutoff = last_day_of_month(previous_month)
                dropped = _as_list_rows(gone, month, previous_month, DROPPED, True).with_columns(
                    pl.when(pl.col("attribution_end").is_null() | (pl.col("attribution_end") > cutoff))
                    .then(pl.lit(cutoff, dtype=pl.Date))
                    .otherwise(pl.col("attribution_end"))
                    .alias("attribution_end")
                )
                out = pl.concat([out, dropped.select(columns)], how="vertical")
    ordered = own.sort(ORDER_COLUMN) if not own.is_empty() else own
    for request in ordered.iter_slices(1):
        action = request.get_column(ACTION_COLUMN)[0]
        same = _has_key(out, request)
        if action == ADD:
            row = _as_list_rows(request, month, previous_month, NEW, False).select(columns)
            out = pl.concat([out.filter(~same), row], how="vertical")
            continue
        contract = request.get_column("contract_id")[0]
        if statuses.get(contract, "draft") == "draft":
            out = out.with_columns(
                pl.when(pl.lit(same)).then(pl.lit(DROPPED)).otherwise(pl.col(CHANGE_TYPE_COLUMN)).alias(CHANGE_TYPE_COLUMN),
                (pl.col(INACTIVE_COLUMN) | pl.lit(same)).alias(INACTIVE_COLUMN),
            )
        else:
            out = out.filter(~same)
    return out
