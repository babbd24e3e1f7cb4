"""Member rows made ready for the builders: cleaned values, derived flags and every resource id.

In: canonical member rows (canonical.CANONICAL_SCHEMA columns) plus ``change_type`` (String)
and ``inactive`` (Boolean), and the BuildContext.
Out: the same rows with strings trimmed (empty -> null), dates as ``YYYY-MM-DD`` strings,
``inactive`` forced true for ``dropped`` entries, the derived columns below, one id column
per resource the row takes part in (null when the row has no such resource) with its UInt32
rank column (``key_of``), and ``_rank``. Columns no builder reads (UNUSED, and file_name /
line_number once rows are ranked) are left out: at 1M rows every column is ~10-60 MB.
Refused (FhirBuildError, naming fields and counts only): missing columns, change types or list
statuses outside the ATR code systems, identifier values whose system the mapping does not set.

Business keys (docs/FHIR.md explains why):
  Patient          payer_id, member_id
  Coverage         payer_id, member_id, plan_id
  RelatedPerson    payer_id, subscriber_id, member_id (one per subscriber x dependent)
  Practitioner     provider NPI (national, so not scoped by payer)
  Organization     "payer", payer_id | "provider", "npi"|"tin", value | "settlement", payer_id, id
  PractitionerRole practitioner NPI, organization kind, organization value
  Group            payer_id, contract_id
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.canonical import CANONICAL_SCHEMA, DATE_FIELDS, MEMBER_ENTRY_KEY
from atr_pipeline.errors import AtrError
from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.ids import add_id
from atr_pipeline.systems import CHANGE_TYPES, LIST_STATUSES

EXTRA_COLUMNS: dict[str, pl.DataType] = {"change_type": pl.String(), "inactive": pl.Boolean()}

PATIENT_ID = "_patient_id"
COVERAGE_ID = "_coverage_id"
RELATED_PERSON_ID = "_related_person_id"
PRACTITIONER_ID = "_practitioner_id"
ROLE_ID = "_role_id"
PAYER_ORG_ID = "_payer_org_id"
PROVIDER_ORG_ID = "_provider_org_id"
SETTLEMENT_ORG_ID = "_settlement_org_id"
GROUP_ID = "_group_id"

HAS_PRACTITIONER = "_has_practitioner"  # an NPI and a family name: enough for atr-practitioner
ORG_NPI = "_org_npi"  # provider_org_npi, else provider_npi when the row names no practitioner
ORG_KIND = "_org_kind"  # "npi" | "tin" | null: what identifies the provider organization
ORG_VALUE = "_org_value"
SUBSCRIBER_KIND = "_subscriber_kind"  # "Patient" | "RelatedPerson" | null (unknown subscriber)
SUBSCRIBER_ID = "_subscriber_id"  # subscriber_id, else member_id (Coverage.subscriberId is 1..1)

# Which mapping identifier system an optional identifier column needs.
_SYSTEM_OF_COLUMN = {"medicaid_id": "medicaid_id", "mrn": "mrn", "settlement_entity_id": "settlement_entity_id"}


class FhirBuildError(AtrError):
    """The rows or the context cannot be turned into ATR resources. Message carries no PHI."""


def _check(members: pl.DataFrame, ctx: BuildContext) -> None:
    needed = list(CANONICAL_SCHEMA.names()) + list(EXTRA_COLUMNS)
    missing = [c for c in needed if c not in members.columns]
    if missing:
        raise FhirBuildError(f"member rows lack column(s) {missing}")
    for status in (ctx.list_status, *ctx.group_statuses.values()):
        if status not in LIST_STATUSES:
            raise FhirBuildError(f"list_status {status!r} is not one of {LIST_STATUSES}")
    bad = members.filter(pl.col("change_type").is_null() | ~pl.col("change_type").is_in(CHANGE_TYPES))
    if bad.height:
        raise FhirBuildError(f"{bad.height} row(s) have a change_type outside {CHANGE_TYPES} (use 'new', not 'add')")
    for column, attr in _SYSTEM_OF_COLUMN.items():
        if getattr(ctx.systems, attr) is None:
            present = members.select(pl.col(column).str.strip_chars().replace("", None).is_not_null().sum()).item()
            if present:
                raise FhirBuildError(
                    f"{present} row(s) carry {column} but the mapping sets no identifier_systems.{attr}; add it to the mapping"
                )


# Canonical fields no ATR element carries: not cleaned, not carried to the builders.
UNUSED = ("source_id", "file_sha256", "change_reason", "risk_score")
_RANK_ONLY = ("file_name", "line_number")  # used to rank rows, then dropped


def _date_text(dates: pl.Series) -> pl.Series:
    """``YYYY-MM-DD`` text of a Date column, formatting each distinct date once.

    A month's dates take few values (tens of thousands of birth dates at 1M rows), and chrono
    formatting per row was ~0.1 s per column per 1M rows; a lookup is a tenth of that.
    """
    distinct = dates.drop_nulls().unique()
    return dates.replace_strict(distinct, distinct.dt.to_string("%Y-%m-%d"), default=None, return_dtype=pl.String())


def _clean(members: pl.DataFrame, *, consume: bool = False) -> pl.DataFrame:
    exprs: dict[str, pl.Expr] = {}
    dates: list[str] = []
    for name, dtype in CANONICAL_SCHEMA.items():
        if name in UNUSED:
            continue
        col = pl.col(name).cast(dtype)
        if dtype == pl.String():
            # FHIR strings carry no surrounding whitespace and are never empty.
            col = col.str.strip_chars()
            col = pl.when(col != "").then(col)
        elif name in DATE_FIELDS:
            dates.append(name)
        exprs[name] = col.alias(name)
    exprs["change_type"] = pl.col("change_type").cast(pl.String())
    # ATR: a dropped member SHALL be inactive; a missing flag means active.
    exprs["inactive"] = (pl.col("inactive").cast(pl.Boolean()).fill_null(False) | (pl.col("change_type") == "dropped")).alias("inactive")
    if consume:
        # Column by column, each taken out of the caller's frame as it is cleaned: the member list
        # and its cleaned copy never sit in memory whole at once (~0.5 GB at 1M entries).
        # Each column made one chunk as it is cleaned (one column's copy at a time): the list
        # arrives from history in a few chunks, and a frame whose columns are chunked unlike the
        # ids joined onto it below is rechunked whole by polars, every column at once.
        inactive = members.select(exprs.pop("inactive")).to_series().rechunk()
        cleaned = [members.drop_in_place(name).to_frame().select(expr).to_series().rechunk() for name, expr in exprs.items()]
        for name in members.columns:  # lineage and the diff's bookkeeping: no builder reads them
            members.drop_in_place(name)
        df = pl.DataFrame([*cleaned, inactive])
    else:
        df = members.select(exprs.values())
    return df.with_columns(_date_text(df.get_column(name)) for name in dates)


def _derive(df: pl.DataFrame) -> pl.DataFrame:
    has_prac = pl.col("provider_npi").is_not_null() & pl.col("provider_family_name").is_not_null()
    df = df.with_columns(has_prac.alias(HAS_PRACTITIONER))
    org_npi = pl.coalesce(pl.col("provider_org_npi"), pl.when(~pl.col(HAS_PRACTITIONER)).then(pl.col("provider_npi")))
    df = df.with_columns(org_npi.alias(ORG_NPI))
    is_self = (pl.col("relationship") == "self") | (
        pl.col("relationship").is_null() & (pl.col("subscriber_id").is_null() | (pl.col("subscriber_id") == pl.col("member_id")))
    )
    return df.with_columns(
        pl.when(pl.col(ORG_NPI).is_not_null()).then(pl.lit("npi")).when(pl.col("provider_tin").is_not_null()).then(pl.lit("tin")).alias(ORG_KIND),
        pl.coalesce(pl.col(ORG_NPI), pl.col("provider_tin")).alias(ORG_VALUE),
        pl.when(is_self.fill_null(False))
        .then(pl.lit("Patient"))
        .when(pl.col("subscriber_id").is_not_null())
        .then(pl.lit("RelatedPerson"))
        .alias(SUBSCRIBER_KIND),
        pl.coalesce(pl.col("subscriber_id"), pl.col("member_id")).alias(SUBSCRIBER_ID),
    )


def key_of(id_column: str) -> str:
    """The UInt32 column ranking ``id_column``'s ids in string order (fhir/ids.py add_id)."""
    return f"{id_column}_key"


