"""The FHIR test server behaves like a production Medplum: ids, limits, rollback, bindings, search."""

from __future__ import annotations

import uuid

import httpx
from fhir_server_fixture import FhirTestServer, fhir, fhir_server, start_fhir_server  # noqa: F401

from atr_pipeline import systems


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def put_entry(resource: dict) -> dict:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


def bundle(kind: str, entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def issue_texts(outcome: dict) -> list[str]:
    return [issue["details"]["text"] for issue in outcome["issue"]]


def test_put_with_uuid_creates_then_updates_one_resource(fhir: FhirTestServer) -> None:
    pid = uid(1)
    first = fhir.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "gender": "male"})
    assert first.status_code == 200
    v1 = first.json()["meta"]["versionId"]
    assert first.headers["ETag"] == f'W/"{v1}"'

    second = fhir.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "gender": "female"})
    assert second.status_code == 200
    v2 = second.json()["meta"]["versionId"]
    assert v2 != v1
    assert fhir.count("Patient") == 1

    history = fhir.get(f"Patient/{pid}/_history").json()
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == [v2, v1]
    assert fhir.get(f"Patient/{pid}/_history/{v1}").json()["gender"] == "male"
    assert fhir.get(f"Patient/{pid}").json()["gender"] == "female"


def test_unchanged_put_keeps_the_version(fhir: FhirTestServer) -> None:
    pid = uid(2)
    body = {"resourceType": "Patient", "id": pid, "gender": "other"}
    v1 = fhir.request("PUT", f"Patient/{pid}", body).json()["meta"]["versionId"]
    v2 = fhir.request("PUT", f"Patient/{pid}", body).json()["meta"]["versionId"]
    assert v2 == v1
    assert fhir.get(f"Patient/{pid}/_history").json()["total"] == 1


def test_put_with_non_uuid_id_is_refused(fhir: FhirTestServer) -> None:
    resp = fhir.request("PUT", "Patient/p0-x", {"resourceType": "Patient", "id": "p0-x"})
    assert resp.status_code == 400
    assert issue_texts(resp.json()) == ["Invalid id"]
    assert fhir.count("Patient") == 0


def test_post_create_gets_a_server_id(fhir: FhirTestServer) -> None:
    resp = fhir.request("POST", "Organization", {"resourceType": "Organization", "id": "client-id", "name": "Payer A"})
    assert resp.status_code == 201
    created = resp.json()
    assert created["id"] != "client-id"
    assert uuid.UUID(created["id"]).version == 4
    assert resp.headers["Location"].endswith(f"/Organization/{created['id']}/_history/{created['meta']['versionId']}")


def test_delete_then_read_is_not_found(fhir: FhirTestServer) -> None:
    pid = uid(3)
    fhir.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid})
    assert fhir.request("DELETE", f"Patient/{pid}").status_code == 200
    assert fhir.get(f"Patient/{pid}").status_code == 404
    assert fhir.count("Patient") == 0


def test_json_patch(fhir: FhirTestServer) -> None:
    pid = uid(4)
    fhir.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "gender": "male"})
    ops = [{"op": "replace", "path": "/gender", "value": "unknown"}]
    resp = fhir.request("PATCH", f"Patient/{pid}", ops, headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 200
    assert fhir.get(f"Patient/{pid}").json()["gender"] == "unknown"


def test_codes_outside_required_bindings_are_refused(fhir: FhirTestServer) -> None:
    cases = [
        ({"resourceType": "Patient", "id": uid(10), "gender": "xyz"}, "Patient.gender", "administrative-gender"),
        (
            {
                "resourceType": "Coverage",
                "id": uid(11),
                "status": "enrolled",
                "beneficiary": {"reference": f"Patient/{uid(12)}"},
                "payor": [{"reference": f"Organization/{uid(13)}"}],
            },
            "Coverage.status",
            "fm-status",
        ),
        ({"resourceType": "Group", "id": uid(14), "type": "people", "actual": True}, "Group.type", "group-type"),
        # nested in a datatype: Identifier.use
        ({"resourceType": "Patient", "id": uid(15), "identifier": [{"use": "primary", "value": "1"}]}, "Patient.identifier.use", "identifier-use"),
    ]
    for resource, expression, value_set in cases:
        resp = fhir.request("PUT", f"{resource['resourceType']}/{resource['id']}", resource)
        assert resp.status_code == 400, expression
        issue = resp.json()["issue"][0]
        assert issue["expression"] == [expression]
        assert issue["details"]["text"] == f"Value not in required value set http://hl7.org/fhir/ValueSet/{value_set}"
    assert fhir.stats()["resources"] == {}


def test_structure_errors_are_refused(fhir: FhirTestServer) -> None:
    pid = uid(20)
    resp = fhir.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "birthDate": "1990-13-45", "shoeSize": 9})
    assert resp.status_code == 400
    assert sorted(i["expression"][0] for i in resp.json()["issue"]) == ["Patient.birthDate", "Patient.shoeSize"]


