"""Group (atr-group): one Member Attribution List per payer + contract.

In: prepared rows (fhir/rows.py) and the BuildContext. Out: (id, json) per Group, sorted by id.

Header: meta (profile, versionId from ctx.group_versions[contract_id] or 1, lastUpdated =
transaction time), extensions contractValidityPeriod (earliest contract_start, latest
contract_end) when known, attributionListStatus (ctx.list_status), intended recipient when set;
identifiers: the contract (mapping's contract system), settlement entities, then the NPI and TIN
slices of the contract's provider organizations (sorted); active, type person, actual, name
(contract_name), quantity, managingEntity -> the payer Organization.

quantity = member entries that are not inactive (active attributions, so a member attributed to
two providers counts twice; dropped entries do not count).

member[]: one per row, ordered by Patient id, Coverage id, attributed provider, period, so the
order is deterministic and reveals nothing. Each has changeType, coverageReference,
attributedProvider (PractitionerRole, else Practitioner, else provider Organization, else the
settlement entity Organization; omitted when none is known), entity, period, inactive.

Member entries are encoded column-wise and joined as text; only the header (one per contract) is
a Python dict. The Group is spliced as ``header[:-1] + ',"member":[...]}'`` so a 500k-member Group
never becomes a Python object tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.ids import reference as reference_string
from atr_pipeline.fhir.json import Json, boolean, dumps, opt, period, template
from atr_pipeline.fhir.rows import (
    COVERAGE_ID,
    GROUP_ID,
    ORG_NPI,
    PATIENT_ID,
    PAYER_ORG_ID,
    PRACTITIONER_ID,
    PROVIDER_ORG_ID,
    ROLE_ID,
    SETTLEMENT_ORG_ID,
    key_of,
    representative,
)
from atr_pipeline.systems import (
    EXT_ATTRIBUTED_PROVIDER,
    EXT_ATTRIBUTION_LIST_STATUS,
    EXT_CHANGE_TYPE,
    EXT_CONTRACT_VALIDITY_PERIOD,
    EXT_COVERAGE_REFERENCE,
    EXT_INTENDED_RECIPIENT,
    PROFILE_GROUP,
    SYS_NPI,
    SYS_TIN,
)

_ATTRIBUTED = "_attributed_provider"
_MEMBER_JSON = "_member_json"


def attributed_provider() -> pl.Expr:
    return pl.coalesce(
        reference_string("PractitionerRole", ROLE_ID),
        reference_string("Practitioner", PRACTITIONER_ID),
        reference_string("Organization", PROVIDER_ORG_ID),
        reference_string("Organization", SETTLEMENT_ORG_ID),
    )


def member_json() -> Json:
    # One flat template: change_type (checked against CHANGE_TYPES), the Patient and Coverage
    # ids (every row has both) and inactive (never null) are always present, so only the
    # attributed provider and the period are optional pieces. Same text as nested obj/arr.
    return template(
        f'{{"extension":[{{"url":{dumps(EXT_CHANGE_TYPE)},"valueCode":"', pl.col("change_type"),
        f'"}},{{"url":{dumps(EXT_COVERAGE_REFERENCE)},"valueReference":{{"reference":"Coverage/', pl.col(COVERAGE_ID), '"}}',
        opt(f',{{"url":{dumps(EXT_ATTRIBUTED_PROVIDER)},"valueReference":{{"reference":"', pl.col(_ATTRIBUTED), '"}}'),
        '],"entity":{"reference":"Patient/', pl.col(PATIENT_ID), '"}',
        period(pl.col("attribution_start"), pl.col("attribution_end")),
        ',"inactive":', boolean(pl.col("inactive")),
        "}",
    )


def _small_rank(values: pl.Series) -> pl.Series:
    """Each value's rank among the column's distinct values in sort order, nulls last (UInt32).

    For the member sort's tie-breakers, which take few distinct values (providers, dates,
    codes): numbers sort without encoding every row's text.
    """
    distinct = values.drop_nulls().unique().sort()
    ranks = pl.int_range(0, distinct.len(), eager=True, dtype=pl.UInt32)
    return values.replace_strict(distinct, ranks, default=distinct.len(), return_dtype=pl.UInt32)


def _entries(rows: pl.DataFrame) -> pl.DataFrame:
    """What the member entries are made from, in the member array's order, Group by Group."""
    # Order: Group, Patient and Coverage ids, attributed provider, period, inactive, change type.
    # The ids sort by their rank columns (rows.key_of) and the others by _small_rank: the same
    # order as sorting the text, without comparing ~1M 36-byte ids per key.
    tail = [_ATTRIBUTED, "attribution_start", "attribution_end", "change_type"]
    used = rows.lazy().select(
        key_of(GROUP_ID), key_of(PATIENT_ID), key_of(COVERAGE_ID), GROUP_ID, PATIENT_ID, COVERAGE_ID,
        attributed_provider().alias(_ATTRIBUTED), "attribution_start", "attribution_end", "inactive", "change_type",
    ).collect()
    ranks = [_small_rank(used.get_column(c)).alias(f"_r{i}") for i, c in enumerate(tail)]
    order = [key_of(GROUP_ID), key_of(PATIENT_ID), key_of(COVERAGE_ID), "_r0", "_r1", "_r2", "inactive", "_r3"]
    needed = [GROUP_ID, *member_json().meta.root_names()]
    return used.with_columns(ranks).lazy().sort(order).select(list(dict.fromkeys(needed))).collect()


