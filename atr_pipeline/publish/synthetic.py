"""Small, valid, entirely made-up ATR resources for loader tests, benchmarks and demos.

In:  how many members, how many contracts (Groups).
Out: type -> DataFrame(id, json) in the shape the fhir/ stage hands to ``write_bulk_export``.
Nothing here comes from real data: names are "Test", member ids are sequence numbers under an
example.org system, NPIs are generated with a valid Luhn check digit.
"""

from __future__ import annotations

import uuid

import orjson
import polars as pl
from stdnum import luhn

from atr_pipeline import systems

_NS = uuid.UUID("6f1c3a52-4f0e-4d71-9a55-9d3c6c0e0b7e")  # namespace of synthetic ids only
_MEMBER_SYSTEM = "http://example.org/synthetic-payer/member-id"
_CONTRACT_SYSTEM = "http://example.org/synthetic-payer/contract-id"
_LAST_UPDATED = "2026-11-01T00:00:00Z"


def synthetic_id(kind: str, n: int, seed: str = "") -> str:
    return str(uuid.uuid5(_NS, f"{seed}:{kind}:{n}"))


def _npi(n: int) -> str:
    body = f"1{n:08d}"
    return body + luhn.calc_check_digit("80840" + body)


def _meta(resource_type: str) -> dict:
    return {"profile": [systems.PROFILE_BY_TYPE[resource_type]]}


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [r["id"] for r in rows], "json": [orjson.dumps(r).decode() for r in rows]},
        schema={"id": pl.String, "json": pl.String},
    ).sort("id")


