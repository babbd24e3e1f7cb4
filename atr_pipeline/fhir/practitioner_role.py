"""PractitionerRole (atr-practitionerrole): a named practitioner at a provider organization.

In: prepared rows (fhir/rows.py). Out: (id, json) per PractitionerRole, sorted by id.
Made only when both ends are known (atr-practitionerrole has practitioner 1..1 and
organization 1..1); one per practitioner NPI + organization key.
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import Json, reference, resource, to_frame
from atr_pipeline.fhir.rows import PRACTITIONER_ID, PROVIDER_ORG_ID, ROLE_ID, representative


def role_json(ctx: BuildContext) -> Json:
    return resource(
        "PractitionerRole",
        ROLE_ID,
        practitioner=reference("Practitioner", PRACTITIONER_ID),
        organization=reference("Organization", PROVIDER_ORG_ID),
    )


def build_practitioner_roles(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    return to_frame(representative(rows, ROLE_ID), ROLE_ID, role_json(ctx))
