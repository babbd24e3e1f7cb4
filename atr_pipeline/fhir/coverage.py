"""Coverage (atr-coverage): one per payer + member id + plan id.

In: prepared rows (fhir/rows.py). Out: (id, json) per Coverage, sorted by id.
Why this key: a Coverage is the member's enrollment in a payer's plan, which does not depend
on the value-based contract; the ATR uniqueness rule (member + payer + contract + plan) is met by
the Group (one per contract) holding a member entry that points at this Coverage.

Fallbacks for 1..1 elements (docs/FHIR.md):
* subscriberId = subscriber_id, else member_id (the member is their own subscriber);
* period = coverage_start/coverage_end when either is known; else the attribution period over
  all of this Coverage's rows (earliest start; no end if any row is open-ended); else
  {start: reporting_month}.
subscriber -> the Patient when relationship is ``self`` (or unknown and the subscriber id is the
member id or absent), -> the RelatedPerson otherwise; omitted when the subscriber is unknown.
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import Encoding, Json, concept, dumps, encode, opt, period, template, text, to_frame, when
from atr_pipeline.fhir.rows import (
    COVERAGE_ID,
    PATIENT_ID,
    PAYER_ORG_ID,
    RELATED_PERSON_ID,
    SUBSCRIBER_ID,
    SUBSCRIBER_KIND,
    key_of,
    representative,
)
from atr_pipeline.systems import (
    CS_COVERAGE_CLASS,
    CS_INSURANCE_PRODUCT_TYPE,
    CS_SUBSCRIBER_RELATIONSHIP,
    CS_V2_0203,
    EXT_INSURANCE_PRODUCT_TYPE,
    ID_TYPE_DISPLAY,
    ID_TYPE_MEMBER,
    PRODUCT_TYPES,
    PROFILE_BY_TYPE,
)

_ATT_START = "_cov_attribution_start"
_ATT_END = "_cov_attribution_end"


def _period() -> Json:
    """Coverage dates when the file has any, else the attribution period (from the reporting month)."""
    has_coverage_dates = pl.col("coverage_start").is_not_null() | pl.col("coverage_end").is_not_null()
    start = pl.when(has_coverage_dates).then(pl.col("coverage_start")).otherwise(
        pl.coalesce(pl.col(_ATT_START), pl.col("reporting_month"))
    )
    end = pl.when(has_coverage_dates).then(pl.col("coverage_end")).otherwise(pl.col(_ATT_END))
    return period(start, end)


def _subscriber() -> Json:
    kind = pl.col(SUBSCRIBER_KIND)
    return (
        pl.when(kind == "Patient")
        .then(opt(',"subscriber":{"reference":"Patient/', pl.col(PATIENT_ID), '"}'))
        .when(kind == "RelatedPerson")
        .then(opt(',"subscriber":{"reference":"RelatedPerson/', pl.col(RELATED_PERSON_ID), '"}'))
    )


def coverage_json(ctx: BuildContext) -> Json:
    """One flat template (json.template): each optional element carries its key and comma.

    Same text as the nested obj/arr form: element order extension, identifier, status,
    subscriber, subscriberId, beneficiary, relationship, period, payor, class.
    """
    product = pl.col("product_type")
    product_display = product.replace_strict(PRODUCT_TYPES, default=None, return_dtype=pl.String())
    plan = pl.col("plan_id")
    profile = dumps({"profile": [PROFILE_BY_TYPE["Coverage"]]})
    member_head = dumps({"type": concept(CS_V2_0203, ID_TYPE_MEMBER, ID_TYPE_DISPLAY[ID_TYPE_MEMBER]), "system": ctx.systems.member_id})
    extension = when(
        product.is_not_null(),
        template(
            f',"extension":[{{"url":{dumps(EXT_INSURANCE_PRODUCT_TYPE)},"valueCodeableConcept":{{"coding":[{{"system":{dumps(CS_INSURANCE_PRODUCT_TYPE)},"code":',
            text(product), opt(',"display":', text(product_display)), "}]}}]",
        ),
    )
    plan_class = when(
        plan.is_not_null(),
        template(f',"class":[{{"type":{dumps(concept(CS_COVERAGE_CLASS, "plan"))},"value":', text(plan), opt(',"name":', text("plan_name")), "}]"),
    )
    return template(
        '{"resourceType":"Coverage","id":"', pl.col(COVERAGE_ID), f'","meta":{profile}',  # ids are UUIDs
        extension,
        opt(f',"identifier":[{member_head[:-1]},"value":', text("member_id"), "}]"),
        ',"status":"active"',  # fixed by atr-coverage; an ended coverage shows in period.end
        _subscriber(),
        opt(',"subscriberId":', text(SUBSCRIBER_ID)),
        opt(',"beneficiary":{"reference":"Patient/', pl.col(PATIENT_ID), '"}'),
        opt(f',"relationship":{{"coding":[{{"system":{dumps(CS_SUBSCRIBER_RELATIONSHIP)},"code":', text("relationship"), "}]}"),
        _period(),
        opt(',"payor":[{"reference":"Organization/', pl.col(PAYER_ORG_ID), '"}]'),
        plan_class,
        "}",
    )


def _chosen(rows: pl.DataFrame) -> pl.LazyFrame:
    # grouped and joined on the id's UInt32 rank, not the 36-byte id text
    key = key_of(COVERAGE_ID)
    attribution = rows.group_by(key).agg(
        pl.col("attribution_start").min().alias(_ATT_START),
        pl.when(pl.col("attribution_end").null_count() == 0).then(pl.col("attribution_end").max()).alias(_ATT_END),
    )
    return representative(rows, COVERAGE_ID).join(attribution.lazy(), on=key, how="left", maintain_order="left")


def build_coverages(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    return to_frame(_chosen(rows), COVERAGE_ID, coverage_json(ctx))


def encode_coverages(rows: pl.DataFrame, ctx: BuildContext) -> Encoding:
    """``build_coverages`` before the text is made (json.Encoding: encoded part by part)."""
    return encode(_chosen(rows), COVERAGE_ID, coverage_json(ctx))
