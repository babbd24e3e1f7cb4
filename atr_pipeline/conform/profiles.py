"""ATR 2.1.0 profile rules as plain data rules over one parsed resource dict.

In: a resource dict, its ``Type/id`` key, the profile it is checked against, and a ``Findings``.
Out: hits recorded on the ``Findings`` (rule ids from rules.py); nothing is returned or raised.
Refused: nothing; a malformed element (a string where an object belongs) is left to the R4
structure check, these rules only look at what has the expected shape.

Each function reads only the elements its profile constrains (ATR.md section 2 and the US Core
7.0.0 minimums the ATR profiles inherit), with simple dict access, so a Group with 500k members is
one loop over ``member``. Element paths in findings carry no indices and never a value.
"""

from __future__ import annotations

from collections.abc import Callable

from atr_pipeline import systems as S
from atr_pipeline.conform.findings import Findings
from atr_pipeline.systems import COVERAGE_STATUSES, GROUP_TYPES

ORG = frozenset({"Organization"})
PATIENT = frozenset({"Patient"})
COVERAGE = frozenset({"Coverage"})
PRACTITIONER = frozenset({"Practitioner"})
LOCATION = frozenset({"Location"})
PROVIDER = frozenset({"Organization", "Practitioner", "PractitionerRole"})
SUBSCRIBER = frozenset({"Patient", "RelatedPerson"})
PAYOR = frozenset({"Patient", "RelatedPerson", "Organization"})  # also policyHolder

CHANGE_TYPES = frozenset(S.CHANGE_TYPES)
LIST_STATUSES = frozenset(S.LIST_STATUSES)
GENDERS = frozenset(S.GENDERS)
RELATIONSHIPS = frozenset(S.RELATIONSHIPS)
PATIENT_SLICE_CODES = frozenset({S.ID_TYPE_MEDICARE, S.ID_TYPE_MEDICAID, S.ID_TYPE_MRN, S.ID_TYPE_MEMBER, S.ID_TYPE_SSN})
PATIENT_SINGLE_SLICES = (S.ID_TYPE_MEDICARE, S.ID_TYPE_MEDICAID, S.ID_TYPE_SSN)  # 0..1 slices

# The value[x] each ATR extension must carry, and where each may appear.
EXT_VALUE: dict[str, str] = {
    S.EXT_CHANGE_TYPE: "valueCode",
    S.EXT_COVERAGE_REFERENCE: "valueReference",
    S.EXT_ATTRIBUTED_PROVIDER: "valueReference",
    S.EXT_CONTRACT_VALIDITY_PERIOD: "valuePeriod",
    S.EXT_ATTRIBUTION_LIST_STATUS: "valueCode",
    S.EXT_INSURANCE_PRODUCT_TYPE: "valueCodeableConcept",
    S.EXT_ANY_RESOURCE: "valueReference",
    S.EXT_INTENDED_RECIPIENT: "valueIdentifier",
}
_ATR_EXT_PREFIX = S.ATR_SD + "/"


def ext_value(ext: dict, url: str, key: str, path: str, f: Findings) -> object:
    """The extension's value if it has exactly the expected value[x]; records ext.value-type otherwise."""
    expected = EXT_VALUE[url]
    value = ext.get(expected)
    if value is None or len(ext) != 2:
        # Slow path only when the common {url, value} shape does not hold.
        values = [k for k in ext if k.startswith("value")]
        if values != [expected]:
            f.add("ext.value-type", key, f"{path}.extension({url.rsplit('/', 1)[-1]})")
    return value


def misplaced_ext(url: object, key: str, path: str, f: Findings) -> None:
    """An extension not handled where it sits: ATR urls are either misplaced or misspelled."""
    if isinstance(url, str) and url.startswith(_ATR_EXT_PREFIX):
        name = url.rsplit("/", 1)[-1]
        rule = "ext.context" if url in EXT_VALUE else "ext.url.unknown"
        f.add(rule, key, f"{path}.extension({name})")


def check_root_extensions(res: dict, rtype: str, key: str, f: Findings) -> None:
    """Resource types without ATR extensions of their own: any ATR url at the root is misplaced."""
    for ext in _dicts(res.get("extension")):
        misplaced_ext(ext.get("url"), key, rtype, f)


def period(value: object, key: str, path: str, f: Findings) -> None:
    if isinstance(value, dict):
        start, end = value.get("start"), value.get("end")
        # Compare the date part only: a timezone offset must not flag a same-day period.
        if isinstance(start, str) and isinstance(end, str) and start[:10] > end[:10]:
            f.add("period.order", key, path)


