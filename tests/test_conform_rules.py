"""Every conformance rule caught once on a hand-broken copy of a small valid ATR set.

``valid_set()`` is a complete ATR 2.1.0 export written by hand (payer and provider Organizations,
Practitioner, PractitionerRole, two Patients, a RelatedPerson subscriber, two Coverages, a Group with
one new and one dropped member); it must pass with zero findings, R4 structure included. Each case
then breaks one element and asserts the exact rule id, the exact example key, and that no other
rule fired except the ones the break necessarily implies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from atr_pipeline import systems as S
from atr_pipeline.conform import RULES, check_resources

NPI_PRACTITIONER = "1234567893"
NPI_ORG = "1987654328"
NPI_GROUP = "1456789019"
TIN = "123456789"
MEMBER_SYSTEM = "http://payer.example.org/member-id"


def _mb_identifier(value: str) -> dict:
    return {
        "type": {"coding": [{"system": S.CS_V2_0203, "code": S.ID_TYPE_MEMBER}]},
        "system": MEMBER_SYSTEM,
        "value": value,
    }


def _meta(rtype: str) -> dict:
    return {"lastUpdated": "2026-10-01T00:00:00Z", "profile": [S.PROFILE_BY_TYPE[rtype]]}


def valid_set() -> list[dict]:
    payer = {
        "resourceType": "Organization",
        "id": "org-payer",
        "meta": _meta("Organization"),
        "identifier": [{"system": "http://payer.example.org/payer-id", "value": "PAYER1"}],
        "active": True,
        "name": "Example Health Plan",
    }
    provider_org = {
        "resourceType": "Organization",
        "id": "org-prov",
        "meta": _meta("Organization"),
        "identifier": [{"system": S.SYS_NPI, "value": NPI_ORG}, {"system": S.SYS_TIN, "value": TIN}],
        "active": True,
        "name": "Example Medical Group",
    }
    practitioner = {
        "resourceType": "Practitioner",
        "id": "prac-1",
        "meta": _meta("Practitioner"),
        "identifier": [{"system": S.SYS_NPI, "value": NPI_PRACTITIONER}],
        "name": [{"family": "Testdoc", "given": ["Alex"]}],
    }
    role = {
        "resourceType": "PractitionerRole",
        "id": "role-1",
        "meta": _meta("PractitionerRole"),
        "practitioner": {"reference": "Practitioner/prac-1"},
        "organization": {"reference": "Organization/org-prov"},
    }
    patients = [
        {
            "resourceType": "Patient",
            "id": f"pat-{i}",
            "meta": _meta("Patient"),
            "identifier": [_mb_identifier(f"M00{i}")],
            "name": [{"family": f"Synthetic{i}", "given": ["Pat"]}],
            "gender": "female" if i == 1 else "male",
            "birthDate": "1970-01-0" + str(i),
        }
        for i in (1, 2)
    ]
    related = {
        "resourceType": "RelatedPerson",
        "id": "rp-1",
        "meta": _meta("RelatedPerson"),
        "patient": {"reference": "Patient/pat-2"},
        "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "SPS"}]}],
        "name": [{"family": "Synthetic2", "given": ["Sam"]}],
    }

    def coverage(i: int, subscriber: str, relationship: str) -> dict:
        return {
            "resourceType": "Coverage",
            "id": f"cov-{i}",
            "meta": _meta("Coverage"),
            "extension": [
                {
                    "url": S.EXT_INSURANCE_PRODUCT_TYPE,
                    "valueCodeableConcept": {"coding": [{"system": S.CS_INSURANCE_PRODUCT_TYPE, "code": "commppo"}]},
                }
            ],
            "identifier": [_mb_identifier(f"M00{i}")],
            "status": "active",
            "subscriber": {"reference": subscriber},
            "subscriberId": f"S00{i}",
            "beneficiary": {"reference": f"Patient/pat-{i}"},
            "relationship": {"coding": [{"system": S.CS_SUBSCRIBER_RELATIONSHIP, "code": relationship}]},
            "period": {"start": "2026-01-01", "end": "2026-12-31"},
            "payor": [{"reference": "Organization/org-payer"}],
            "class": [{"type": {"coding": [{"system": S.CS_COVERAGE_CLASS, "code": "plan"}]}, "value": "PLAN-A"}],
        }

    def member(i: int, change: str, provider: str, inactive: bool) -> dict:
        return {
            "extension": [
                {"url": S.EXT_CHANGE_TYPE, "valueCode": change},
                {"url": S.EXT_COVERAGE_REFERENCE, "valueReference": {"reference": f"Coverage/cov-{i}"}},
                {"url": S.EXT_ATTRIBUTED_PROVIDER, "valueReference": {"reference": provider}},
            ],
            "entity": {"reference": f"Patient/pat-{i}"},
            "period": {"start": "2026-01-01", "end": "2026-12-31"},
            "inactive": inactive,
        }

    group = {
        "resourceType": "Group",
        "id": "grp-1",
        "meta": _meta("Group"),
        "extension": [
            {"url": S.EXT_CONTRACT_VALIDITY_PERIOD, "valuePeriod": {"start": "2026-01-01", "end": "2026-12-31"}},
            {"url": S.EXT_ATTRIBUTION_LIST_STATUS, "valueCode": "final"},
        ],
        "identifier": [
            {"system": "http://payer.example.org/contract", "value": "C-100"},
            {"system": S.SYS_NPI, "value": NPI_GROUP},
            {"system": S.SYS_TIN, "value": TIN},
        ],
        "active": True,
        "type": "person",
        "actual": True,
        "name": "Contract C-100",
        "managingEntity": {"reference": "Organization/org-payer"},
        "member": [
            member(1, "new", "Practitioner/prac-1", False),
            member(2, "dropped", "PractitionerRole/role-1", True),
        ],
    }
    return [
        payer,
        provider_org,
        practitioner,
        role,
        *patients,
        related,
        coverage(1, "Patient/pat-1", "self"),
        coverage(2, "RelatedPerson/rp-1", "spouse"),
        group,
    ]


def by_id(resources: list[dict], key: str) -> dict:
    rtype, rid = key.split("/")
    return next(r for r in resources if r["resourceType"] == rtype and r.get("id") == rid)


def fired(report) -> dict[str, object]:
    return {r.rule: r for r in report.results}


def test_valid_set_has_no_findings_with_full_structure_check():
    report = check_resources(valid_set(), structural="all")
    assert report.results == []
    assert report.ok is True
    assert report.resources_checked == 10
    assert report.structurally_checked == 10
    assert report.by_type == {
        "Coverage": 2,
        "Group": 1,
        "Organization": 2,
        "Patient": 2,
        "Practitioner": 1,
        "PractitionerRole": 1,
        "RelatedPerson": 1,
    }


# Each case: rule id, the key its example must be, a mutation of the valid set, and the other
# rules the same break necessarily fires (e.g. R4 itself requires the element).
Mutation = Callable[[list[dict]], None]
CASES: list[tuple[str, str, Mutation, frozenset[str]]] = []


def case(rule: str, example: str, also: tuple[str, ...] = ()):
    def register(fn: Mutation) -> Mutation:
        CASES.append((rule, example, fn, frozenset(also)))
        return fn

    return register


def _group(rs):
    return by_id(rs, "Group/grp-1")


def _member_ext(rs, i, url):
    return next(e for e in _group(rs)["member"][i]["extension"] if e["url"] == url)


@case("json.null", "Patient/pat-1")
def _(rs):
    by_id(rs, "Patient/pat-1")["birthDate"] = None


@case("json.empty", "Patient/pat-2")
def _(rs):
    by_id(rs, "Patient/pat-2")["name"][0]["given"] = []


@case("resource.id.missing", "Practitioner/#3", also=("ref.unresolved",))
def _(rs):
    del by_id(rs, "Practitioner/prac-1")["id"]


@case("resource.id.duplicate", "Patient/pat-1")
def _(rs):
    rs.append(copy.deepcopy(by_id(rs, "Patient/pat-1")))


@case("resource.type.unknown", "Basic/b-1")
def _(rs):
    rs.append({"resourceType": "Basic", "id": "b-1", "code": {"text": "note"}})


@case("meta.profile.missing", "Patient/pat-1")
def _(rs):
    del by_id(rs, "Patient/pat-1")["meta"]["profile"]


@case("meta.profile.wrong", "Coverage/cov-2")
def _(rs):
    by_id(rs, "Coverage/cov-2")["meta"]["profile"] = [S.PROFILE_PATIENT]


@case("r4.structure", "Patient/pat-2")
def _(rs):
    by_id(rs, "Patient/pat-2")["favouriteColour"] = "blue"


@case("ref.literal", "Coverage/cov-1")
def _(rs):
    by_id(rs, "Coverage/cov-1")["beneficiary"] = {"reference": "urn:uuid:7f1c3a2e-0000-4000-8000-000000000001"}


@case("ref.target-type", "Group/grp-1")
def _(rs):
    _group(rs)["managingEntity"] = {"reference": "Practitioner/prac-1"}


@case("ref.unresolved", "Group/grp-1")
def _(rs):
    _group(rs)["member"][0]["entity"] = {"reference": "Patient/not-in-set"}


@case("ext.value-type", "Group/grp-1")
def _(rs):
    ext = _member_ext(rs, 0, S.EXT_CHANGE_TYPE)
    ext["valueString"] = ext.pop("valueCode")


@case("ext.context", "Group/grp-1")
def _(rs):
    _group(rs)["extension"].append({"url": S.EXT_CHANGE_TYPE, "valueCode": "new"})


@case("ext.url.unknown", "Coverage/cov-1")
def _(rs):
    by_id(rs, "Coverage/cov-1")["extension"][0]["url"] = S.ATR_SD + "/ext-insuranceproducttype"


@case("npi.format", "Practitioner/prac-1")
def _(rs):
    by_id(rs, "Practitioner/prac-1")["identifier"][0]["value"] = "12345"


@case("npi.check-digit", "Practitioner/prac-1")
def _(rs):
    by_id(rs, "Practitioner/prac-1")["identifier"][0]["value"] = "1234567890"


@case("tin.format", "Organization/org-prov")
def _(rs):
    by_id(rs, "Organization/org-prov")["identifier"][1]["value"] = "12-3456789"


@case("period.order", "Group/grp-1")
def _(rs):
    _group(rs)["member"][1]["period"] = {"start": "2026-12-31", "end": "2026-01-01"}


@case("text.mojibake", "Organization/org-payer")
def _(rs):
    by_id(rs, "Organization/org-payer")["name"] = "MÃ¼ller Health Plan"  # 'Müller' read as latin-1


@case("group.type.cardinality", "Group/grp-1", also=("r4.structure",))
def _(rs):
    del _group(rs)["type"]


@case("group.type.binding", "Group/grp-1")
def _(rs):
    _group(rs)["type"] = "robot"


@case("group.type.fixed", "Group/grp-1")
def _(rs):
    _group(rs)["type"] = "animal"


@case("group.actual.fixed", "Group/grp-1")
def _(rs):
    _group(rs)["actual"] = False


@case("group.managingEntity.cardinality", "Group/grp-1")
def _(rs):
    del _group(rs)["managingEntity"]


@case("group.meta.lastUpdated.cardinality", "Group/grp-1")
def _(rs):
    del _group(rs)["meta"]["lastUpdated"]


@case("group.attributionListStatus.cardinality", "Group/grp-1")
def _(rs):
    _group(rs)["extension"].pop(1)


@case("group.attributionListStatus.code", "Group/grp-1")
def _(rs):
    _group(rs)["extension"][1]["valueCode"] = "closed"


@case("group.contractValidityPeriod.cardinality", "Group/grp-1")
def _(rs):
    _group(rs)["extension"].append(copy.deepcopy(_group(rs)["extension"][0]))


@case("group.identifier.npi.value", "Group/grp-1")
def _(rs):
    del _group(rs)["identifier"][1]["value"]


@case("group.identifier.tin.value", "Group/grp-1")
def _(rs):
    del _group(rs)["identifier"][2]["value"]


@case("group.member.entity.cardinality", "Group/grp-1", also=("r4.structure",))
def _(rs):
    del _group(rs)["member"][0]["entity"]


@case("group.member.changeType.cardinality", "Group/grp-1")
def _(rs):
    _group(rs)["member"][0]["extension"].append({"url": S.EXT_CHANGE_TYPE, "valueCode": "new"})


@case("group.member.changeType.code", "Group/grp-1")
def _(rs):
    _member_ext(rs, 0, S.EXT_CHANGE_TYPE)["valueCode"] = "add"


@case("group.member.coverageReference.cardinality", "Group/grp-1")
def _(rs):
    _group(rs)["member"][0]["extension"].append(copy.deepcopy(_member_ext(rs, 0, S.EXT_COVERAGE_REFERENCE)))


@case("group.member.attributedProvider.cardinality", "Group/grp-1")
def _(rs):
    _group(rs)["member"][1]["extension"].append(copy.deepcopy(_member_ext(rs, 1, S.EXT_ATTRIBUTED_PROVIDER)))


@case("group.member.dropped.inactive", "Group/grp-1")
def _(rs):
    _group(rs)["member"][1]["inactive"] = False


@case("group.member.inactive.dropped", "Group/grp-1")
def _(rs):
    _group(rs)["member"][0]["inactive"] = True


@case("patient.identifier.cardinality", "Patient/pat-1")
def _(rs):
    del by_id(rs, "Patient/pat-1")["identifier"]


@case("patient.identifier.system-value", "Patient/pat-2")
def _(rs):
    del by_id(rs, "Patient/pat-2")["identifier"][0]["system"]


@case("patient.identifier.slice.coding-count", "Patient/pat-1")
def _(rs):
    by_id(rs, "Patient/pat-1")["identifier"][0]["type"]["coding"].append(
        {"system": "http://example.org/local-types", "code": "member"}
    )


@case("patient.identifier.slice.cardinality", "Patient/pat-1")
def _(rs):
    mc = {"type": {"coding": [{"system": S.CS_V2_0203, "code": S.ID_TYPE_MEDICARE}]}, "system": S.SYS_MBI}
    by_id(rs, "Patient/pat-1")["identifier"] += [dict(mc, value="1EG4TE5MK73"), dict(mc, value="1EG4TE5MK74")]


@case("patient.name.cardinality", "Patient/pat-1")
def _(rs):
    del by_id(rs, "Patient/pat-1")["name"]


@case("patient.name.family-or-given", "Patient/pat-2")
def _(rs):
    by_id(rs, "Patient/pat-2")["name"] = [{"text": "Pat Synthetic2"}]


@case("patient.gender.cardinality", "Patient/pat-1")
def _(rs):
    del by_id(rs, "Patient/pat-1")["gender"]


@case("patient.gender.binding", "Patient/pat-1")
def _(rs):
    by_id(rs, "Patient/pat-1")["gender"] = "F"


@case("coverage.status.cardinality", "Coverage/cov-1", also=("r4.structure",))
def _(rs):
    del by_id(rs, "Coverage/cov-1")["status"]


@case("coverage.status.binding", "Coverage/cov-1")
def _(rs):
    by_id(rs, "Coverage/cov-1")["status"] = "expired"


@case("coverage.status.fixed", "Coverage/cov-2")
def _(rs):
    by_id(rs, "Coverage/cov-2")["status"] = "cancelled"


@case("coverage.subscriberId.cardinality", "Coverage/cov-1")
def _(rs):
    del by_id(rs, "Coverage/cov-1")["subscriberId"]


@case("coverage.beneficiary.cardinality", "Coverage/cov-1", also=("r4.structure",))
def _(rs):
    del by_id(rs, "Coverage/cov-1")["beneficiary"]


@case("coverage.period.cardinality", "Coverage/cov-1")
def _(rs):
    del by_id(rs, "Coverage/cov-1")["period"]


@case("coverage.payor.count", "Coverage/cov-2")
def _(rs):
    by_id(rs, "Coverage/cov-2")["payor"].append({"reference": "Organization/org-prov"})


@case("coverage.identifier.mb.cardinality", "Coverage/cov-1")
def _(rs):
    cov = by_id(rs, "Coverage/cov-1")
    cov["identifier"].append(_mb_identifier("M999"))


@case("coverage.identifier.mb.coding-count", "Coverage/cov-1")
def _(rs):
    by_id(rs, "Coverage/cov-1")["identifier"][0]["type"]["coding"].append({"system": "http://example.org/t", "code": "x"})


@case("coverage.identifier.mb.system-value", "Coverage/cov-2")
def _(rs):
    del by_id(rs, "Coverage/cov-2")["identifier"][0]["system"]


@case("coverage.class.plan.cardinality", "Coverage/cov-1")
def _(rs):
    cov = by_id(rs, "Coverage/cov-1")
    cov["class"].append(dict(copy.deepcopy(cov["class"][0]), value="PLAN-B"))


@case("coverage.class.plan.coding-count", "Coverage/cov-1")
def _(rs):
    by_id(rs, "Coverage/cov-1")["class"][0]["type"]["coding"].append({"system": "http://example.org/t", "code": "y"})


@case("coverage.class.plan.value", "Coverage/cov-1", also=("r4.structure",))
def _(rs):
    del by_id(rs, "Coverage/cov-1")["class"][0]["value"]


@case("coverage.insuranceProductType.cardinality", "Coverage/cov-2")
def _(rs):
    cov = by_id(rs, "Coverage/cov-2")
    cov["extension"].append(copy.deepcopy(cov["extension"][0]))


@case("coverage.insuranceProductType.code", "Coverage/cov-1")
def _(rs):
    by_id(rs, "Coverage/cov-1")["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = "gold"


@case("coverage.relationship.code", "Coverage/cov-2")
def _(rs):
    by_id(rs, "Coverage/cov-2")["relationship"]["coding"][0]["code"] = "cousin"


@case("practitionerrole.practitioner.cardinality", "PractitionerRole/role-1")
def _(rs):
    del by_id(rs, "PractitionerRole/role-1")["practitioner"]


@case("practitionerrole.organization.cardinality", "PractitionerRole/role-1")
def _(rs):
    del by_id(rs, "PractitionerRole/role-1")["organization"]


@case("practitionerrole.location.cardinality", "PractitionerRole/role-1")
def _(rs):
    by_id(rs, "PractitionerRole/role-1")["location"] = [{"reference": "Location/l-1"}, {"reference": "Location/l-2"}]


@case("relatedperson.patient.cardinality", "RelatedPerson/rp-1", also=("r4.structure",))
def _(rs):
    del by_id(rs, "RelatedPerson/rp-1")["patient"]


@case("organization.name.cardinality", "Organization/org-payer")
def _(rs):
    del by_id(rs, "Organization/org-payer")["name"]


@case("organization.active.cardinality", "Organization/org-prov")
def _(rs):
    del by_id(rs, "Organization/org-prov")["active"]


@case("practitioner.identifier.cardinality", "Practitioner/prac-1")
def _(rs):
    del by_id(rs, "Practitioner/prac-1")["identifier"]


@case("practitioner.name.cardinality", "Practitioner/prac-1")
def _(rs):
    del by_id(rs, "Practitioner/prac-1")["name"]


@case("practitioner.name.family", "Practitioner/prac-1")
def _(rs):
    del by_id(rs, "Practitioner/prac-1")["name"][0]["family"]


@case("location.name.cardinality", "Location/loc-1")
def _(rs):
    rs.append({"resourceType": "Location", "id": "loc-1", "meta": _meta("Location"), "status": "active"})


@pytest.mark.parametrize(("rule", "example", "mutate", "also"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_caught_on_a_broken_resource(rule, example, mutate, also):
    resources = valid_set()
    mutate(resources)
    report = check_resources(resources, structural="all")
    hits = fired(report)
    assert rule in hits, f"{rule} not reported; got {sorted(hits)}"
    assert hits[rule].count == 1
    assert hits[rule].examples == [example]
    assert hits[rule].severity == RULES[rule].severity
    assert set(hits) == {rule, *also}
    assert report.ok is (RULES[rule].severity == "warning" and not also)


def test_unparseable_item_is_json_parse_with_its_position():
    resources: list = valid_set()
    resources.append(b'{"resourceType": "Patient", "id": ')
    report = check_resources(resources, structural="none")
    assert [(r.rule, r.count, r.examples) for r in report.results] == [("json.parse", 1, ["Resource/#11"])]


def test_changetype_add_counts_every_member_and_names_the_path():
    resources = valid_set()
    for m in _group(resources)["member"]:
        next(e for e in m["extension"] if e["url"] == S.EXT_CHANGE_TYPE)["valueCode"] = "add"
        m["inactive"] = False
    hits = fired(check_resources(resources, structural="none"))
    assert hits["group.member.changeType.code"].count == 2
    assert hits["group.member.changeType.code"].paths == ["Group.member.extension(ext-changeType).valueCode"]
    # inactive=false with a non-dropped code is consistent; 'add' is only the code rule
    assert set(hits) == {"group.member.changeType.code"}


def test_reference_resolution_does_not_depend_on_order():
    forward = valid_set()
    backward = list(reversed(valid_set()))
    assert check_resources(forward, structural="none").results == []
    assert check_resources(backward, structural="none").results == []


def test_unresolved_references_count_each_referrer_and_skip_when_disabled():
    resources = [r for r in valid_set() if r["resourceType"] != "Coverage"]
    report = check_resources(resources, structural="none")
    unresolved = fired(report)["ref.unresolved"]
    assert unresolved.count == 2  # the two coverageReference extensions
    assert unresolved.examples == ["Group/grp-1"]
    assert unresolved.paths == ["Group.member.extension(ext-coverageReference).valueReference.reference"]
    assert check_resources(resources, structural="none", resolve_references=False).results == []


def test_versioned_reference_resolves():
    resources = valid_set()
    _group(resources)["member"][0]["entity"] = {"reference": "Patient/pat-1/_history/3"}
    assert check_resources(resources, structural="none").results == []


def test_primitive_array_nulls_paired_with_underscore_twin_are_legal():
    resources = valid_set()
    pat = by_id(resources, "Patient/pat-1")
    pat["name"][0]["given"] = ["Pat", None]
    pat["name"][0]["_given"] = [None, {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}]
    hits = fired(check_resources(resources, structural="none"))
    assert "json.null" not in hits


def test_null_string_inside_a_value_is_not_a_null():
    resources = valid_set()
    by_id(resources, "Organization/org-payer")["name"] = 'Plan "null" [] {} ""'
    assert check_resources(resources, structural="all").results == []


def test_npi_inside_an_identifier_reference_is_checked():
    resources = valid_set()
    _member_ext(resources, 0, S.EXT_ATTRIBUTED_PROVIDER)["valueReference"] = {
        "reference": "Practitioner/prac-1",
        "identifier": {"system": S.SYS_NPI, "value": "1234567890"},
    }
    hit = fired(check_resources(resources, structural="none"))["npi.check-digit"]
    assert (hit.count, hit.examples) == (1, ["Group/grp-1"])
    assert hit.paths == ["Group.member.extension.valueReference.identifier"]


def test_patient_list_group_is_checked_by_its_own_profile():
    resources = valid_set()
    grp = _group(resources)
    grp["meta"] = {"profile": [S.PROFILE_PATIENT_LIST]}  # no lastUpdated, no list status: both optional there
    grp["extension"] = [e for e in grp["extension"] if e["url"] != S.EXT_ATTRIBUTION_LIST_STATUS]
    assert check_resources(resources, structural="all").results == []


def test_malformed_shape_does_not_crash_the_rules():
    resources = valid_set()
    _group(resources)["member"][0]["extension"] = "not a list"
    by_id(resources, "Coverage/cov-1")["payor"] = "Organization/org-payer"
    hits = fired(check_resources(resources, structural="all"))
    assert hits["coverage.payor.count"].examples == ["Coverage/cov-1"]
    assert hits["r4.structure"].examples == ["Coverage/cov-1", "Group/grp-1"]  # input order


def test_catalogue_is_fully_exercised():
    export_rules = {
        "export.file-missing",
        "export.count-mismatch",
        "export.type-mismatch",
        "export.id-mismatch",
        "export.blank-line",
        "export.file-unlisted",
        "export.output-empty",
        "export.type-absent",
    }  # tests/test_conform_export.py
    tested = {c[0] for c in CASES} | {"json.parse"} | export_rules
    assert tested == set(RULES)


def test_empty_array_with_whitespace_in_non_compact_text_is_found():
    text = b'{"resourceType": "Basic", "id": "b-2", "code": {"text": "x"}, "identifier": [ ]}'
    hits = fired(check_resources([text], structural="none"))
    assert (hits["json.empty"].examples, hits["json.empty"].paths) == (["Basic/b-2"], ["Basic.identifier"])
    assert set(hits) == {"json.empty", "resource.type.unknown"}
