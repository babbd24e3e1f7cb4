"""The IG's own examples (tests/data/ig, copied from Da Vinci ATR 2.1.0) through the checker.

The examples declare no meta.profile, so they run with ``assume_profiles=True``. The correct ones
pass; the IG's known faults are flagged: changeType ``add`` on Group/fullexample and NPI 9941339108
(Group/fullexample, RelatedPerson/1, the patient-list example) failing its check digit, while
Practitioner/1's NPI 9941339100 passes.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from stdnum import luhn

from atr_pipeline import systems as S
from atr_pipeline.conform import check_resources

IG = Path(__file__).parent / "data" / "ig"
FHIR_NS = "{http://hl7.org/fhir}"


def examples() -> dict[str, dict]:
    out = {}
    for path in sorted((IG / "examples").glob("*.json")):
        res = json.loads(path.read_text(encoding="utf-8"))
        out[f"{res['resourceType']}/{res['id']}"] = res
    return out


def fired(report) -> dict:
    return {r.rule: r for r in report.results}


def test_example_set_flags_exactly_the_known_faults():
    report = check_resources(list(examples().values()), structural="all", assume_profiles=True)
    hits = fired(report)
    assert set(hits) == {"group.member.changeType.code", "npi.check-digit"}
    change = hits["group.member.changeType.code"]
    assert (change.count, change.examples) == (3, ["Group/fullexample"])
    npi = hits["npi.check-digit"]
    assert npi.count == 3
    assert set(npi.examples) == {"Group/fullexample", "Group/davincipatientlistexample", "RelatedPerson/1"}
    assert "Practitioner/1" not in npi.examples
    assert report.resources_checked == 15
    assert report.structurally_checked == 15
    assert report.ok is False


def test_correct_examples_pass_one_by_one():
    faulty = {"Group/fullexample", "Group/davincipatientlistexample", "RelatedPerson/1"}
    for key, res in examples().items():
        if key in faulty:
            continue
        report = check_resources([res], structural="all", assume_profiles=True, resolve_references=False)
        assert report.results == [], key


def test_practitioner_npi_passes_and_group_npi_fails_the_check_digit():
    ex = examples()
    prac = check_resources([ex["Practitioner/1"]], assume_profiles=True, resolve_references=False)
    assert prac.results == []
    group = check_resources([ex["Group/fullexample"]], assume_profiles=True, resolve_references=False)
    npi = fired(group)["npi.check-digit"]
    assert (npi.count, npi.examples, npi.paths) == (1, ["Group/fullexample"], ["Group.identifier"])


def test_fullexample_with_new_instead_of_add_and_a_valid_npi_passes():
    ex = examples()
    group = ex["Group/fullexample"]
    for member in group["member"]:
        member["extension"][0]["valueCode"] = "new"
    group["identifier"][0]["value"] = "1234567893"
    report = check_resources(list(ex.values()), assume_profiles=True)
    assert set(fired(report)) == {"npi.check-digit"}  # RelatedPerson/1 and the patient list keep the bad NPI
    assert set(fired(report)["npi.check-digit"].examples) == {"RelatedPerson/1", "Group/davincipatientlistexample"}


def test_examples_without_profile_report_missing_profile_unless_assumed():
    report = check_resources(list(examples().values()), structural="none")
    missing = fired(report)["meta.profile.missing"]
    # every example except the patient-list Group, which declares davinci-patient-list
    assert missing.count == 14
    assert "Group/davincipatientlistexample" not in missing.examples


def test_references_across_the_example_set_resolve():
    report = check_resources(list(examples().values()), structural="none", assume_profiles=True)
    assert "ref.unresolved" not in fired(report)


def test_removing_the_payer_organization_leaves_its_referrers_unresolved():
    ex = examples()
    del ex["Organization/1"]
    hit = fired(check_resources(list(ex.values()), structural="none", assume_profiles=True))["ref.unresolved"]
    # managingEntity of both Groups, Coverage/2.payor, PractitionerRole/1.organization
    assert hit.count == 4
    assert set(hit.examples) == {"Group/fullexample", "Group/davincipatientlistexample", "Coverage/2", "PractitionerRole/1"}


def test_removing_a_coverage_leaves_the_member_coverage_reference_unresolved():
    ex = examples()
    del ex["Coverage/3"]
    hit = fired(check_resources(list(ex.values()), structural="none", assume_profiles=True))["ref.unresolved"]
    assert (hit.count, hit.examples) == (1, ["Group/fullexample"])
    assert hit.paths == ["Group.member.extension(ext-coverageReference).valueReference.reference"]


def _codes(xml_name: str) -> tuple[str, ...]:
    root = ET.parse(IG / "definitions" / xml_name).getroot()
    return tuple(c.find(f"{FHIR_NS}code").get("value") for c in root.findall(f"{FHIR_NS}concept"))


def test_code_lists_match_the_ig_code_systems():
    assert sorted(_codes("codesystem-atr-changetype.xml")) == sorted(S.CHANGE_TYPES)
    assert sorted(_codes("codesystem-atr-attribution-list-status.xml")) == sorted(S.LIST_STATUSES)


def _practitioner(npi: str) -> dict:
    return {
        "resourceType": "Practitioner",
        "id": "p",
        "meta": {"profile": [S.PROFILE_PRACTITIONER]},
        "identifier": [{"system": S.SYS_NPI, "value": npi}],
        "name": [{"family": "Doe"}],
    }


@given(st.text(alphabet="0123456789", min_size=9, max_size=9), st.integers(min_value=1, max_value=9))
def test_npi_check_digit_property(base, shift):
    good = base + luhn.calc_check_digit("80840" + base)
    assert check_resources([_practitioner(good)], structural="none").results == []
    bad = good[:-1] + str((int(good[-1]) + shift) % 10)
    hits = fired(check_resources([_practitioner(bad)], structural="none"))
    assert set(hits) == {"npi.check-digit"}