def test_transaction_with_51_puts_is_refused(fhir: FhirTestServer) -> None:
    entries = [put_entry({"resourceType": "Patient", "id": uid(100 + i)}) for i in range(51)]
    resp = fhir.request("POST", "", bundle("transaction", entries))
    assert resp.status_code == 400
    assert issue_texts(resp.json()) == ["Transaction contains more update operations than allowed"]
    assert fhir.count("Patient") == 0
    # 50 is allowed
    resp = fhir.request("POST", "", bundle("transaction", entries[:50]))
    assert resp.status_code == 200
    assert fhir.count("Patient") == 50


def test_transaction_with_9_entries_and_a_conditional_is_refused(fhir: FhirTestServer) -> None:
    entries = [put_entry({"resourceType": "Patient", "id": uid(200 + i)}) for i in range(8)]
    conditional = {
        "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test:member", "value": "m1"}]},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:test:member|m1"},
    }
    resp = fhir.request("POST", "", bundle("transaction", [*entries, conditional]))
    assert resp.status_code == 400
    assert issue_texts(resp.json()) == ["Transaction requires strict isolation but has too many entries"]
    assert fhir.count("Patient") == 0
    # eight entries with the conditional one pass
    resp = fhir.request("POST", "", bundle("transaction", [*entries[:7], conditional]))
    assert resp.status_code == 200
    assert fhir.count("Patient") == 8


def test_failed_transaction_leaves_no_partial_writes(fhir: FhirTestServer) -> None:
    kept = uid(300)
    fhir.request("PUT", f"Patient/{kept}", {"resourceType": "Patient", "id": kept, "gender": "male"})
    entries = [
        put_entry({"resourceType": "Patient", "id": kept, "gender": "female"}),  # update of an existing one
        put_entry({"resourceType": "Patient", "id": uid(301)}),  # a create
        {"fullUrl": f"urn:uuid:{uid(9)}", "resource": {"resourceType": "Organization", "name": "Payer"}, "request": {"method": "POST", "url": "Organization"}},
        put_entry({"resourceType": "Patient", "id": uid(302), "gender": "xyz"}),  # invalid: sinks the lot
    ]
    resp = fhir.request("POST", "", bundle("transaction", entries))
    assert resp.status_code == 400
    assert fhir.count("Patient") == 1
    assert fhir.count("Organization") == 0
    assert fhir.get(f"Patient/{uid(301)}").status_code == 404
    survivor = fhir.get(f"Patient/{kept}").json()
    assert survivor["gender"] == "male"
    assert fhir.get(f"Patient/{kept}/_history").json()["total"] == 1


def test_non_atomic_project_runs_transactions_as_batches(fhir: FhirTestServer) -> None:
    fhir.configure(transactions=False)
    entries = [put_entry({"resourceType": "Patient", "id": uid(310)}), put_entry({"resourceType": "Patient", "id": uid(311), "gender": "xyz"})]
    resp = fhir.request("POST", "", bundle("transaction", entries))
    assert resp.status_code == 200
    assert [e["response"]["status"] for e in resp.json()["entry"]] == ["200", "400"]
    assert fhir.count("Patient") == 1


def test_transaction_rewrites_urn_uuid_references_also_in_extensions(fhir: FhirTestServer) -> None:
    org_urn, pat_urn = f"urn:uuid:{uid(401)}", f"urn:uuid:{uid(402)}"
    group_id = uid(403)
    entries = [
        {"fullUrl": org_urn, "resource": {"resourceType": "Organization", "name": "Payer"}, "request": {"method": "POST", "url": "Organization"}},
        {"fullUrl": pat_urn, "resource": {"resourceType": "Patient", "managingOrganization": {"reference": org_urn}},
         "request": {"method": "POST", "url": "Patient"}},
        put_entry(
            {
                "resourceType": "Group",
                "id": group_id,
                "meta": {"profile": [systems.PROFILE_GROUP]},
                "type": "person",
                "actual": True,
                "managingEntity": {"reference": org_urn},
                "member": [
                    {
                        "entity": {"reference": pat_urn},
                        "extension": [
                            {"url": systems.EXT_CHANGE_TYPE, "valueCode": "new"},
                            {"url": systems.EXT_ATTRIBUTED_PROVIDER, "valueReference": {"reference": org_urn}},
                        ],
                    }
                ],
            }
        ),
    ]
    resp = fhir.request("POST", "", bundle("transaction", entries))
    assert resp.status_code == 200
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    assert statuses == ["201", "201", "200"]
    org_id = fhir.search("Organization")[0]["id"]
    pat_id = fhir.search("Patient")[0]["id"]
    group = fhir.get(f"Group/{group_id}").json()
    assert group["managingEntity"]["reference"] == f"Organization/{org_id}"
    member = group["member"][0]
    assert member["entity"]["reference"] == f"Patient/{pat_id}"
    assert member["extension"][1]["valueReference"]["reference"] == f"Organization/{org_id}"


