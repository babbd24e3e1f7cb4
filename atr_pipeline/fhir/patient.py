"""Patient (atr-patient): one per payer + member id.

In: prepared rows (fhir/rows.py). Out: (id, json) per Patient, sorted by id.
Identifier slices carry exactly one v2-0203 type coding each: MB member id (mapping's member
system), MC MBI (us-mbi), MA Medicaid id, MR medical record number, SB SSN (us-ssn).
``gender`` falls back to ``unknown``: US Core makes it 1..1 and ``unknown`` says exactly that.
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import Json, arr, const, obj, resource, safe_text, text, to_frame, typed_identifier
from atr_pipeline.fhir.rows import PATIENT_ID, representative
from atr_pipeline.systems import (
    ID_TYPE_MEDICAID,
    ID_TYPE_MEDICARE,
    ID_TYPE_MEMBER,
    ID_TYPE_MRN,
    ID_TYPE_SSN,
    SYS_MBI,
    SYS_SSN,
)

NAME_COLUMNS = ("family_name", "given_name", "middle_name", "name_prefix", "name_suffix")


def human_name() -> Json:
    """HumanName from the member name columns; null when the row has no name part."""
    return obj(
        family=text("family_name"),
        given=arr(text("given_name"), text("middle_name")),
        prefix=arr(text("name_prefix")),
        suffix=arr(text("name_suffix")),
    )


def _address() -> Json:
    parts = obj(
        line=arr(text("address_line1"), text("address_line2")),
        city=text("city"),
        state=text("state"),
        postalCode=text("postal_code"),
    )
    # country only when some part of the address is known
    return pl.concat_str([parts.str.strip_suffix("}"), pl.lit(',"country":"US"}')])


def patient_json(ctx: BuildContext) -> Json:
    s = ctx.systems
    identifiers = [typed_identifier(ID_TYPE_MEMBER, s.member_id, "member_id"), typed_identifier(ID_TYPE_MEDICARE, SYS_MBI, "mbi")]
    if s.medicaid_id:
        identifiers.append(typed_identifier(ID_TYPE_MEDICAID, s.medicaid_id, "medicaid_id"))
    if s.mrn:
        identifiers.append(typed_identifier(ID_TYPE_MRN, s.mrn, "mrn"))
    identifiers.append(typed_identifier(ID_TYPE_SSN, SYS_SSN, "ssn"))
    return resource(
        "Patient",
        PATIENT_ID,
        identifier=arr(*identifiers),
        name=arr(human_name()),
        telecom=arr(obj(system=pl.when(pl.col("phone").is_not_null()).then(const("phone")), value=text("phone"))),
        gender=text(pl.col("gender").fill_null("unknown")),
        birthDate=safe_text("birth_date"),
        deceasedDateTime=safe_text("deceased_date"),
        address=arr(_address()),
    )


def build_patients(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    return to_frame(representative(rows, PATIENT_ID), PATIENT_ID, patient_json(ctx))
