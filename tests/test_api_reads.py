"""FHIR reads on a live `atr serve`: CapabilityStatement, Group search, read/vread/_history, per-Group access,
versions across published months, `final` after finalize, and a month published while the server runs."""

from __future__ import annotations

import httpx
import orjson
import pytest
from api_server import (
    ACME_CONTRACT_SYSTEM,
    NPI,
    ClientKey,
    atr,
    group_ids,
    live_server,
    publish,
    register,
)

from atr_pipeline.systems import EXT_ATTRIBUTION_LIST_STATUS


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    publish(home, "2026-08", "2026-09")
    one, two, both = ClientKey(), ClientKey("ES384"), ClientKey()
    register(home, one, f"{ACME_CONTRACT_SYSTEM}|VBC25-0001")
    register(home, two, f"{ACME_CONTRACT_SYSTEM}|VBC25-0002")
    register(home, both, f"{ACME_CONTRACT_SYSTEM}|VBC25-0001", f"{ACME_CONTRACT_SYSTEM}|VBC25-0002")
    with live_server(home) as base:
        yield home, base, {"one": one, "two": two, "both": both}


def get(base: str, key: ClientKey, path: str, **params) -> httpx.Response:
    return httpx.get(f"{base}/{path}", params=params, headers={"Authorization": f"Bearer {key.token(base)}"}, timeout=30)


def status_of(group: dict) -> str:
    return next(e["valueCode"] for e in group["extension"] if e["url"] == EXT_ATTRIBUTION_LIST_STATUS)


def test_capability_statement_instantiates_the_atr_producer_and_lists_only_what_is_served(served):
    _, base, _ = served
    cs = httpx.get(f"{base}/metadata").json()
    assert cs["instantiates"] == ["http://hl7.org/fhir/us/davinci-atr/CapabilityStatement/atr-producer"]
    assert cs["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert set(resources) == {"Group", "Patient", "Coverage", "RelatedPerson", "Practitioner", "PractitionerRole", "Organization", "Location",
                              "Subscription"}
    group = resources["Group"]
    assert {i["code"] for i in group["interaction"]} == {"search-type", "read", "vread", "history-instance", "create"}
    assert {p["name"] for p in group["searchParam"]} == {"identifier", "characteristic", "characteristic-value", "name"}
    ops = {o["name"]: o["definition"] for o in group["operation"]}
    assert ops["davinci-data-export"] == "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export"
    assert set(ops) == {"davinci-data-export", "export", "member-add", "member-remove", "confirm-attribution-list",
                        "attribution-status"}
    assert {i["code"] for i in resources["Patient"]["interaction"]} == {"read", "vread", "history-instance"}


def test_search_by_contract_npi_and_tin_returns_only_the_clients_groups(served):
    home, base, keys = served
    ids = group_ids(home, "2026-09")
    bundle = get(base, keys["one"], "Group", identifier=f"{ACME_CONTRACT_SYSTEM}|VBC25-0001").json()
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["id"] == ids["VBC25-0001"]
    npi = next(i["value"] for i in bundle["entry"][0]["resource"]["identifier"] if i["system"] == NPI)
    assert get(base, keys["one"], "Group", identifier=f"{NPI}|{npi}").json()["total"] == 1
    tin = next(i["value"] for i in bundle["entry"][0]["resource"]["identifier"] if i["system"] == "urn:oid:2.16.840.1.113883.4.4")
    assert get(base, keys["one"], "Group", identifier=f"urn:oid:2.16.840.1.113883.4.4|{tin}").json()["total"] == 1
    # the other contract exists but is not this client's: not found by search
    assert get(base, keys["one"], "Group", identifier=f"{ACME_CONTRACT_SYSTEM}|VBC25-0002").json()["total"] == 0
    assert get(base, keys["one"], "Group").json()["total"] == 1
    assert get(base, keys["both"], "Group").json()["total"] == 2


def test_search_by_name_summary_and_paging(served):
    _, base, keys = served
    bundle = get(base, keys["both"], "Group", name="value-based contract", _summary="true", _count="1").json()
    assert bundle["total"] == 2 and len(bundle["entry"]) == 1
    first = bundle["entry"][0]["resource"]
    assert "member" not in first and first["meta"]["tag"][-1]["code"] == "SUBSETTED"
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert "next" in links and "previous" not in links
    page2 = httpx.get(links["next"], headers={"Authorization": f"Bearer {keys['both'].token(base)}"}).json()
    assert len(page2["entry"]) == 1 and page2["entry"][0]["resource"]["id"] != first["id"]
    assert "next" not in {link["relation"] for link in page2["link"]}
    assert get(base, keys["both"], "Group", **{"name:exact": "Value-Based Contract 2"}).json()["total"] == 1
    assert get(base, keys["both"], "Group", name="nothing like it").json()["total"] == 0


