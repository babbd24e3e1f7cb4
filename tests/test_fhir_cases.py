"""The hand-made member frame behind the FHIR golden files, and element-level checks on it.

Other tests/test_fhir_*.py import ``members()``, ``context()`` and ``parse()`` from here.
Every value is synthetic. NPIs pass the Luhn check with prefix 80840.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from atr_pipeline.canonical import CANONICAL_SCHEMA
from atr_pipeline.fhir.build import BuildContext, build_resources
from atr_pipeline.fhir.ids import resource_id
from atr_pipeline.layouts.spec import IdentifierSystems, RecipientIdentifier

KEY = b"test-id-key-not-secret"
SYSTEMS = IdentifierSystems(
    member_id="https://payer.example.org/fhir/sid/member-id",
    payer_id="https://payer.example.org/fhir/sid/payer-id",
    contract_id="https://payer.example.org/fhir/sid/contract-id",
    plan_id="https://payer.example.org/fhir/sid/plan-id",
    settlement_entity_id="https://payer.example.org/fhir/sid/aco-id",
    mrn="https://clinic.example.org/fhir/sid/mrn",
    medicaid_id="https://medicaid.example.org/fhir/sid/medicaid-id",
)
NPI_SMITH, NPI_JONES, NPI_UNNAMED, NPI_LEE = "1234567893", "1987654328", "1555555550", "1444444446"
ORG_NPI_MAIN, ORG_NPI_VALLEY, ORG_NPI_EAST = "1666666668", "1777777776", "1888888884"

C1 = {"contract_id": "VBC-001", "contract_name": "Acme Primary Care 2026", "contract_start": date(2026, 1, 1),
      "contract_end": date(2026, 12, 31), "settlement_entity_id": "ACO-77", "settlement_entity_name": "Acme ACO"}
C2 = {"contract_id": "VBC-002"}
PLAN_A = {"plan_id": "PLAN-A", "plan_name": "Acme Advantage", "product_type": "mediadv"}
PLAN_B = {"plan_id": "PLAN-B", "plan_name": "Acme PPO", "product_type": "commppo"}
SMITH_MAIN = {"provider_npi": NPI_SMITH, "provider_family_name": "Smith", "provider_given_name": "Ann",
              "provider_org_npi": ORG_NPI_MAIN, "provider_tin": "123456789", "provider_org_name": "Main Street Clinic"}
JONES_MAIN = {**SMITH_MAIN, "provider_npi": NPI_JONES, "provider_family_name": "Jones", "provider_given_name": "Bo"}
LEE_EAST = {"provider_npi": NPI_LEE, "provider_family_name": "Lee", "provider_org_npi": ORG_NPI_EAST,
            "provider_org_name": "East Side Medical"}
ATTR = {"attribution_start": date(2026, 1, 1)}

# One dict per member entry; fields not given are null.
ROWS: list[dict[str, Any]] = [
    # 1-2: a subscriber with full demographics attributed to two providers in one contract
    {**C1, **PLAN_A, **SMITH_MAIN, **ATTR, "member_id": "M001", "subscriber_id": "M001", "relationship": "self",
     "payer_name": "Acme Health", "mbi": "1EG4TE5MK73", "ssn": "123456789", "mrn": "MRN-9", "family_name": "Rivera",
     "given_name": "Carmen", "middle_name": "L", "name_prefix": "Ms", "name_suffix": "Jr", "gender": "female",
     "birth_date": date(1950, 4, 2), "address_line1": "1 Main St", "address_line2": "Apt 2", "city": "Springfield",
     "state": "IL", "postal_code": "62701", "phone": "555-0100", "coverage_start": date(2025, 1, 1),
     "coverage_end": date(2026, 12, 31), "change_type": "new"},
    {**C1, **PLAN_A, **JONES_MAIN, **ATTR, "member_id": "M001", "subscriber_id": "M001", "relationship": "self",
     "family_name": "Rivera", "given_name": "Carmen", "gender": "female", "birth_date": date(1950, 4, 2),
     "coverage_start": date(2025, 1, 1), "coverage_end": date(2026, 12, 31), "change_type": "changed"},
    # 3: a child of M001: RelatedPerson named from M001's row
    {**C1, **PLAN_A, **SMITH_MAIN, **ATTR, "member_id": "M002", "subscriber_id": "M001", "relationship": "child",
     "family_name": "Rivera", "given_name": "Dana", "gender": "female", "birth_date": date(2012, 9, 9), "change_type": "new"},
    # 4: a spouse whose subscriber is not a member row: RelatedPerson without a name
    {**C1, **PLAN_B, **SMITH_MAIN, **ATTR, "member_id": "M003", "subscriber_id": "S900", "relationship": "spouse",
     "family_name": "Okafor", "given_name": "Eze", "gender": "male", "birth_date": date(1961, 1, 31), "change_type": "nochange"},
    # 5: dropped from last month: inactive, attribution ended
    {**C1, **PLAN_A, **JONES_MAIN, "member_id": "M004", "family_name": "Novak", "gender": "male",
     "birth_date": date(1944, 2, 29), "attribution_start": date(2025, 7, 1), "attribution_end": date(2026, 2, 28),
     "change_type": "dropped", "inactive": True, "reporting_month": date(2026, 2, 1)},
    # 6: attributed to an organization only (provider_npi is the organization's NPI)
    {**C1, **PLAN_A, **ATTR, "member_id": "M005", "family_name": "Hale", "gender": "other", "provider_npi": ORG_NPI_VALLEY,
     "provider_tin": "987654321", "provider_org_name": "Valley Health", "change_type": "new"},
    # 7: a practitioner NPI without a name, at a known organization: attributed to the organization
    {**C1, **PLAN_A, **ATTR, "member_id": "M006", "given_name": "Ivo", "gender": "unknown", "provider_npi": NPI_UNNAMED,
     "provider_org_npi": ORG_NPI_MAIN, "provider_tin": "123456789", "provider_org_name": "Main Street Clinic",
     "change_type": "new"},
    # 8: missing optional fields: no plan, no provider, no gender, no dates but attribution start
    {**C1, **ATTR, "member_id": "M007", "family_name": "Quist", "change_type": "new"},
    # 9: deceased, Medicaid id, TIN-only provider organization
    {**C1, "plan_id": "PLAN-C", "product_type": "medicaid", **ATTR, "member_id": "M008", "family_name": "Berg",
     "gender": "male", "deceased_date": date(2026, 2, 14), "medicaid_id": "MCD-55", "provider_tin": "555443333",
     "provider_org_name": "Solo Practice", "change_type": "changed"},
    # 10: relationship unknown, subscriber id = member id; a named practitioner with no organization
    {**C1, **PLAN_A, **ATTR, "member_id": "M009", "subscriber_id": "M009", "family_name": "Tran", "gender": "female",
     "provider_npi": NPI_LEE, "provider_family_name": "Lee", "change_type": "new"},
    # 11: M001 again in a second contract, same plan: same Patient and Coverage
    {**C2, **PLAN_A, **LEE_EAST, "member_id": "M001", "subscriber_id": "M001", "relationship": "self",
     "family_name": "Rivera", "given_name": "Carmen", "gender": "female", "birth_date": date(1950, 4, 2),
     "coverage_start": date(2025, 1, 1), "coverage_end": date(2026, 12, 31), "attribution_start": date(2026, 2, 1),
     "change_type": "new"},
    # 12: relationship other: RelatedPerson without relationship coding
    {**C2, **PLAN_B, **LEE_EAST, "member_id": "M010", "subscriber_id": "S777", "relationship": "other",
     "family_name": "Ueda", "gender": "female", "attribution_start": date(2026, 3, 1), "attribution_end": date(2026, 12, 31),
     "change_type": "new"},
    # 13: dropped with the inactive flag missing: still inactive
    {**C2, **PLAN_B, **LEE_EAST, "member_id": "M012", "family_name": "Vega", "gender": "male",
     "attribution_start": date(2025, 1, 1), "attribution_end": date(2026, 1, 31), "change_type": "dropped", "inactive": None},
    # 14: a dependent whose subscriber id is unknown: no subscriber element, subscriberId = member id
    {**C2, **PLAN_B, **LEE_EAST, "member_id": "M013", "relationship": "child", "family_name": "Wong", "gender": "male",
     "attribution_start": date(2026, 3, 1), "change_type": "new"},
]


def members() -> pl.DataFrame:
    records = []
    for i, row in enumerate(ROWS):
        rec = {name: None for name in CANONICAL_SCHEMA.names()}
        rec.update({"source_id": "acme_csv", "file_name": "acme_202603.csv", "file_sha256": "0" * 64,
                    "line_number": i + 2, "reporting_month": date(2026, 3, 1), "payer_id": "ACME"})
        rec["inactive"] = False
        rec.update(row)
        records.append(rec)
    schema = {**dict(CANONICAL_SCHEMA), "change_type": pl.String(), "inactive": pl.Boolean()}
    return pl.DataFrame(records, schema=schema)


def context(**over: Any) -> BuildContext:
    base: dict[str, Any] = {
        "id_key": KEY,
        "systems": SYSTEMS,
        "transaction_time": datetime(2026, 3, 5, 12, 0, 0, tzinfo=UTC),
        "list_status": "draft",
        "group_versions": {"VBC-001": 3},
        "intended_recipient": RecipientIdentifier(system="http://hl7.org/fhir/sid/us-npi", value=ORG_NPI_MAIN),
        "payer_name": "Acme Health Plan",
    }
    base.update(over)
    return BuildContext(**base)


def build() -> dict[str, pl.DataFrame]:
    return build_resources(members(), context())


def parse(frames: dict[str, pl.DataFrame]) -> dict[str, dict[str, dict[str, Any]]]:
    """type -> id -> resource dict."""
    return {t: {i: json.loads(j) for i, j in df.iter_rows()} for t, df in frames.items()}


def _pid(member_id: str) -> str:
    return resource_id(KEY, "Patient", "ACME", member_id)


def _by_member(resources: dict[str, dict[str, Any]], member_id: str) -> dict[str, Any]:
    return resources[_pid(member_id)]


# ---------------------------------------------------------------------------- element checks

RES = parse(build())


def test_resource_counts() -> None:
    counts = {t: len(v) for t, v in RES.items()}
    # Organizations: payer, ACO, Main Street (NPI), Valley (NPI), Solo (TIN), East Side (NPI)
    assert counts == {"Organization": 6, "Practitioner": 3, "PractitionerRole": 3, "Patient": 12,
                      "RelatedPerson": 3, "Coverage": 12, "Group": 2}


def test_patient_identifiers_one_coding_each() -> None:
    p = _by_member(RES["Patient"], "M001")
    types = [(i["type"]["coding"][0]["code"], i["system"], i["value"]) for i in p["identifier"]]
    assert types == [("MB", SYSTEMS.member_id, "M001"), ("MC", "http://hl7.org/fhir/sid/us-mbi", "1EG4TE5MK73"),
                     ("MR", SYSTEMS.mrn, "MRN-9"), ("SB", "http://hl7.org/fhir/sid/us-ssn", "123456789")]
    assert all(len(i["type"]["coding"]) == 1 for i in p["identifier"])
    assert p["name"] == [{"family": "Rivera", "given": ["Carmen", "L"], "prefix": ["Ms"], "suffix": ["Jr"]}]
    assert p["address"] == [{"line": ["1 Main St", "Apt 2"], "city": "Springfield", "state": "IL", "postalCode": "62701", "country": "US"}]
    assert p["telecom"] == [{"system": "phone", "value": "555-0100"}]
    assert p["birthDate"] == "1950-04-02"


def test_patient_fallbacks_and_deceased() -> None:
    m7 = _by_member(RES["Patient"], "M007")
    assert m7["gender"] == "unknown" and "birthDate" not in m7 and "address" not in m7
    m8 = _by_member(RES["Patient"], "M008")
    assert m8["deceasedDateTime"] == "2026-02-14"
    assert [i["type"]["coding"][0]["code"] for i in m8["identifier"]] == ["MB", "MA"]


def _coverage(member_id: str, plan_id: str | None) -> dict[str, Any]:
    return RES["Coverage"][resource_id(KEY, "Coverage", "ACME", member_id, plan_id)]


def test_coverage_dependent_points_to_related_person() -> None:
    cov = _coverage("M002", "PLAN-A")
    rp_id = resource_id(KEY, "RelatedPerson", "ACME", "M001", "M002")
    assert cov["subscriber"] == {"reference": f"RelatedPerson/{rp_id}"}
    assert cov["subscriberId"] == "M001"
    assert cov["relationship"]["coding"] == [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "child"}]
    rp = RES["RelatedPerson"][rp_id]
    assert rp["patient"] == {"reference": f"Patient/{_pid('M002')}"}
    assert rp["name"] == [{"family": "Rivera", "given": ["Carmen", "L"], "prefix": ["Ms"], "suffix": ["Jr"]}]
    assert rp["relationship"][0]["coding"][0]["code"] == "PRN"


def test_coverage_self_and_fallbacks() -> None:
    cov = _coverage("M001", "PLAN-A")
    assert cov["subscriber"] == {"reference": f"Patient/{_pid('M001')}"}
    assert cov["period"] == {"start": "2025-01-01", "end": "2026-12-31"}
    assert cov["class"][0]["value"] == "PLAN-A" and cov["class"][0]["name"] == "Acme Advantage"
    assert cov["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "mediadv"
    payer = resource_id(KEY, "Organization", "payer", "ACME")
    assert cov["payor"] == [{"reference": f"Organization/{payer}"}]
    m7 = _coverage("M007", None)
    assert m7["period"] == {"start": "2026-01-01"} and "class" not in m7 and "extension" not in m7
    assert m7["subscriber"] == {"reference": f"Patient/{_pid('M007')}"}
    m13 = _coverage("M013", "PLAN-B")
    assert "subscriber" not in m13 and m13["subscriberId"] == "M013"
    m9 = _coverage("M009", "PLAN-A")
    assert m9["subscriber"] == {"reference": f"Patient/{_pid('M009')}"}


def test_group_header_and_members() -> None:
    gid = resource_id(KEY, "Group", "ACME", "VBC-001")
    g = RES["Group"][gid]
    assert g["meta"] == {"versionId": "3", "lastUpdated": "2026-03-05T12:00:00Z",
                         "profile": ["http://hl7.org/fhir/us/davinci-atr/StructureDefinition/atr-group"]}
    assert [e["url"].rsplit("/", 1)[1] for e in g["extension"]] == [
        "ext-contractValidityPeriod", "ext-attributionListStatus", "atr-intended-recipient-identifier-extension"]
    assert g["extension"][0]["valuePeriod"] == {"start": "2026-01-01", "end": "2026-12-31"}
    npi, tin = "http://hl7.org/fhir/sid/us-npi", "urn:oid:2.16.840.1.113883.4.4"
    assert [(i["system"], i["value"]) for i in g["identifier"]] == [
        (SYSTEMS.contract_id, "VBC-001"), (SYSTEMS.settlement_entity_id, "ACO-77"), (npi, ORG_NPI_MAIN),
        (npi, ORG_NPI_VALLEY), (tin, "123456789"), (tin, "555443333"), (tin, "987654321")]
    assert len(g["member"]) == 10 and g["quantity"] == 9
    dropped = [m for m in g["member"] if m["inactive"]]
    assert len(dropped) == 1 and dropped[0]["extension"][0]["valueCode"] == "dropped"
    assert dropped[0]["period"] == {"start": "2025-07-01", "end": "2026-02-28"}
    g2 = RES["Group"][resource_id(KEY, "Group", "ACME", "VBC-002")]
    assert g2["meta"]["versionId"] == "1" and "name" not in g2 and g2["quantity"] == 3
    assert [m["inactive"] for m in g2["member"]].count(True) == 1


def test_attributed_provider_choice() -> None:
    g = RES["Group"][resource_id(KEY, "Group", "ACME", "VBC-001")]
    by_patient: dict[str, list[str]] = {}
    for m in g["member"]:
        prov = [e["valueReference"]["reference"] for e in m["extension"] if e["url"].endswith("ext-attributedProvider")]
        by_patient.setdefault(m["entity"]["reference"], []).extend(prov)
    kind = {p: [r.split("/")[0] for r in refs] for p, refs in by_patient.items()}
    assert kind[f"Patient/{_pid('M001')}"] == ["PractitionerRole", "PractitionerRole"]
    assert kind[f"Patient/{_pid('M005')}"] == ["Organization"]  # org-only provider
    assert kind[f"Patient/{_pid('M006')}"] == ["Organization"]  # unnamed practitioner
    assert kind[f"Patient/{_pid('M009')}"] == ["Practitioner"]  # no organization
    aco = resource_id(KEY, "Organization", "settlement", "ACME", "ACO-77")
    assert by_patient[f"Patient/{_pid('M007')}"] == [f"Organization/{aco}"]  # no provider: settlement entity


def test_payer_name_prefers_rows_over_context() -> None:
    payer = RES["Organization"][resource_id(KEY, "Organization", "payer", "ACME")]
    assert payer["name"] == "Acme Health" and payer["type"][0]["coding"][0]["code"] == "pay"
    frame = members().with_columns(pl.lit(None, dtype=pl.String()).alias("payer_name"))
    again = parse(build_resources(frame, context()))
    assert again["Organization"][resource_id(KEY, "Organization", "payer", "ACME")]["name"] == "Acme Health Plan"


def test_refusals_name_fields_not_values() -> None:
    import pytest

    from atr_pipeline.fhir.rows import FhirBuildError

    no_medicaid = SYSTEMS.model_copy(update={"medicaid_id": None})
    with pytest.raises(FhirBuildError, match=r"1 row\(s\) carry medicaid_id but the mapping sets no identifier_systems.medicaid_id") as err:
        build_resources(members(), context(systems=no_medicaid))
    assert "MCD-55" not in str(err.value)
    bad = members().with_columns(pl.when(pl.col("member_id") == "M001").then(pl.lit("add")).otherwise(pl.col("change_type")).alias("change_type"))
    with pytest.raises(FhirBuildError, match=r"3 row\(s\) have a change_type outside"):
        build_resources(bad, context())
    with pytest.raises(FhirBuildError, match=r"lack column\(s\) \['inactive'\]"):
        build_resources(members().drop("inactive"), context())
    with pytest.raises(FhirBuildError, match="list_status 'closed'"):
        build_resources(members(), context(list_status="closed"))


def test_empty_input_gives_empty_frames() -> None:
    out = build_resources(members().head(0), context())
    assert list(out) == ["Organization", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Coverage", "Group"]
    assert all(df.height == 0 and df.columns == ["id", "json"] for df in out.values())
