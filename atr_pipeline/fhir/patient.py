"""Patient (atr-patient): one per payer + member id.

In: prepared rows (fhir/rows.py). Out: (id, json) per Patient, sorted by id.
Identifier slices carry exactly one v2-0203 type coding each: MB member id (mapping's member
system), MC MBI (us-mbi), MA Medicaid id, MR medical record number, SB SSN (us-ssn).
``gender`` falls back to ``unknown``: US Core makes it 1..1 and ``unknown`` says exactly that.
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import (
    Encoding,
    Json,
    arr,
    dumps,
    encode,
    obj,
    opt,
    template,
    text,
    to_frame,
    typed_identifier,
    when,
)
from atr_pipeline.fhir.rows import PATIENT_ID, representative
from atr_pipeline.systems import (
    ID_TYPE_MEDICAID,
    ID_TYPE_MEDICARE,
    ID_TYPE_MEMBER,
    ID_TYPE_MRN,
    ID_TYPE_SSN,
    PROFILE_BY_TYPE,
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


def _any(*columns: str) -> pl.Expr:
    return pl.any_horizontal([pl.col(c).is_not_null() for c in columns])


def _items(*items: Json) -> Json:
    """The present items joined by commas ("" when none is: guard with ``_any``)."""
    return pl.concat_str(list(items), separator=",", ignore_nulls=True)


def patient_json(ctx: BuildContext) -> Json:
    """One flat template (json.template), as coverage_json: each optional element carries its
    key and comma and is guarded by its source columns, instead of nested obj/arr copies.

    Same text as the nested ``resource("Patient", identifier=arr(...), name=arr(human_name()),
    ...)`` form it replaced; tests/test_fhir_perf.py holds the two equal on hostile text.
    """
    s = ctx.systems
    identifiers = [(ID_TYPE_MEMBER, s.member_id, "member_id"), (ID_TYPE_MEDICARE, SYS_MBI, "mbi")]
    if s.medicaid_id:
        identifiers.append((ID_TYPE_MEDICAID, s.medicaid_id, "medicaid_id"))
    if s.mrn:
        identifiers.append((ID_TYPE_MRN, s.mrn, "mrn"))
    identifiers.append((ID_TYPE_SSN, SYS_SSN, "ssn"))
    id_columns = [c for _, _, c in identifiers]
    family, given, middle, prefix, suffix = NAME_COLUMNS
    name = _items(
        opt('"family":', text(family)),
        when(_any(given, middle), template('"given":[', _items(text(given), text(middle)), "]")),
        opt('"prefix":[', text(prefix), "]"),
        opt('"suffix":[', text(suffix), "]"),
    )
    address_columns = ("address_line1", "address_line2", "city", "state", "postal_code")
    address = _items(
        when(_any("address_line1", "address_line2"), template('"line":[', _items(text("address_line1"), text("address_line2")), "]")),
        opt('"city":', text("city")),
        opt('"state":', text("state")),
        opt('"postalCode":', text("postal_code")),
    )
    profile = dumps({"profile": [PROFILE_BY_TYPE["Patient"]]})
    return template(
        '{"resourceType":"Patient","id":"', pl.col(PATIENT_ID), f'","meta":{profile}',  # ids are UUIDs
        when(_any(*id_columns), template(',"identifier":[', _items(*(typed_identifier(*i) for i in identifiers)), "]")),
        when(_any(*NAME_COLUMNS), template(',"name":[{', name, "}]")),
        opt(',"telecom":[{"system":"phone","value":', text("phone"), "}]"),
        ',"gender":', text(pl.col("gender").fill_null("unknown")),
        opt(',"birthDate":"', pl.col("birth_date"), '"'),  # dates (fhir/rows.py formats them): no escaping
        opt(',"deceasedDateTime":"', pl.col("deceased_date"), '"'),
        # country only when some part of the address is known
        when(_any(*address_columns), template(',"address":[{', address, ',"country":"US"}]')),
        "}",
    )


def build_patients(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    return to_frame(representative(rows, PATIENT_ID), PATIENT_ID, patient_json(ctx))


def encode_patients(rows: pl.DataFrame, ctx: BuildContext) -> Encoding:
    """``build_patients`` before the text is made (json.Encoding: encoded part by part)."""
    return encode(representative(rows, PATIENT_ID), PATIENT_ID, patient_json(ctx))