def _ids(df: pl.DataFrame, key: bytes) -> pl.DataFrame:
    def add(resource_type: str, columns: list[str], out: str, **kw) -> None:
        nonlocal df
        df = add_id(df, key, resource_type, columns, out, order_key=key_of(out), **kw)

    add("Patient", ["payer_id", "member_id"], PATIENT_ID)
    add("Coverage", ["payer_id", "member_id", "plan_id"], COVERAGE_ID)
    add("RelatedPerson", ["payer_id", "subscriber_id", "member_id"], RELATED_PERSON_ID, when=pl.col(SUBSCRIBER_KIND) == "RelatedPerson")
    add("Practitioner", ["provider_npi"], PRACTITIONER_ID, when=pl.col(HAS_PRACTITIONER))
    add("Organization", ["payer_id"], PAYER_ORG_ID, prefix=("payer",))
    add("Organization", [ORG_KIND, ORG_VALUE], PROVIDER_ORG_ID, prefix=("provider",), when=pl.col(ORG_KIND).is_not_null())
    add(
        "Organization", ["payer_id", "settlement_entity_id"], SETTLEMENT_ORG_ID,
        prefix=("settlement",), when=pl.col("settlement_entity_id").is_not_null(),
    )
    add(
        "PractitionerRole", ["provider_npi", ORG_KIND, ORG_VALUE], ROLE_ID,
        when=pl.col(HAS_PRACTITIONER) & pl.col(ORG_KIND).is_not_null(),
    )
    add("Group", ["payer_id", "contract_id"], GROUP_ID)
    return df