def _dicts(value: object) -> list[dict]:
    if isinstance(value, list):
        # The valid case (all objects) returns the list itself: no copy on the hot path.
        for v in value:
            if not isinstance(v, dict):
                return [v for v in value if isinstance(v, dict)]
        return value
    return []


def _codings(concept: object) -> list[dict]:
    return _dicts(concept.get("coding")) if isinstance(concept, dict) else []


def check_group(res: dict, key: str, profile: str, f: Findings) -> None:
    atr = profile != S.PROFILE_PATIENT_LIST  # davinci-patient-list lacks the atr-group additions
    gtype = res.get("type")
    if gtype is None:
        f.add("group.type.cardinality", key, "Group.type")
    elif gtype not in GROUP_TYPES:
        f.add("group.type.binding", key, "Group.type")
    elif gtype != "person":
        f.add("group.type.fixed", key, "Group.type")
    if res.get("actual") is not True:
        f.add("group.actual.fixed", key, "Group.actual")
    managing = res.get("managingEntity")
    if managing is None:
        f.add("group.managingEntity.cardinality", key, "Group.managingEntity")
    else:
        f.reference(managing, ORG, key, "Group.managingEntity")
    if atr:
        meta = res.get("meta")
        if not isinstance(meta, dict) or not meta.get("lastUpdated"):
            f.add("group.meta.lastUpdated.cardinality", key, "Group.meta.lastUpdated")

    n_status = n_validity = 0
    for ext in _dicts(res.get("extension")):
        url = ext.get("url")
        if url == S.EXT_ATTRIBUTION_LIST_STATUS:
            n_status += 1
            code = ext_value(ext, url, key, "Group", f)
            if code is not None and code not in LIST_STATUSES:
                f.add("group.attributionListStatus.code", key, "Group.extension(ext-attributionListStatus).valueCode")
        elif url == S.EXT_CONTRACT_VALIDITY_PERIOD:
            n_validity += 1
            period(ext_value(ext, url, key, "Group", f), key, "Group.extension(ext-contractValidityPeriod).valuePeriod", f)
        elif url == S.EXT_INTENDED_RECIPIENT:
            ext_value(ext, url, key, "Group", f)
        else:
            misplaced_ext(url, key, "Group", f)
    if atr and n_status != 1:
        f.add("group.attributionListStatus.cardinality", key, "Group.extension(ext-attributionListStatus)")
    if n_validity > 1:
        f.add("group.contractValidityPeriod.cardinality", key, "Group.extension(ext-contractValidityPeriod)")

    for ident in _dicts(res.get("identifier")):
        system = ident.get("system")
        if system == S.SYS_NPI and not ident.get("value"):
            f.add("group.identifier.npi.value", key, "Group.identifier(npi).value")
        elif system == S.SYS_TIN and not ident.get("value"):
            f.add("group.identifier.tin.value", key, "Group.identifier(tin).value")

    members = res.get("member")
    if isinstance(members, list):
        _check_members(members, key, f)


def _check_members(members: list, key: str, f: Findings) -> None:
    # The hot loop for large Groups: locals, no per-member allocations on the valid path.
    add = f.add
    reference = f.reference
    ext_ct, ext_cov, ext_prov, ext_any = (
        S.EXT_CHANGE_TYPE,
        S.EXT_COVERAGE_REFERENCE,
        S.EXT_ATTRIBUTED_PROVIDER,
        S.EXT_ANY_RESOURCE,
    )
    for member in members:
        if not isinstance(member, dict):
            continue
        entity = member.get("entity")
        if entity is None:
            add("group.member.entity.cardinality", key, "Group.member.entity")
        else:
            reference(entity, PATIENT, key, "Group.member.entity")
        change = None
        n_ct = n_cov = n_prov = 0
        exts = member.get("extension")
        if isinstance(exts, list):
            for ext in exts:
                if not isinstance(ext, dict):
                    continue
                url = ext.get("url")
                if url == ext_ct:
                    n_ct += 1
                    change = ext_value(ext, url, key, "Group.member", f)
                elif url == ext_cov:
                    n_cov += 1
                    value = ext_value(ext, url, key, "Group.member", f)
                    if value is not None:
                        reference(value, COVERAGE, key, "Group.member.extension(ext-coverageReference).valueReference")
                elif url == ext_prov:
                    n_prov += 1
                    value = ext_value(ext, url, key, "Group.member", f)
                    if value is not None:
                        reference(value, PROVIDER, key, "Group.member.extension(ext-attributedProvider).valueReference")
                elif url == ext_any:
                    ext_value(ext, url, key, "Group.member", f)
                else:
                    misplaced_ext(url, key, "Group.member", f)
        if n_ct > 1:
            add("group.member.changeType.cardinality", key, "Group.member.extension(ext-changeType)")
        if n_cov > 1:
            add("group.member.coverageReference.cardinality", key, "Group.member.extension(ext-coverageReference)")
        if n_prov > 1:
            add("group.member.attributedProvider.cardinality", key, "Group.member.extension(ext-attributedProvider)")
        if change is not None and change not in CHANGE_TYPES:
            add("group.member.changeType.code", key, "Group.member.extension(ext-changeType).valueCode")
        inactive = member.get("inactive") is True
        if change == "dropped" and not inactive:
            add("group.member.dropped.inactive", key, "Group.member.inactive")
        elif inactive and change != "dropped" and change != "cancelled":
            add("group.member.inactive.dropped", key, "Group.member.extension(ext-changeType)")
        if "period" in member:
            period(member["period"], key, "Group.member.period", f)


