"""fhir/: member rows -> Da Vinci ATR 2.1.0 resources, column-wise.

In: ``members`` = the canonical columns (canonical.CANONICAL_SCHEMA, rows already validated)
plus ``change_type`` (new|changed|nochange|dropped|cancelled) and ``inactive`` (Boolean); one row
per ATR member entry (member + payer + contract + plan + provider). A BuildContext with the id
key, the mapping's identifier systems, the transaction time and the list status.
Out: resource type -> DataFrame(id: String, json: String), one compact JSON resource per row,
sorted by id, for Organization, Practitioner, PractitionerRole, Patient, RelatedPerson,
Coverage and Group (in systems.LOAD_ORDER). Same rows + same key -> byte-identical output.
Refused (FhirBuildError): see fhir/rows.py.

Each type has its own module; docs/FHIR.md maps every canonical field to its elements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.coverage import build_coverages, encode_coverages
from atr_pipeline.fhir.group import GroupEncoding, build_groups, encode_groups
from atr_pipeline.fhir.json import Encoding, empty_resources
from atr_pipeline.fhir.organization import build_organizations
from atr_pipeline.fhir.patient import build_patients, encode_patients
from atr_pipeline.fhir.practitioner import build_practitioners
from atr_pipeline.fhir.practitioner_role import build_practitioner_roles
from atr_pipeline.fhir.related_person import build_related_persons
from atr_pipeline.fhir.rows import FhirBuildError, prepare
from atr_pipeline.systems import LOAD_ORDER

__all__ = ["BuildContext", "FhirBuildError", "build_prepared", "build_resources", "iter_encoded", "iter_prepared", "prepare", "BUILDERS"]

Builder = Callable[[pl.DataFrame, BuildContext], pl.DataFrame]

BUILDERS: dict[str, Builder] = {
    "Organization": build_organizations,
    "Practitioner": build_practitioners,
    "PractitionerRole": build_practitioner_roles,
    "Patient": build_patients,
    "RelatedPerson": build_related_persons,
    "Coverage": build_coverages,
    "Group": build_groups,
}


def build_resources(members: pl.DataFrame, ctx: BuildContext) -> dict[str, pl.DataFrame]:
    """All ATR resources for these member entries, by type (systems.LOAD_ORDER)."""
    return build_prepared(prepare(members, ctx) if members.height else None, ctx)


def build_prepared(rows: pl.DataFrame | None, ctx: BuildContext) -> dict[str, pl.DataFrame]:
    """``build_resources`` from rows ``prepare`` already made (None: no member entries).

    Lets a caller drop the member list before the resources are built (a GB at 1M entries).
    """
    return dict(iter_prepared(rows, ctx))


# The largest types (one resource per member), handed on before their text is made: a caller
# that writes part by part (publish.export.stage_resources) holds one part's JSON at a time.
ENCODERS: dict[str, Callable[[pl.DataFrame, BuildContext], Encoding | GroupEncoding]] = {
    "Patient": encode_patients,
    "Coverage": encode_coverages,
    "Group": encode_groups,  # a few Groups' member text at a time; each Group's line whole
}


def iter_prepared(rows: pl.DataFrame | None, ctx: BuildContext) -> Iterator[tuple[str, pl.DataFrame]]:
    """(type, frame) in systems.LOAD_ORDER, each built only when asked for.

    A caller that writes each frame away before asking for the next holds one type's JSON at a
    time instead of the whole month's (~2.6 GB at 1M members).
    """
    for resource_type, built in iter_encoded(rows, ctx):
        yield resource_type, built if isinstance(built, pl.DataFrame) else built.to_frame()


def iter_encoded(rows: pl.DataFrame | None, ctx: BuildContext) -> Iterator[tuple[str, pl.DataFrame | Encoding | GroupEncoding]]:
    """``iter_prepared``, with the ENCODERS' types as json.Encoding (text made part by part).

    pipeline.build_month stages these: the month's largest JSON (Patient, Coverage, Group:
    ~2.1 GB of text at 1M members) never sits in memory whole. Same bytes as ``iter_prepared``.
    """
    types = [t for t in LOAD_ORDER if t in BUILDERS]
    if rows is None or rows.height == 0:
        for resource_type in types:
            yield resource_type, empty_resources()
        return

    def built(resource_type: str, rows: pl.DataFrame) -> pl.DataFrame | Encoding | GroupEncoding:
        encoder = ENCODERS.get(resource_type)
        return encoder(rows, ctx) if encoder else BUILDERS[resource_type](rows, ctx)

    for resource_type in types[:-1]:
        # No local name for the frame: the generator must not keep it alive while the next builds.
        yield resource_type, built(resource_type, rows)
    last = built(types[-1], rows)
    # After the last builder the rows are done with: a caller that handed over its only reference
    # (pipeline.build_month) gets them freed before the last frame is written.
    rows = None
    yield types[-1], last
