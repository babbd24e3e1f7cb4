"""The ATR reconciliation operations' FHIR side: Parameters in, identifiers out, Bundles back.

``$member-add`` / ``$member-remove`` Parameters are checked against the IG's combinations and
their references resolved to identifiers from what publish/ wrote (a Patient's member id, a
Coverage's plan, a provider's NPI); ``atr_pipeline.requests`` does the rest. ``$attribution-status``
is a read: it answers from the latest published Group version.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson

from atr_pipeline.api.catalog import CatalogView, GroupEntry
from atr_pipeline.api.fhir_errors import bad_request, not_found
from atr_pipeline.requests.model import MEMBER_ADD, MemberChange
from atr_pipeline.systems import CS_V2_0203, EXT_ATTRIBUTED_PROVIDER, EXT_COVERAGE_REFERENCE

NPI_SYSTEMS = ("http://hl7.org/fhir/sid/us-npi", "http://terminology.hl7.org/CodeSystem/NPI")  # the second: AWS HealthLake's doc
ADD_PARAMS = ("memberId", "providerNpi", "patientReference", "providerReference", "attributionPeriod")
REMOVE_PARAMS = ("memberId", "providerNpi", "patientReference", "providerReference", "coverageReference")
STATUS_PARAMS = ("memberId", "patientReference")
_PROVIDER_TYPES = ("Practitioner", "PractitionerRole", "Organization")


def parameters(raw: bytes, allowed: tuple[str, ...], operation: str) -> dict[str, Any]:
    """name -> value of a Parameters body (each at most once; unknown names refused)."""
    try:
        body = orjson.loads(raw) if raw.strip() else {"resourceType": "Parameters"}
    except orjson.JSONDecodeError:
        raise bad_request("the POST body is not JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request(f"${operation} takes a FHIR Parameters resource as its body")
    out: dict[str, Any] = {}
    for p in body.get("parameter", []):
        name = p.get("name") if isinstance(p, dict) else None
        if name not in allowed:
            raise bad_request(f"unknown ${operation} parameter {name!r}; allowed: {', '.join(allowed)}")
        if name in out:
            raise bad_request(f"${operation}: parameter {name} given twice (0..1)")
        values = [v for k, v in p.items() if k.startswith("value")]
        if len(values) != 1:
            raise bad_request(f"${operation}: parameter {name} needs exactly one value[x]")
        out[name] = values[0]
    return out


def _identifier(name: str, value: Any) -> tuple[str | None, str]:
    if not isinstance(value, dict) or not isinstance(value.get("value"), str) or not value["value"].strip():
        raise bad_request(f"{name} must be an Identifier with a value")
    system = value.get("system")
    return (system if isinstance(system, str) else None), value["value"].strip()


def _reference(name: str, value: Any, types: tuple[str, ...]) -> tuple[str, str]:
    ref = value.get("reference") if isinstance(value, dict) else None
    kind, _, rid = (ref or "").partition("/")
    if kind not in types or not rid or "/" in rid:
        raise bad_request(f"{name} must be a reference {' | '.join(t + '/<id>' for t in types)}")
    return kind, rid


def _period(value: Any) -> tuple[date | None, date | None]:
    if not isinstance(value, dict):
        raise bad_request("attributionPeriod must be a Period")
    try:
        start = date.fromisoformat(value["start"][:10]) if value.get("start") else None
        end = date.fromisoformat(value["end"][:10]) if value.get("end") else None
    except (TypeError, ValueError):
        raise bad_request("attributionPeriod start/end must be FHIR dates (YYYY-MM-DD)") from None
    if start and end and end < start:
        raise bad_request("attributionPeriod ends before it starts")
    return start, end


def check_combination(operation: str, params: dict[str, Any]) -> None:
    """The IG's SHALL combinations (ATR §4.2/4.3): one member form, its provider form, options."""
    by_id, by_ref = "memberId" in params, "patientReference" in params
    if by_id == by_ref:
        raise bad_request(f"${operation} needs exactly one of memberId or patientReference")
    if by_id and "providerReference" in params:
        raise bad_request(f"${operation}: with memberId name the provider by providerNpi")
    if by_ref and "providerNpi" in params:
        raise bad_request(f"${operation}: with patientReference name the provider by providerReference")
    if operation == MEMBER_ADD:
        if "providerNpi" not in params and "providerReference" not in params:
            raise bad_request("$member-add needs the attributed provider: memberId + providerNpi, or patientReference + providerReference")
    elif "coverageReference" in params and not by_ref:
        raise bad_request("$member-remove: coverageReference goes with patientReference (+ providerReference)")