def check_patient(res: dict, key: str, profile: str, f: Findings) -> None:
    identifiers = _dicts(res.get("identifier"))
    if not identifiers:
        f.add("patient.identifier.cardinality", key, "Patient.identifier")
    slice_counts: dict[str, int] = {}
    for ident in identifiers:
        if not ident.get("system") or not ident.get("value"):
            f.add("patient.identifier.system-value", key, "Patient.identifier")
        codings = _codings(ident.get("type"))
        code = next(
            (c.get("code") for c in codings if c.get("system") == S.CS_V2_0203 and c.get("code") in PATIENT_SLICE_CODES),
            None,
        )
        if code is not None:
            slice_counts[code] = slice_counts.get(code, 0) + 1
            if len(codings) != 1:
                f.add("patient.identifier.slice.coding-count", key, f"Patient.identifier({code}).type.coding")
    for code in PATIENT_SINGLE_SLICES:
        if slice_counts.get(code, 0) > 1:
            f.add("patient.identifier.slice.cardinality", key, f"Patient.identifier({code})")
    names = _dicts(res.get("name"))
    if not names:
        f.add("patient.name.cardinality", key, "Patient.name")
    for name in names:
        # us-core-6 also accepts a data-absent-reason extension in place of family/given.
        if not name.get("family") and not name.get("given") and "extension" not in name:
            f.add("patient.name.family-or-given", key, "Patient.name")
    gender = res.get("gender")
    if gender is None:
        f.add("patient.gender.cardinality", key, "Patient.gender")
    elif gender not in GENDERS:
        f.add("patient.gender.binding", key, "Patient.gender")
    check_root_extensions(res, "Patient", key, f)


def check_coverage(res: dict, key: str, profile: str, f: Findings) -> None:
    status = res.get("status")
    if status is None:
        f.add("coverage.status.cardinality", key, "Coverage.status")
    elif status not in COVERAGE_STATUSES:
        f.add("coverage.status.binding", key, "Coverage.status")
    elif status != "active":
        f.add("coverage.status.fixed", key, "Coverage.status")
    if not res.get("subscriberId"):
        f.add("coverage.subscriberId.cardinality", key, "Coverage.subscriberId")
    beneficiary = res.get("beneficiary")
    if beneficiary is None:
        f.add("coverage.beneficiary.cardinality", key, "Coverage.beneficiary")
    else:
        f.reference(beneficiary, PATIENT, key, "Coverage.beneficiary")
    if "period" not in res:
        f.add("coverage.period.cardinality", key, "Coverage.period")
    else:
        period(res["period"], key, "Coverage.period", f)
    payors = res.get("payor")
    if not isinstance(payors, list) or len(payors) != 1:
        f.add("coverage.payor.count", key, "Coverage.payor")
    for payor in _dicts(payors):
        f.reference(payor, PAYOR, key, "Coverage.payor")
    if "subscriber" in res:
        f.reference(res["subscriber"], SUBSCRIBER, key, "Coverage.subscriber")
    if "policyHolder" in res:
        f.reference(res["policyHolder"], PAYOR, key, "Coverage.policyHolder")

    n_mb = 0
    for ident in _dicts(res.get("identifier")):
        codings = _codings(ident.get("type"))
        if any(c.get("system") == S.CS_V2_0203 and c.get("code") == S.ID_TYPE_MEMBER for c in codings):
            n_mb += 1
            if len(codings) != 1:
                f.add("coverage.identifier.mb.coding-count", key, "Coverage.identifier(MB).type.coding")
            if not ident.get("system") or not ident.get("value"):
                f.add("coverage.identifier.mb.system-value", key, "Coverage.identifier(MB)")
    if n_mb > 1:
        f.add("coverage.identifier.mb.cardinality", key, "Coverage.identifier(MB)")

    n_plan = 0
    for cls in _dicts(res.get("class")):
        codings = _codings(cls.get("type"))
        if any(c.get("system") == S.CS_COVERAGE_CLASS and c.get("code") == "plan" for c in codings):
            n_plan += 1
            if len(codings) != 1:
                f.add("coverage.class.plan.coding-count", key, "Coverage.class(plan).type.coding")
            if not cls.get("value"):
                f.add("coverage.class.plan.value", key, "Coverage.class(plan).value")
    if n_plan > 1:
        f.add("coverage.class.plan.cardinality", key, "Coverage.class(plan)")

    n_product = 0
    for ext in _dicts(res.get("extension")):
        url = ext.get("url")
        if url == S.EXT_INSURANCE_PRODUCT_TYPE:
            n_product += 1
            for coding in _codings(ext_value(ext, url, key, "Coverage", f)):
                if coding.get("system") == S.CS_INSURANCE_PRODUCT_TYPE and coding.get("code") not in S.PRODUCT_TYPES:
                    f.add("coverage.insuranceProductType.code", key, "Coverage.extension(ext-insuranceProductType).valueCodeableConcept")
        else:
            misplaced_ext(url, key, "Coverage", f)
    if n_product > 1:
        f.add("coverage.insuranceProductType.cardinality", key, "Coverage.extension(ext-insuranceProductType)")
    for coding in _codings(res.get("relationship")):
        if coding.get("system") == S.CS_SUBSCRIBER_RELATIONSHIP and coding.get("code") not in RELATIONSHIPS:
            f.add("coverage.relationship.code", key, "Coverage.relationship")


