"""Baseline for bench_fhir.py: the straightforward per-row mapper fhir/ replaces.

A canonical CSV is read with the csv module; for every row, fhir.resources R4B models
(Patient, Coverage, RelatedPerson for dependents, Practitioner, Organization and a Group member)
are built, validated and dumped with ``model_dump_json``; each contract's Group is validated and
dumped at the end. Ids are the same keyed hashes as fhir/ so the work compared is the mapping,
not the id scheme. Not used by the pipeline.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.group import Group, GroupMember
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.relatedperson import RelatedPerson

from atr_pipeline.fhir.ids import resource_id
from atr_pipeline.layouts.spec import IdentifierSystems
from atr_pipeline.systems import (
    CS_COVERAGE_CLASS,
    CS_SUBSCRIBER_RELATIONSHIP,
    CS_V2_0203,
    EXT_ATTRIBUTED_PROVIDER,
    EXT_CHANGE_TYPE,
    EXT_COVERAGE_REFERENCE,
    PROFILE_BY_TYPE,
    SYS_MBI,
    SYS_NPI,
)

KEY = b"bench-key"


def _v(row: dict[str, str], name: str) -> str | None:
    value = row.get(name, "").strip()
    return value or None


def _identifier(code: str, system: str, value: str | None) -> list[dict]:
    if not value:
        return []
    return [{"type": {"coding": [{"system": CS_V2_0203, "code": code}]}, "system": system, "value": value}]


def map_csv(path: Path, systems: IdentifierSystems) -> int:
    """Map every row; returns the number of resources dumped."""
    dumped = 0
    groups: dict[str, list[GroupMember]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            payer, member = _v(row, "payer_id"), _v(row, "member_id")
            pid = resource_id(KEY, "Patient", payer, member)
            name = {"family": _v(row, "family_name"), "given": [g for g in (_v(row, "given_name"), _v(row, "middle_name")) if g]}
            patient = Patient.model_validate({
                "id": pid,
                "meta": {"profile": [PROFILE_BY_TYPE["Patient"]]},
                "identifier": _identifier("MB", systems.member_id, member) + _identifier("MC", SYS_MBI, _v(row, "mbi")),
                "name": [{k: v for k, v in name.items() if v}],
                "gender": _v(row, "gender") or "unknown",
                "birthDate": _v(row, "birth_date"),
                "address": [{"line": [_v(row, "address_line1")], "city": _v(row, "city"), "state": _v(row, "state"),
                             "postalCode": _v(row, "postal_code"), "country": "US"}],
            })
            patient.model_dump_json()
            dumped += 1
            cid = resource_id(KEY, "Coverage", payer, member, _v(row, "plan_id"))
            payer_ref = {"reference": f"Organization/{resource_id(KEY, 'Organization', 'payer', payer)}"}
            subscriber = {"reference": f"Patient/{pid}"}
            if _v(row, "relationship") not in (None, "self"):
                rp = RelatedPerson.model_validate({
                    "id": resource_id(KEY, "RelatedPerson", payer, _v(row, "subscriber_id"), member),
                    "meta": {"profile": [PROFILE_BY_TYPE["RelatedPerson"]]},
                    "identifier": [{"system": systems.member_id, "value": _v(row, "subscriber_id")}],
                    "patient": {"reference": f"Patient/{pid}"},
                })
                rp.model_dump_json()
                dumped += 1
                subscriber = {"reference": f"RelatedPerson/{rp.id}"}
            coverage = Coverage.model_validate({
                "id": cid,
                "meta": {"profile": [PROFILE_BY_TYPE["Coverage"]]},
                "identifier": _identifier("MB", systems.member_id, member),
                "status": "active",
                "subscriber": subscriber,
                "subscriberId": _v(row, "subscriber_id") or member,
                "beneficiary": {"reference": f"Patient/{pid}"},
                "relationship": {"coding": [{"system": CS_SUBSCRIBER_RELATIONSHIP, "code": _v(row, "relationship") or "self"}]},
                "period": {"start": _v(row, "coverage_start") or _v(row, "attribution_start")},
                "payor": [payer_ref],
                "class": [{"type": {"coding": [{"system": CS_COVERAGE_CLASS, "code": "plan"}]}, "value": _v(row, "plan_id") or "unknown"}],
            })
            coverage.model_dump_json()
            dumped += 1
            provider_ref = None
            if _v(row, "provider_npi") and _v(row, "provider_family_name"):
                prac = Practitioner.model_validate({
                    "id": resource_id(KEY, "Practitioner", _v(row, "provider_npi")),
                    "meta": {"profile": [PROFILE_BY_TYPE["Practitioner"]]},
                    "identifier": [{"system": SYS_NPI, "value": _v(row, "provider_npi")}],
                    "name": [{"family": _v(row, "provider_family_name")}],
                })
                prac.model_dump_json()
                dumped += 1
                provider_ref = f"Practitioner/{prac.id}"
            if _v(row, "provider_org_npi"):
                org = Organization.model_validate({
                    "id": resource_id(KEY, "Organization", "provider", "npi", _v(row, "provider_org_npi")),
                    "meta": {"profile": [PROFILE_BY_TYPE["Organization"]]},
                    "identifier": [{"system": SYS_NPI, "value": _v(row, "provider_org_npi")}],
                    "active": True,
                    "name": _v(row, "provider_org_name"),
                })
                org.model_dump_json()
                dumped += 1
                provider_ref = provider_ref or f"Organization/{org.id}"
            extension = [
                {"url": EXT_CHANGE_TYPE, "valueCode": _v(row, "change_type")},
                {"url": EXT_COVERAGE_REFERENCE, "valueReference": {"reference": f"Coverage/{cid}"}},
            ]
            if provider_ref:
                extension.append({"url": EXT_ATTRIBUTED_PROVIDER, "valueReference": {"reference": provider_ref}})
            member_entry = GroupMember.model_validate({
                "extension": extension,
                "entity": {"reference": f"Patient/{pid}"},
                "period": {"start": _v(row, "attribution_start"), "end": _v(row, "attribution_end")},
                "inactive": _v(row, "inactive") == "true",
            })
            groups.setdefault(_v(row, "contract_id") or "", []).append(member_entry)
    for contract, entries in sorted(groups.items()):
        group = Group.model_validate({
            "id": resource_id(KEY, "Group", "ACME", contract),
            "meta": {"profile": [PROFILE_BY_TYPE["Group"]]},
            "identifier": [{"system": systems.contract_id, "value": contract}],
            "active": True, "type": "person", "actual": True, "quantity": len(entries),
            "member": [e.model_dump() for e in entries],
        })
        group.model_dump_json()
        dumped += 1
    return dumped