def _members(entries: pl.DataFrame) -> pl.DataFrame:
    """GROUP_ID -> the member array's inner text (entries joined by commas), in ``entries``' order."""
    encoded = entries.lazy().select(GROUP_ID, member_json().alias(_MEMBER_JSON)).collect()
    return encoded.group_by(GROUP_ID, maintain_order=True).agg(pl.col(_MEMBER_JSON).str.join(","))


def _headers(rows: pl.DataFrame) -> pl.DataFrame:
    def distinct(col: str) -> pl.Expr:
        return pl.col(col).drop_nulls().unique().sort()

    agg = rows.group_by(GROUP_ID).agg(
        pl.col("contract_start").min(),
        pl.col("contract_end").max(),
        distinct("settlement_entity_id").alias("_settlements"),
        distinct(ORG_NPI).alias("_npis"),
        distinct("provider_tin").alias("_tins"),
        (~pl.col("inactive")).sum().alias("_quantity"),
    )
    chosen = representative(rows, GROUP_ID).select(GROUP_ID, PAYER_ORG_ID, "contract_id", "contract_name").collect()
    return chosen.join(agg, on=GROUP_ID, how="left").sort(GROUP_ID)


def _header(h: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    s = ctx.systems
    extension: list[dict[str, Any]] = []
    if h["contract_start"] or h["contract_end"]:
        extension.append({"url": EXT_CONTRACT_VALIDITY_PERIOD, "valuePeriod": {"start": h["contract_start"], "end": h["contract_end"]}})
    extension.append({"url": EXT_ATTRIBUTION_LIST_STATUS, "valueCode": ctx.status_of(h["contract_id"])})
    if ctx.intended_recipient is not None:
        r = ctx.intended_recipient
        extension.append({"url": EXT_INTENDED_RECIPIENT, "valueIdentifier": {"system": r.system, "value": r.value}})
    identifier = [{"system": s.contract_id, "value": h["contract_id"]}]
    identifier += [{"system": s.settlement_entity_id, "value": v} for v in h["_settlements"]]
    identifier += [{"system": SYS_NPI, "value": v} for v in h["_npis"]]
    identifier += [{"system": SYS_TIN, "value": v} for v in h["_tins"]]
    version = ctx.group_versions.get(h["contract_id"], 1) if h["contract_id"] is not None else 1
    return {
        "resourceType": "Group",
        "id": h[GROUP_ID],
        "meta": {"versionId": str(version), "lastUpdated": ctx.last_updated(h["contract_id"]), "profile": [PROFILE_GROUP]},
        "extension": extension,
        "identifier": identifier,
        "active": True,
        "type": "person",
        "actual": True,
        "name": h["contract_name"],
        "quantity": h["_quantity"],
        "managingEntity": {"reference": f"Organization/{h[PAYER_ORG_ID]}"},
    }


def build_groups(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    return encode_groups(rows, ctx).to_frame()


@dataclass(frozen=True)
class GroupEncoding:
    """The Groups before their member text is made: one header per Group (``heads``, in id
    order) and the member entries' inputs, in member-array order Group by Group. ``parts``
    makes the lines a few Groups at a time (about ``entries_per_chunk`` entries, never less than
    one whole Group), so the month's member text (~400 bytes per entry, three copies while
    joined and spliced) is never made at once; a Group's line is always made whole.
    """

    heads: pl.DataFrame  # id, _head
    entries: pl.DataFrame  # GROUP_ID + what member_json reads
    counts: list[int]  # entries per Group, in ``heads``' order
    entries_per_chunk: int = 50_000

    @property
    def height(self) -> int:
        return self.heads.height

    def parts(self, rows: int) -> Iterator[pl.DataFrame]:
        """(id, json) frames of at most ``rows`` Groups, in id order."""
        group, entry = 0, 0
        while group < len(self.counts):
            end, size = group, 0
            while end < len(self.counts) and end - group < rows and (end == group or size + self.counts[end] <= self.entries_per_chunk):
                size += self.counts[end]
                end += 1
            yield self._lines(self.heads.slice(group, end - group), self.entries.slice(entry, size))
            group, entry = end, entry + size

    def to_frame(self) -> pl.DataFrame:
        parts = list(self.parts(max(1, self.height)))
        return pl.concat(parts) if parts else pl.DataFrame(schema={"id": pl.String(), "json": pl.String()})

    @staticmethod
    def _lines(heads: pl.DataFrame, entries: pl.DataFrame) -> pl.DataFrame:
        members = _members(entries).rename({GROUP_ID: "id"})
        joined = heads.join(members, on="id", how="left", maintain_order="left")
        return joined.select("id", pl.concat_str([pl.col("_head"), pl.col(_MEMBER_JSON), pl.lit("]}")]).alias("json"))


def encode_groups(rows: pl.DataFrame, ctx: BuildContext, *, entries_per_chunk: int = 50_000) -> GroupEncoding:
    # Headers are small Python dicts; the member text (~400 bytes per entry) stays in polars and
    # is spliced in by one concat_str: no Python copy of a 500k-member array.
    headers = _headers(rows)
    heads = [dumps(_header(h, ctx))[:-1] + ',"member":[' for h in headers.iter_rows(named=True)]
    frame = headers.select(pl.col(GROUP_ID).alias("id"), pl.Series("_head", heads, dtype=pl.String()))
    entries = _entries(rows)
    # Entries come Group by Group in the same (id) order as the headers: every Group has rows.
    sizes = entries.group_by(GROUP_ID, maintain_order=True).len()
    if sizes.get_column(GROUP_ID).to_list() != frame.get_column("id").to_list():
        raise AssertionError("Group headers and member entries are not in the same order")
    return GroupEncoding(frame, entries, sizes.get_column("len").to_list(), entries_per_chunk)
