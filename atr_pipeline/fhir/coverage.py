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
from atr_pipeline.fhir.json import Json, arr, concept, concept_column, const, obj, reference, resource, safe_text, text, to_frame, typed_identifier, when
from atr_pipeline.fhir.rows import (
    COVERAGE_ID,
    PATIENT_ID,
    PAYER_ORG_ID,
    RELATED_PERSON_ID,
    SUBSCRIBER_ID,
    SUBSCRIBER_KIND,
    representative,
)
from atr_pipeline.systems import (
    CS_COVERAGE_CLASS,
    CS_INSURANCE_PRODUCT_TYPE,
    CS_SUBSCRIBER_RELATIONSHIP,
    EXT_INSURANCE_PRODUCT_TYPE,
    ID_TYPE_MEMBER,
    PRODUCT_TYPES,
)

_ATT_START = "_cov_attribution_start"
_ATT_END = "_cov_attribution_end"


def _period() -> Json:
    has_coverage_dates = pl.col("coverage_start").is_not_null() | pl.col("coverage_end").is_not_null()
    start = pl.when(has_coverage_dates).then(pl.col("coverage_start")).otherwise(pl.coalesce(pl.col(_ATT_START), pl.col("reporting_month")))
    end = pl.when(has_coverage_dates).then(pl.col("coverage_end")).otherwise(pl.col(_ATT_END))
    return obj(start=safe_text(start), end=safe_text(end))  # dates (fhir/rows.py)


def _subscriber() -> Json:
    kind = pl.col(SUBSCRIBER_KIND)
    return (
        pl.when(kind == "Patient")
        .then(reference("Patient", PATIENT_ID))
        .when(kind == "RelatedPerson")
        .then(reference("RelatedPerson", RELATED_PERSON_ID))
    )


def coverage_json(ctx: BuildContext) -> Json:
    product = pl.col("product_type")
    product_display = product.replace_strict(PRODUCT_TYPES, default=None, return_dtype=pl.String())
    plan = pl.col("plan_id")
    return resource(
        "Coverage",
        COVERAGE_ID,
        extension=arr(
            when(
                product.is_not_null(),
                obj(url=const(EXT_INSURANCE_PRODUCT_TYPE), valueCodeableConcept=concept_column(CS_INSURANCE_PRODUCT_TYPE, product, product_display)),
            )
        ),
        identifier=arr(typed_identifier(ID_TYPE_MEMBER, ctx.systems.member_id, "member_id")),
        status=const("active"),  # fixed by atr-coverage; an ended coverage shows in period.end
        subscriber=_subscriber(),
        subscriberId=text(SUBSCRIBER_ID),
        beneficiary=reference("Patient", PATIENT_ID),
        relationship=concept_column(CS_SUBSCRIBER_RELATIONSHIP, pl.col("relationship")),
        period=_period(),
        payor=arr(reference("Organization", PAYER_ORG_ID)),
        **{
            "class": arr(
                when(
                    plan.is_not_null(),
                    obj(type=const(concept(CS_COVERAGE_CLASS, "plan")), value=text(plan), name=text("plan_name")),
                )
            )
        },
    )


def build_coverages(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    attribution = rows.group_by(COVERAGE_ID).agg(
        pl.col("attribution_start").min().alias(_ATT_START),
        pl.when(pl.col("attribution_end").null_count() == 0).then(pl.col("attribution_end").max()).alias(_ATT_END),
    )
    chosen = representative(rows, COVERAGE_ID).join(attribution.lazy(), on=COVERAGE_ID, how="left")
    return to_frame(chosen, COVERAGE_ID, coverage_json(ctx))