def check_practitioner_role(res: dict, key: str, profile: str, f: Findings) -> None:
    if res.get("practitioner") is None:
        f.add("practitionerrole.practitioner.cardinality", key, "PractitionerRole.practitioner")
    else:
        f.reference(res["practitioner"], PRACTITIONER, key, "PractitionerRole.practitioner")
    if res.get("organization") is None:
        f.add("practitionerrole.organization.cardinality", key, "PractitionerRole.organization")
    else:
        f.reference(res["organization"], ORG, key, "PractitionerRole.organization")
    locations = res.get("location")
    if isinstance(locations, list):
        if len(locations) > 1:
            f.add("practitionerrole.location.cardinality", key, "PractitionerRole.location")
        for loc in locations:
            # Location is not among the types an ATR export must carry: check the form, not resolution.
            f.reference(loc, LOCATION, key, "PractitionerRole.location", resolve=False)
    check_root_extensions(res, "PractitionerRole", key, f)


def check_related_person(res: dict, key: str, profile: str, f: Findings) -> None:
    if res.get("patient") is None:
        f.add("relatedperson.patient.cardinality", key, "RelatedPerson.patient")
    else:
        f.reference(res["patient"], PATIENT, key, "RelatedPerson.patient")
    check_root_extensions(res, "RelatedPerson", key, f)


def check_organization(res: dict, key: str, profile: str, f: Findings) -> None:
    if not res.get("name"):
        f.add("organization.name.cardinality", key, "Organization.name")
    if res.get("active") is None:
        f.add("organization.active.cardinality", key, "Organization.active")
    check_root_extensions(res, "Organization", key, f)


def check_practitioner(res: dict, key: str, profile: str, f: Findings) -> None:
    if not _dicts(res.get("identifier")):
        f.add("practitioner.identifier.cardinality", key, "Practitioner.identifier")
    names = _dicts(res.get("name"))
    if not names:
        f.add("practitioner.name.cardinality", key, "Practitioner.name")
    for name in names:
        if not name.get("family"):
            f.add("practitioner.name.family", key, "Practitioner.name.family")
    check_root_extensions(res, "Practitioner", key, f)


def check_location(res: dict, key: str, profile: str, f: Findings) -> None:
    if not res.get("name"):
        f.add("location.name.cardinality", key, "Location.name")
    check_root_extensions(res, "Location", key, f)


TYPE_CHECKS: dict[str, Callable[[dict, str, str, Findings], None]] = {
    "Group": check_group,
    "Patient": check_patient,
    "Coverage": check_coverage,
    "PractitionerRole": check_practitioner_role,
    "RelatedPerson": check_related_person,
    "Organization": check_organization,
    "Practitioner": check_practitioner,
    "Location": check_location,
}