# Several rows can describe one resource (a member in two contracts, an NPI in many rows).
# The row that speaks for it: active before inactive, newest reporting month, then file order;
# the entry key breaks the remaining ties, so the choice never depends on the input row order.
_PREFERENCE = ["inactive", "reporting_month", "file_name", "line_number", *MEMBER_ENTRY_KEY, "contract_id"]
_DESCENDING = [False, True, False, False, *([False] * len(MEMBER_ENTRY_KEY)), False]
RANK = "_rank"  # the row's position in that preference order (0 = most preferred)


def _rank(df: pl.DataFrame) -> pl.DataFrame:
    # arg_sort of the sorting permutation is its inverse: each row's rank, without moving rows
    order = pl.arg_sort_by(_PREFERENCE, descending=_DESCENDING, nulls_last=True)
    return df.with_columns(order.arg_sort().alias(RANK))


def prepare(members: pl.DataFrame, ctx: BuildContext, *, consume: bool = False) -> pl.DataFrame:
    """The builders' rows (see the module docstring).

    ``consume``: take the columns out of ``members`` as they are cleaned, leaving it empty (no
    columns): a caller done with the member list (pipeline's build) holds one copy, not two.
    """
    _check(members, ctx)
    return _ids(_rank(_derive(_clean(members, consume=consume))).drop(_RANK_ONLY), ctx.id_key)


def representative(df: pl.DataFrame | pl.LazyFrame, id_column: str) -> pl.LazyFrame:
    """One row per non-null ``id_column`` value: the most preferred one (see above), in id order.

    Lazy, so only the columns a builder uses are moved. Sorting by (id rank, preference rank),
    two UInt32s, and keeping each id's first row replaces a window over the id text and the
    string sort of the output (the builders' largest cost at 1M rows).
    """
    k = pl.col(key_of(id_column))
    ordered = df.lazy().filter(k.is_not_null()).sort(k, pl.col(RANK))
    return ordered.filter((k != k.shift(1)).fill_null(True))