def test_batch_returns_per_entry_statuses(fhir: FhirTestServer) -> None:
    entries = [
        put_entry({"resourceType": "Patient", "id": uid(500)}),
        put_entry({"resourceType": "Patient", "id": "not-a-uuid"}),
        put_entry({"resourceType": "Patient", "id": uid(501), "gender": "xyz"}),
        {"request": {"method": "GET", "url": f"Patient/{uid(502)}"}},
        {"resource": {"resourceType": "Practitioner"}, "request": {"method": "POST", "url": "Practitioner"}},
    ]
    resp = fhir.request("POST", "", bundle("batch", entries))
    assert resp.status_code == 200
    body = resp.json()
    assert body["type"] == "batch-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["200", "400", "400", "404", "201"]
    assert fhir.count("Patient") == 1
    assert fhir.count("Practitioner") == 1


def test_search_by_identifier_reference_and_include(fhir: FhirTestServer) -> None:
    org = uid(600)
    fhir.request("PUT", f"Organization/{org}", {"resourceType": "Organization", "id": org, "name": "Payer"})
    for i in range(3):
        pid = uid(601 + i)
        fhir.request(
            "PUT",
            f"Patient/{pid}",
            {
                "resourceType": "Patient",
                "id": pid,
                "identifier": [{"system": "urn:test:member", "value": f"m{i}"}],
                **({"managingOrganization": {"reference": f"Organization/{org}"}} if i < 2 else {}),
            },
        )
    found = fhir.search("Patient", {"identifier": "urn:test:member|m1"})
    assert [p["id"] for p in found] == [uid(602)]
    assert fhir.search("Patient", {"identifier": "urn:other|m1"}) == []
    by_org = fhir.search("Patient", {"organization": f"Organization/{org}"})
    assert sorted(p["id"] for p in by_org) == [uid(601), uid(602)]
    with_include = fhir.search("Patient", {"identifier": "urn:test:member|m0", "_include": "Patient:organization"})
    assert [(r["resourceType"], r["id"]) for r in with_include] == [("Patient", uid(601)), ("Organization", org)]


def test_summary_count_and_paging(fhir: FhirTestServer) -> None:
    entries = [put_entry({"resourceType": "Patient", "id": uid(700 + i)}) for i in range(45)]
    assert fhir.request("POST", "", bundle("batch", entries)).status_code == 200
    counted = fhir.get("Patient", params={"_summary": "count"}).json()
    assert counted["total"] == 45
    assert "entry" not in counted
    # the production default page is 20, with a next link
    page = fhir.get("Patient").json()
    assert len(page["entry"]) == 20
    assert [link["relation"] for link in page["link"]] == ["self", "next"]
    assert "_offset=20" in page["link"][1]["url"]
    assert len(fhir.search("Patient", {"_count": "10"})) == 45


def test_oversized_body_is_413(fhir: FhirTestServer) -> None:
    fhir.configure(maxBodyBytes=1000)
    pid = uid(800)
    big = {"resourceType": "Patient", "id": pid, "name": [{"text": "x" * 2000}]}
    resp = fhir.request("PUT", f"Patient/{pid}", big)
    assert resp.status_code == 413
    assert fhir.count("Patient") == 0
    small = fhir.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid})
    assert small.status_code == 200


def test_reset_clears_data_and_counts(fhir: FhirTestServer) -> None:
    pid = uid(900)
    fhir.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid})
    fhir.configure(transactions=False)
    assert fhir.stats()["resources"] == {"Patient": 1}
    fhir.reset()
    stats = fhir.stats()
    assert stats["resources"] == {}
    assert stats["requests"] == 0
    assert fhir.configure()["transactions"] is True
    assert fhir.get(f"Patient/{pid}").status_code == 404


def test_concurrent_transactions_roll_back_only_their_own_writes(fhir: FhirTestServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def send(k: int) -> int:
        entries = [put_entry({"resourceType": "Patient", "id": uid(1000 + 10 * k + i)}) for i in range(5)]
        if k % 2:
            entries.append(put_entry({"resourceType": "Patient", "id": uid(1000 + 10 * k + 9), "gender": "xyz"}))
        with httpx.Client(timeout=60) as client:
            return client.post(fhir.base_url, json=bundle("transaction", entries)).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert statuses == [200, 400] * 4
    assert fhir.count("Patient") == 20
    assert sorted(p["id"] for p in fhir.search("Patient")) == sorted(uid(1000 + 10 * k + i) for k in (0, 2, 4, 6) for i in range(5))


def test_standalone_server_starts_and_stops_cleanly() -> None:
    with start_fhir_server() as server:
        meta = server.get("metadata").json()
        assert (meta["resourceType"], meta["fhirVersion"]) == ("CapabilityStatement", "4.0.1")
        process = server.process
    assert process.returncode == 0
