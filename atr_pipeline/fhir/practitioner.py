"""Practitioner (atr-practitioner): one per NPI, only when a row names the practitioner.

In: prepared rows (fhir/rows.py). Out: (id, json) per Practitioner, sorted by id.
A row counts as naming a practitioner when it has provider_npi and provider_family_name (US Core
Practitioner needs a name with a family part). Without a name provider_npi is read as the
organization's NPI (canonical field description) and no Practitioner is made.
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import Json, arr, obj, resource, system_identifier, text, to_frame
from atr_pipeline.fhir.rows import PRACTITIONER_ID, representative
from atr_pipeline.systems import SYS_NPI


def practitioner_json(ctx: BuildContext) -> Json:
    return resource(
        "Practitioner",
        PRACTITIONER_ID,
        identifier=arr(system_identifier(SYS_NPI, "provider_npi")),
        name=arr(obj(family=text("provider_family_name"), given=arr(text("provider_given_name")))),
    )


def build_practitioners(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    return to_frame(representative(rows, PRACTITIONER_ID), PRACTITIONER_ID, practitioner_json(ctx))
