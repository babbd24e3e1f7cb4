"""Organization (atr-organization): payers, provider organizations and settlement entities.

In: prepared rows (fhir/rows.py). Out: (id, json) per Organization, sorted by id.
* payer: one per payer_id; identifier (mapping's payer system), name (row payer_name, else
  BuildContext.payer_name), type ``pay``. It is every Coverage's payor and every Group's
  managingEntity.
* provider: one per organization NPI (provider_org_npi, or provider_npi on rows that name no
  practitioner), else per TIN; identifiers NPI and/or TIN, name, type ``prov``.
* settlement entity / ACO: one per payer + settlement_entity_id; identifier (mapping's
  settlement system), name.
All carry ``active: true`` (US Core Organization makes it 1..1). A name the rows do not give is
left out rather than invented; conform/ reports it.
"""

from __future__ import annotations

import polars as pl

from atr_pipeline.fhir.context import BuildContext
from atr_pipeline.fhir.json import Json, arr, concept, const, resource, system_identifier, text, to_frame
from atr_pipeline.fhir.rows import ORG_NPI, PAYER_ORG_ID, PROVIDER_ORG_ID, SETTLEMENT_ORG_ID, representative
from atr_pipeline.systems import CS_ORGANIZATION_TYPE, SYS_NPI, SYS_TIN


def payer_json(ctx: BuildContext) -> Json:
    return resource(
        "Organization",
        PAYER_ORG_ID,
        identifier=arr(system_identifier(ctx.systems.payer_id, "payer_id")),
        active=const(True),
        type=const([concept(CS_ORGANIZATION_TYPE, "pay", "Payer")]),
        name=text(pl.coalesce(pl.col("payer_name"), pl.lit(ctx.payer_name, dtype=pl.String()))),
    )


def provider_json(ctx: BuildContext) -> Json:
    return resource(
        "Organization",
        PROVIDER_ORG_ID,
        identifier=arr(system_identifier(SYS_NPI, ORG_NPI), system_identifier(SYS_TIN, "provider_tin")),
        active=const(True),
        type=const([concept(CS_ORGANIZATION_TYPE, "prov", "Healthcare Provider")]),
        name=text("provider_org_name"),
    )


def settlement_json(ctx: BuildContext) -> Json:
    # rows.prepare refuses settlement ids without a system, so the system is set when rows exist
    system = ctx.systems.settlement_entity_id or ""
    return resource(
        "Organization",
        SETTLEMENT_ORG_ID,
        identifier=arr(system_identifier(system, "settlement_entity_id")),
        active=const(True),
        name=text("settlement_entity_name"),
    )


def build_organizations(rows: pl.DataFrame, ctx: BuildContext) -> pl.DataFrame:
    frames = [
        to_frame(representative(rows, PAYER_ORG_ID), PAYER_ORG_ID, payer_json(ctx)),
        to_frame(representative(rows, PROVIDER_ORG_ID), PROVIDER_ORG_ID, provider_json(ctx)),
        to_frame(representative(rows, SETTLEMENT_ORG_ID), SETTLEMENT_ORG_ID, settlement_json(ctx)),
    ]
    return pl.concat(frames).sort("id")