def test_characteristic_searches_and_unsupported_parameters(served):
    _, base, keys = served
    # the fixture contracts carry no characteristic: a valid query matches nothing
    assert get(base, keys["both"], "Group", characteristic="http://example.org|attributed-to").json()["total"] == 0
    assert get(base, keys["both"], "Group", **{"characteristic-value": "attributed-to$true"}).json()["total"] == 0
    bad = get(base, keys["both"], "Group", **{"characteristic-value": "no-dollar"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    bad = get(base, keys["both"], "Group", member="Patient/x")
    assert bad.status_code == 400 and "not supported" in bad.json()["issue"][0]["diagnostics"]


def test_read_of_another_payers_group_is_404_with_operation_outcome(served):
    home, base, keys = served
    other = group_ids(home, "2026-09")["VBC25-0002"]
    for path in (f"Group/{other}", f"Group/{other}/_history", f"Group/{other}/_history/1", f"Group/{other}/$davinci-data-export"):
        res = get(base, keys["one"], path)
        assert res.status_code == 404, path
        assert res.json()["issue"][0]["code"] == "not-found"


def test_group_versions_follow_the_published_months(served):
    home, base, keys = served
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    current = get(base, keys["one"], f"Group/{gid}").json()
    assert current["meta"]["versionId"] == "2" and current["member"]
    history = get(base, keys["one"], f"Group/{gid}/_history").json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    v1 = get(base, keys["one"], f"Group/{gid}/_history/1").json()
    august = orjson.loads((home / "exports/acme_commercial/2026-08/Group.ndjson").read_bytes().splitlines()[
        [orjson.loads(x)["id"] for x in (home / "exports/acme_commercial/2026-08/Group.ndjson").read_bytes().splitlines()].index(gid)])
    assert v1 == august
    assert get(base, keys["one"], f"Group/{gid}/_history/9").status_code == 404
    summary = get(base, keys["one"], f"Group/{gid}", _summary="true").json()
    assert "member" not in summary and summary["quantity"] == current["quantity"]


def test_member_resources_read_by_id_only_through_the_clients_group(served):
    home, base, keys = served
    group = get(base, keys["one"], f"Group/{group_ids(home, '2026-09')['VBC25-0001']}").json()
    member = group["member"][0]
    patient_ref = member["entity"]["reference"]
    coverage_ref = next(e["valueReference"]["reference"] for e in member["extension"] if e["url"].endswith("coverageReference"))
    patient = get(base, keys["one"], patient_ref).json()
    assert patient["resourceType"] == "Patient" and f"Patient/{patient['id']}" == patient_ref
    assert patient["meta"]["versionId"] and patient["meta"]["lastUpdated"]
    coverage = get(base, keys["one"], coverage_ref).json()
    payor = coverage["payor"][0]["reference"]
    assert get(base, keys["one"], payor).json()["resourceType"] == "Organization"  # reached through the Coverage
    history = get(base, keys["one"], f"{patient_ref}/_history").json()
    assert history["total"] >= 1 and history["entry"][0]["resource"]["id"] == patient["id"]
    assert get(base, keys["one"], f"{patient_ref}/_history/{patient['meta']['versionId']}").json()["id"] == patient["id"]
    # a member of only the other contract is not readable by this client
    other = get(base, keys["two"], f"Group/{group_ids(home, '2026-09')['VBC25-0002']}").json()
    mine = {m["entity"]["reference"] for m in group["member"]}
    theirs = next(m["entity"]["reference"] for m in other["member"] if m["entity"]["reference"] not in mine)
    res = get(base, keys["one"], theirs)
    assert res.status_code == 404 and res.json()["resourceType"] == "OperationOutcome"
    assert get(base, keys["two"], theirs).status_code == 200
    assert get(base, keys["one"], "Observation/x").status_code == 404


def test_a_month_published_while_serving_and_finalize_are_served_without_restart(served):
    home, base, keys = served
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    publish(home, "2026-10")
    current = get(base, keys["one"], f"Group/{gid}").json()
    assert current["meta"]["versionId"] == "3" and status_of(current) == "draft"
    res = atr(home, "finalize", "--source", "acme_commercial", "--contract", "VBC25-0001")
    assert res.returncode == 0, res.stderr
    res = atr(home, "publish", "--mapping", "mappings/acme_commercial.yaml", "--month", "2026-10")
    assert res.returncode == 0, res.stdout + res.stderr
    final = get(base, keys["one"], f"Group/{gid}").json()
    assert status_of(final) == "final" and final["meta"]["versionId"] == "4"
    versions = [e["resource"]["meta"]["versionId"] for e in get(base, keys["one"], f"Group/{gid}/_history").json()["entry"]]
    assert versions == ["4", "2", "1"]  # version 3 (draft October) was replaced by the final republication
