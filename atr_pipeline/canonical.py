"""The canonical attribution row: the one schema every stage consumes.

Every payer layout (CSV, pipe, fixed-width; see ``mappings/``) is read into rows of this
shape by ``layouts/``. ``validate/`` checks them, ``history/`` stores them, ``fhir/`` turns
them into ATR resources. Nothing downstream of ``layouts/`` knows which layout a row came from.

A field is defined here once: its polars dtype, a description, and which ATR element it feeds.
Adding a field means adding one ``Field`` below; mappings may then fill it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import polars as pl


class Group(StrEnum):
    """Families of fields, used for docs and for change detection in history/."""

    LINEAGE = "lineage"
    PAYER = "payer"
    CONTRACT = "contract"
    PLAN = "plan"
    MEMBER = "member"
    DEMOGRAPHICS = "demographics"
    PROVIDER = "provider"
    ATTRIBUTION = "attribution"


@dataclass(frozen=True)
class Field:
    name: str
    dtype: pl.DataType
    group: Group
    description: str
    fhir: str = ""  # the ATR element path this field feeds, for docs and column lineage
    phi: bool = False  # never written to logs, metadata, errors or ids


S = pl.String()
D = pl.Date()

FIELDS: tuple[Field, ...] = (
    # lineage: where the row came from; never PHI
    Field("source_id", S, Group.LINEAGE, "Mapping id (the payer layout) the row was read with", ""),
    Field("file_name", S, Group.LINEAGE, "Base name of the landed file", ""),
    Field("file_sha256", S, Group.LINEAGE, "sha256 of the landed file's bytes", ""),
    Field("line_number", pl.Int64(), Group.LINEAGE, "1-based physical line number in the file", ""),
    Field("reporting_month", D, Group.LINEAGE, "First day of the month the file reports", ""),
    # payer
    Field("payer_id", S, Group.PAYER, "Payer identifier (NAIC, payer-assigned or constant)", "Organization(payer).identifier"),
    Field("payer_name", S, Group.PAYER, "Payer name", "Organization(payer).name"),
    # contract
    Field("contract_id", S, Group.CONTRACT, "Value-based contract identifier: one ATR Group per contract", "Group.identifier"),
    Field("contract_name", S, Group.CONTRACT, "Contract name", "Group.name"),
    Field("contract_start", D, Group.CONTRACT, "Contract validity start", "Group.extension:contractValidityPeriod.valuePeriod.start"),
    Field("contract_end", D, Group.CONTRACT, "Contract validity end", "Group.extension:contractValidityPeriod.valuePeriod.end"),
    Field("settlement_entity_id", S, Group.CONTRACT, "Settlement entity / ACO identifier", "Group.identifier"),
    Field("settlement_entity_name", S, Group.CONTRACT, "Settlement entity / ACO name", "Organization(settlement).name"),
    # plan
    Field("plan_id", S, Group.PLAN, "Health plan identifier", "Coverage.class:plan.value"),
    Field("plan_name", S, Group.PLAN, "Health plan name", "Coverage.class:plan.name"),
    Field("product_type", S, Group.PLAN, "Insurance product type code (plan-net InsuranceProductTypeCS)", "Coverage.extension:insuranceProductType"),
    Field("coverage_start", D, Group.PLAN, "Coverage (enrollment) start", "Coverage.period.start"),
    Field("coverage_end", D, Group.PLAN, "Coverage (enrollment) end", "Coverage.period.end"),
    # member identifiers
    Field("member_id", S, Group.MEMBER, "Payer member id", "Patient.identifier:MB, Coverage.identifier:MemberIdentifier", phi=True),
    Field("subscriber_id", S, Group.MEMBER, "Subscriber id (shared by dependents)", "Coverage.subscriberId", phi=True),
    Field("relationship", S, Group.MEMBER, "Relationship to subscriber (subscriber-relationship code)", "Coverage.relationship"),
    Field("mbi", S, Group.MEMBER, "Medicare Beneficiary Identifier", "Patient.identifier:MedicareIdentifier", phi=True),
    Field("medicaid_id", S, Group.MEMBER, "Medicaid id", "Patient.identifier:MedicaidIdentifier", phi=True),
    Field("mrn", S, Group.MEMBER, "Medical record number", "Patient.identifier:MR", phi=True),
    Field("ssn", S, Group.MEMBER, "Social security number when present", "Patient.identifier:SSNIdentifier", phi=True),
    # demographics
    Field("family_name", S, Group.DEMOGRAPHICS, "Member family name", "Patient.name.family", phi=True),
    Field("given_name", S, Group.DEMOGRAPHICS, "Member first given name", "Patient.name.given[0]", phi=True),
    Field("middle_name", S, Group.DEMOGRAPHICS, "Member middle name", "Patient.name.given[1]", phi=True),
    Field("name_prefix", S, Group.DEMOGRAPHICS, "Name prefix", "Patient.name.prefix", phi=True),
    Field("name_suffix", S, Group.DEMOGRAPHICS, "Name suffix", "Patient.name.suffix", phi=True),
    Field("gender", S, Group.DEMOGRAPHICS, "Administrative gender code (male|female|other|unknown)", "Patient.gender"),
    Field("birth_date", D, Group.DEMOGRAPHICS, "Birth date", "Patient.birthDate", phi=True),
    Field("deceased_date", D, Group.DEMOGRAPHICS, "Date of death when known", "Patient.deceasedDateTime", phi=True),
    Field("address_line1", S, Group.DEMOGRAPHICS, "Address line 1", "Patient.address.line[0]", phi=True),
    Field("address_line2", S, Group.DEMOGRAPHICS, "Address line 2", "Patient.address.line[1]", phi=True),
    Field("city", S, Group.DEMOGRAPHICS, "City", "Patient.address.city", phi=True),
    Field("state", S, Group.DEMOGRAPHICS, "US state (2-letter USPS code)", "Patient.address.state"),
    Field("postal_code", S, Group.DEMOGRAPHICS, "ZIP or ZIP+4", "Patient.address.postalCode", phi=True),
    Field("phone", S, Group.DEMOGRAPHICS, "Phone number", "Patient.telecom(phone)", phi=True),
    # attributed provider
    Field("provider_npi", S, Group.PROVIDER, "Attributed practitioner's NPI (or the organization's when no practitioner)",
          "Practitioner.identifier:NPI; Group.identifier:npi"),
    Field("provider_family_name", S, Group.PROVIDER, "Attributed practitioner family name", "Practitioner.name.family"),
    Field("provider_given_name", S, Group.PROVIDER, "Attributed practitioner given name", "Practitioner.name.given"),
    Field("provider_tin", S, Group.PROVIDER, "Attributed provider's tax id (TIN)", "Organization.identifier:TIN; Group.identifier:tin"),
    Field("provider_org_name", S, Group.PROVIDER, "Attributed provider organization name", "Organization(provider).name"),
    Field("provider_org_npi", S, Group.PROVIDER, "Attributed provider organization NPI", "Organization(provider).identifier:NPI"),
    # attribution
    Field("attribution_start", D, Group.ATTRIBUTION, "Attribution period start", "Group.member.period.start"),
    Field("attribution_end", D, Group.ATTRIBUTION, "Attribution period end", "Group.member.period.end"),
    Field("change_reason", S, Group.ATTRIBUTION, "Attribution or change reason as sent by the payer", ""),
    Field("risk_score", pl.Float64(), Group.ATTRIBUTION, "Member risk score", ""),
)

FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
CANONICAL_SCHEMA: pl.Schema = pl.Schema({f.name: f.dtype for f in FIELDS})
LINEAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.group is Group.LINEAGE)
# Fields a mapping may fill from the file (lineage is filled by the reader itself).
MAPPABLE_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.group is not Group.LINEAGE)
PHI_FIELDS: frozenset[str] = frozenset(f.name for f in FIELDS if f.phi)
DATE_FIELDS: frozenset[str] = frozenset(f.name for f in FIELDS if f.dtype == D)

# Problems found while reading a row (bad date, code outside the map...) travel with the row
# in this column, so validate/ can reject the row with the reason instead of losing it.
ISSUES_COLUMN = "_issues"
ISSUE_DTYPE = pl.List(pl.Struct({"field": pl.String(), "rule": pl.String(), "reason": pl.String()}))

# The business key of one ATR member entry: unique per file (validate/) and the diff key (history/).
MEMBER_ENTRY_KEY: tuple[str, ...] = ("member_id", "payer_id", "contract_id", "plan_id", "provider_npi")


def empty_frame(with_issues: bool = False) -> pl.DataFrame:
    schema = dict(CANONICAL_SCHEMA)
    if with_issues:
        schema[ISSUES_COLUMN] = ISSUE_DTYPE
    return pl.DataFrame(schema=schema)


def conform_columns(df: pl.DataFrame, *, keep_issues: bool = True) -> pl.DataFrame:
    """Return ``df`` with exactly the canonical columns, in order, with canonical dtypes.

    Missing canonical columns are added as nulls; extra columns are dropped (except the
    issues column when ``keep_issues``).
    """
    exprs = []
    for f in FIELDS:
        if f.name in df.columns:
            exprs.append(pl.col(f.name).cast(f.dtype))
        else:
            exprs.append(pl.lit(None, dtype=f.dtype).alias(f.name))
    if keep_issues and ISSUES_COLUMN in df.columns:
        exprs.append(pl.col(ISSUES_COLUMN))
    return df.select(exprs)


def schema_markdown() -> str:
    """The schema as a markdown table (README and Dagster metadata use this)."""
    lines = ["| field | type | group | description | ATR element |", "|---|---|---|---|---|"]
    for f in FIELDS:
        lines.append(f"| `{f.name}` | {f.dtype} | {f.group.value} | {f.description} | {f.fhir} |")
    return "\n".join(lines)


# One reject record per (row, problem). A row with three problems has three records; "rows
# rejected" counts distinct line numbers. Reasons never contain the offending value (PHI);
# the rejects CSV adds the raw record separately for the sender to fix and resend.
REJECT_SCHEMA: pl.Schema = pl.Schema(
    {
        "source_id": pl.String(),
        "file_name": pl.String(),
        "line_number": pl.Int64(),
        "field": pl.String(),
        "rule": pl.String(),
        "reason": pl.String(),
    }
)


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECT_SCHEMA)
