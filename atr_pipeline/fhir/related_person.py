"""RelatedPerson (atr-relatedperson): the subscriber of a dependent's Coverage.

In: prepared rows (fhir/rows.py). Out: (id, json) per RelatedPerson, sorted by id.
One per payer + subscriber id + dependent member id, because RelatedPerson.patient is 1..1: the
same subscriber related to two dependents is two RelatedPersons.
identifier = the subscriber id (mapping's subscriber system, else its member system: payers
issue subscriber ids from the member id space). name = the subscriber's name when the
subscriber is also a member row of the same payer in the input. relationship = the subscriber's
role towards the dependent (v3-RoleCode), the inverse of Coverage.relationship; omitted when the
inverse is not known (``other``, ``injured``).
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import Json, arr, concept_column, reference, resource, system_identifier, to_frame
from atr_pipeline.fhir.patient import NAME_COLUMNS, human_name
from atr_pipeline.fhir.rows import PATIENT_ID, RELATED_PERSON_ID, representative
from atr_pipeline.systems import CS_V3_ROLE_CODE, SUBSCRIBER_ROLE


def related_person_json(ctx: BuildContext) -> Json:
    system = ctx.systems.subscriber_id or ctx.systems.member_id
    rel = pl.col("relationship")
    code = rel.replace_strict({k: v[0] for k, v in SUBSCRIBER_ROLE.items()}, default=None, return_dtype=pl.String())
    display = rel.replace_strict({k: v[1] for k, v in SUBSCRIBER_ROLE.items()}, default=None, return_dtype=pl.String())
    return resource(
        "RelatedPerson",
        RELATED_PERSON_ID,
        identifier=arr(system_identifier(system, "subscriber_id")),
        patient=reference("Patient", PATIENT_ID),
        relationship=arr(concept_column(CS_V3_ROLE_CODE, code, display)),
        name=arr(human_name()),
    )


def build_related_persons(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    dependents = representative(rows, RELATED_PERSON_ID).drop(NAME_COLUMNS)
    subscribers = representative(rows, PATIENT_ID).select(
        "payer_id", pl.col("member_id").alias("subscriber_id"), *NAME_COLUMNS
    )
    joined = dependents.join(subscribers, on=["payer_id", "subscriber_id"], how="left", maintain_order="left")
    return to_frame(joined, RELATED_PERSON_ID, related_person_json(ctx))