def synthetic_resources(members: int, groups: int = 1, *, seed: str = "", practitioners: int = 3) -> dict[str, pl.DataFrame]:
    """``members`` Patients with one Coverage each, spread over ``groups`` contracts."""
    sid = lambda kind, n: synthetic_id(kind, n, seed)  # noqa: E731
    payer = {
        "resourceType": "Organization",
        "id": sid("org", 0),
        "meta": _meta("Organization"),
        "active": True,
        "identifier": [{"system": "http://example.org/synthetic-payer/payer-id", "value": "PAYER-0"}],
        "type": [{"coding": [{"system": systems.CS_ORGANIZATION_TYPE, "code": "pay"}]}],
        "name": "Synthetic Payer",
    }
    provider_org = {
        "resourceType": "Organization",
        "id": sid("org", 1),
        "meta": _meta("Organization"),
        "active": True,
        "identifier": [{"system": systems.SYS_TIN, "value": "000000001"}],
        "type": [{"coding": [{"system": systems.CS_ORGANIZATION_TYPE, "code": "prov"}]}],
        "name": "Synthetic Clinic",
    }
    practitioner_rows = []
    role_rows = []
    for p in range(practitioners):
        practitioner_rows.append(
            {
                "resourceType": "Practitioner",
                "id": sid("pract", p),
                "meta": _meta("Practitioner"),
                "identifier": [{"system": systems.SYS_NPI, "value": _npi(p)}],
                "name": [{"family": "Test", "given": [f"Doc{p}"]}],
            }
        )
        role_rows.append(
            {
                "resourceType": "PractitionerRole",
                "id": sid("role", p),
                "meta": _meta("PractitionerRole"),
                "practitioner": {"reference": f"Practitioner/{sid('pract', p)}"},
                "organization": {"reference": f"Organization/{provider_org['id']}"},
            }
        )
    patients = []
    coverages = []
    related = []
    for m in range(members):
        patient_id = sid("patient", m)
        patients.append(
            {
                "resourceType": "Patient",
                "id": patient_id,
                "meta": _meta("Patient"),
                "identifier": [
                    {
                        "type": {"coding": [{"system": systems.CS_V2_0203, "code": systems.ID_TYPE_MEMBER}]},
                        "system": _MEMBER_SYSTEM,
                        "value": f"M{m:08d}",
                    }
                ],
                "name": [{"family": "Test", "given": [f"Member{m}"]}],
                "gender": systems.GENDERS[m % 4],
                "birthDate": f"19{50 + m % 50:02d}-01-01",
            }
        )
        subscriber = {"reference": f"Patient/{patient_id}"}
        relationship = "self"
        if m % 10 == 9:  # every tenth member is a dependant of a RelatedPerson subscriber
            rp_id = sid("related", m)
            related.append(
                {
                    "resourceType": "RelatedPerson",
                    "id": rp_id,
                    "meta": _meta("RelatedPerson"),
                    "patient": {"reference": f"Patient/{patient_id}"},
                    "name": [{"family": "Test", "given": [f"Parent{m}"]}],
                }
            )
            subscriber = {"reference": f"RelatedPerson/{rp_id}"}
            relationship = "child"
        coverages.append(
            {
                "resourceType": "Coverage",
                "id": sid("coverage", m),
                "meta": _meta("Coverage"),
                "identifier": [
                    {
                        "type": {"coding": [{"system": systems.CS_V2_0203, "code": systems.ID_TYPE_MEMBER}]},
                        "system": _MEMBER_SYSTEM,
                        "value": f"M{m:08d}",
                    }
                ],
                "status": "active",
                "subscriber": subscriber,
                "subscriberId": f"M{m:08d}",
                "beneficiary": {"reference": f"Patient/{patient_id}"},
                "relationship": {"coding": [{"system": systems.CS_SUBSCRIBER_RELATIONSHIP, "code": relationship}]},
                "period": {"start": "2026-01-01", "end": "2026-12-31"},
                "payor": [{"reference": f"Organization/{payer['id']}"}],
                "class": [
                    {
                        "type": {"coding": [{"system": systems.CS_COVERAGE_CLASS, "code": "plan"}]},
                        "value": "PLAN-1",
                    }
                ],
            }
        )
    group_rows = []
    for g in range(groups):
        member_entries = []
        for m in range(g, members, groups):
            member_entries.append(
                {
                    "extension": [
                        {"url": systems.EXT_CHANGE_TYPE, "valueCode": "new"},
                        {"url": systems.EXT_COVERAGE_REFERENCE, "valueReference": {"reference": f"Coverage/{sid('coverage', m)}"}},
                        {
                            "url": systems.EXT_ATTRIBUTED_PROVIDER,
                            "valueReference": {"reference": f"PractitionerRole/{sid('role', m % practitioners)}"},
                        },
                    ],
                    "entity": {"reference": f"Patient/{sid('patient', m)}"},
                    "period": {"start": "2026-01-01", "end": "2026-12-31"},
                }
            )
        group_rows.append(
            {
                "resourceType": "Group",
                "id": sid("group", g),
                "meta": {"profile": [systems.PROFILE_GROUP], "lastUpdated": _LAST_UPDATED},
                "extension": [
                    {"url": systems.EXT_ATTRIBUTION_LIST_STATUS, "valueCode": "draft"},
                    {"url": systems.EXT_CONTRACT_VALIDITY_PERIOD, "valuePeriod": {"start": "2026-01-01", "end": "2026-12-31"}},
                ],
                "identifier": [{"system": _CONTRACT_SYSTEM, "value": f"C{g:04d}"}],
                "active": True,
                "type": "person",
                "actual": True,
                "name": f"Synthetic contract {g}",
                "managingEntity": {"reference": f"Organization/{payer['id']}"},
                "quantity": len(member_entries),
                "member": member_entries,
            }
        )
    frames = {
        "Organization": _frame([payer, provider_org]),
        "Practitioner": _frame(practitioner_rows),
        "PractitionerRole": _frame(role_rows),
        "Patient": _frame(patients),
        "RelatedPerson": _frame(related),
        "Coverage": _frame(coverages),
        "Group": _frame(group_rows),
    }
    return {t: f for t, f in frames.items() if f.height}


def synthetic_errors(count: int) -> list[bytes]:
    """OperationOutcome lines as validate/ would emit for rejects (line numbers only, no PHI)."""
    return [
        orjson.dumps(
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "invalid",
                        "diagnostics": f"synthetic.csv line {i + 2}: member_id missing",
                        "expression": ["member_id"],
                    }
                ],
            }
        )
        for i in range(count)
    ]
