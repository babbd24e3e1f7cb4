"""Patient (atr-patient): one per payer + member id.

In: prepared rows (fhir/rows.py). Out: (id, json) per Patient, sorted by id.
Identifier slices carry exactly one v2-0203 type coding each: MB member id (mapping's member
system), MC MBI (us-mbi), MA Medicaid id, MR medical record number, SB SSN (us-ssn).
``gender`` falls back to ``unknown``: US Core makes it 1..1 and ``unknown`` says exactly that.
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import any_present, items, meta, some, to_frame, typed_identifier
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
ADDRESS_COLUMNS = ("address_line1", "address_line2", "city", "state", "postal_code")


def human_name() -> pl.Expr:
    """HumanName from the member name columns; null when the row has no name part."""
    return some(
        any_present(*NAME_COLUMNS),
        family=pl.col("family_name"),
        given=items(pl.col("given_name"), pl.col("middle_name")),
        prefix=items(pl.col("name_prefix")),
        suffix=items(pl.col("name_suffix")),
    )


def _address() -> pl.Expr:
    return some(
        any_present(*ADDRESS_COLUMNS),
        line=items(pl.col("address_line1"), pl.col("address_line2")),
        city=pl.col("city"),
        state=pl.col("state"),
        postalCode=pl.col("postal_code"),
        country=pl.lit("US"),
    )


def patient_struct(ctx: BuildContext) -> pl.Expr:
    s = ctx.systems
    identifiers = [typed_identifier(ID_TYPE_MEMBER, s.member_id, "member_id"), typed_identifier(ID_TYPE_MEDICARE, SYS_MBI, "mbi")]
    if s.medicaid_id:
        identifiers.append(typed_identifier(ID_TYPE_MEDICAID, s.medicaid_id, "medicaid_id"))
    if s.mrn:
        identifiers.append(typed_identifier(ID_TYPE_MRN, s.mrn, "mrn"))
    identifiers.append(typed_identifier(ID_TYPE_SSN, SYS_SSN, "ssn"))
    return pl.struct(
        resourceType=pl.lit("Patient"),
        id=pl.col(PATIENT_ID),
        meta=meta("Patient"),
        identifier=items(*identifiers),
        name=items(human_name()),
        telecom=items(some(pl.col("phone").is_not_null(), system=pl.lit("phone"), value=pl.col("phone"))),
        gender=pl.col("gender").fill_null("unknown"),
        birthDate=pl.col("birth_date"),
        deceasedDateTime=pl.col("deceased_date"),
        address=items(_address()),
    )


def build_patients(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    return to_frame(representative(rows, PATIENT_ID), PATIENT_ID, patient_struct(ctx))