def _lines(view: CatalogView, source: str, resource_type: str, rid: str) -> dict[str, Any] | None:
    for export in reversed([m for m in view.months if m.source == source]):
        line = export.find_line(resource_type, rid)
        if line is not None:
            return orjson.loads(line)
    return None


def _npi_of(view: CatalogView, source: str, kind: str, rid: str) -> str | None:
    resource = _lines(view, source, kind, rid)
    if resource is None:
        return None
    if kind == "PractitionerRole":
        for field in ("practitioner", "organization"):
            ref = (resource.get(field) or {}).get("reference", "")
            if "/" in ref:
                npi = _npi_of(view, source, *ref.split("/", 1))
                if npi:
                    return npi
        return None
    return next((i["value"] for i in resource.get("identifier", []) if i.get("system") in NPI_SYSTEMS), None)


def _member_of(view: CatalogView, source: str, patient_id: str) -> str | None:
    patient = _lines(view, source, "Patient", patient_id)
    for ident in (patient or {}).get("identifier", []):
        codes = [c.get("code") for c in (ident.get("type") or {}).get("coding", []) if c.get("system") == CS_V2_0203]
        if "MB" in codes:
            return ident.get("value")
    return None


def member_change(view: CatalogView, source: str, operation: str, params: dict[str, Any]) -> MemberChange:
    """The request as identifiers; a reference that resolves to nothing makes ``unresolved`` say so."""
    check_combination(operation, params)
    member_id = member_system = npi = plan = unresolved = None
    if "memberId" in params:
        member_system, member_id = _identifier("memberId", params["memberId"])
    if "providerNpi" in params:
        system, npi = _identifier("providerNpi", params["providerNpi"])
        if system is not None and system not in NPI_SYSTEMS:
            raise bad_request(f"providerNpi system must be {NPI_SYSTEMS[0]}")
    if "patientReference" in params:
        _, pid = _reference("patientReference", params["patientReference"], ("Patient",))
        member_id = _member_of(view, source, pid)
        if member_id is None:
            unresolved = "patientReference is not a Patient of this payer"
    if "providerReference" in params:
        kind, rid = _reference("providerReference", params["providerReference"], _PROVIDER_TYPES)
        npi = _npi_of(view, source, kind, rid)
        if npi is None and unresolved is None:
            unresolved = "providerReference is not a provider of this payer with an NPI"
    if "coverageReference" in params:
        _, cid = _reference("coverageReference", params["coverageReference"], ("Coverage",))
        coverage = _lines(view, source, "Coverage", cid) or {}
        beneficiary = (coverage.get("beneficiary") or {}).get("reference", "")
        plan = next((c.get("value") for c in coverage.get("class", [])
                     if any(x.get("code") == "plan" for x in (c.get("type") or {}).get("coding", []))), None)
        if (not coverage or plan is None or beneficiary != params["patientReference"].get("reference")) and unresolved is None:
            unresolved = "coverageReference is not a Coverage of that patient"
    start = end = None
    if "attributionPeriod" in params:
        start, end = _period(params["attributionPeriod"])
    return MemberChange(operation=operation, member_id=member_id, member_system=member_system, provider_npi=npi,
                        plan_id=plan, period_start=start, period_end=end, unresolved=unresolved)


def status_bundle(view: CatalogView, entry: GroupEntry, patient_id: str, base: str) -> dict[str, Any]:
    """``$attribution-status``: the member's Patient, Coverage(s) and attributed provider(s)."""
    group = orjson.loads(entry.line())
    mine = [m for m in group.get("member", []) if (m.get("entity") or {}).get("reference") == f"Patient/{patient_id}"]
    if not mine:
        raise not_found("that patient is not a member of this Group")
    refs: list[str] = [f"Patient/{patient_id}"]
    for m in mine:
        for ext in m.get("extension", []):
            if ext.get("url") in (EXT_COVERAGE_REFERENCE, EXT_ATTRIBUTED_PROVIDER):
                refs.append(ext["valueReference"]["reference"])
    entries = []
    for ref in dict.fromkeys(refs):
        kind, rid = ref.split("/", 1)
        line = entry.export.find_line(kind, rid)
        if line is not None:
            entries.append({"fullUrl": f"{base}/{ref}", "resource": orjson.loads(line)})
    return {"resourceType": "Bundle", "type": "collection", "timestamp": entry.last_updated, "entry": entries}
