"""Providers answer back through a live `atr serve`: $member-add, $member-remove,
$confirm-attribution-list, $attribution-status and POST Group (ATR 2.1.0 §4.2-4.6).

Every parameter combination of the IG, each list-status rule (draft keeps a removed member
inactive, open drops it, final refuses), authorisation on each operation (401 / 403 / 404),
review mode (`atr requests list|accept|reject`), and the whole loop: payer file month 1 ->
provider removes one member and adds another -> confirm -> export shows the final list ->
the subscriber is notified of each new version -> month 2 file -> the diff and the versions.
"""

from __future__ import annotations

import shutil
import time
from datetime import date
from pathlib import Path

import httpx
import orjson
import pytest
from api_server import (
    ACME_CONTRACT_SYSTEM,
    HOME_ENV,
    NPI,
    ROOT,
    ClientKey,
    atr,
    group_ids,
    live_server,
    publish,
    register,
)
from hook_receiver import Receiver
from test_api_subscriptions import create as create_subscription
from test_api_subscriptions import subscription

from atr_pipeline.config import load_settings
from atr_pipeline.history.store import HistoryStore
from atr_pipeline.requests import adjudicate
from atr_pipeline.requests.model import MemberChange, RequestRefused, Target
from atr_pipeline.systems import EXT_ATTRIBUTION_LIST_STATUS, EXT_CHANGE_TYPE, EXT_COVERAGE_REFERENCE

MEMBER_SYSTEM = "https://acme-health.example.org/fhir/sid/member-id"
CONTRACT = "VBC25-0001"
WRITE = "system/*.read system/*.write"
REMOVED = "M06228576401"  # in contract 1 in both fixture months, with PCP 1000011183
ADDED = "M13055652101"  # a member of contract 2, added to contract 1 with PCP 1000011183
PCP = "1000011183"


def _home(tmp_path_factory, name: str, adjudication: str = "auto", status: str | None = None) -> Path:
    home = tmp_path_factory.mktemp(name)
    mappings = home.parent / f"{home.name}-mappings"
    mappings.mkdir()
    text = (ROOT / "mappings" / "acme_commercial.yaml").read_text()
    (mappings / "acme_commercial.yaml").write_text(text + f"requests:\n  adjudication: {adjudication}\n")
    shutil.copy(ROOT / "mappings" / "statewide_medicaid.yaml", mappings / "statewide_medicaid.yaml")
    HOME_ENV[str(home)] = {"ATR_MAPPINGS_DIR": str(mappings), **({"ATR_LIST_STATUS": status} if status else {})}
    return home


def _client(home: Path, *contracts: str) -> ClientKey:
    key = ClientKey()
    register(home, key, *(f"{ACME_CONTRACT_SYSTEM}|{c}" for c in contracts))
    return key


def _post(base: str, key: ClientKey | None, path: str, body: dict | None = None, *, scope: str = WRITE,
          headers: dict | None = None) -> httpx.Response:
    h = {"Content-Type": "application/fhir+json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key.token(base, scope)}"
    return httpx.post(f"{base}/{path}", content=orjson.dumps(body) if body is not None else b"", headers=h, timeout=120)


def _get(base: str, key: ClientKey, path: str, **params) -> httpx.Response:
    return httpx.get(f"{base}/{path}", params=params, headers={"Authorization": f"Bearer {key.token(base)}"}, timeout=60)


def params(**values) -> dict:
    out = []
    for name, value in values.items():
        if name in ("memberId", "providerNpi"):
            system = MEMBER_SYSTEM if name == "memberId" else NPI
            out.append({"name": name, "valueIdentifier": {"system": system, "value": value}})
        elif name == "attributionPeriod":
            out.append({"name": name, "valuePeriod": value})
        else:
            out.append({"name": name, "valueReference": {"reference": value}})
    return {"resourceType": "Parameters", "parameter": out}


def _group(base: str, key: ClientKey, gid: str) -> dict:
    res = _get(base, key, f"Group/{gid}")
    assert res.status_code == 200, res.text
    return res.json()


def _patient_ids(home: Path, month: str) -> dict[str, str]:
    """member id -> Patient id in a published month."""
    out = {}
    for line in (home / "exports/acme_commercial" / month / "Patient.ndjson").read_bytes().splitlines():
        p = orjson.loads(line)
        out[next(i["value"] for i in p["identifier"] if i.get("system") == MEMBER_SYSTEM)] = p["id"]
    return out


def _entries(group: dict, patient_id: str) -> list[dict]:
    return [m for m in group.get("member", []) if m["entity"]["reference"] == f"Patient/{patient_id}"]


def _change(member: dict) -> str:
    return next(e["valueCode"] for e in member["extension"] if e["url"] == EXT_CHANGE_TYPE)


def _status(group: dict) -> str:
    return next(e["valueCode"] for e in group["extension"] if e["url"] == EXT_ATTRIBUTION_LIST_STATUS)


def _provider_ref(home: Path, month: str, npi: str) -> str:
    for line in (home / "exports/acme_commercial" / month / "Practitioner.ndjson").read_bytes().splitlines():
        p = orjson.loads(line)
        if any(i["value"] == npi for i in p["identifier"]):
            return f"Practitioner/{p['id']}"
    raise AssertionError(npi)


def _export(base: str, key: ClientKey, gid: str) -> dict[str, list[dict]]:
    token = key.token(base)
    kick = httpx.get(f"{base}/Group/{gid}/$davinci-data-export", headers={"Authorization": f"Bearer {token}",
                     "Prefer": "respond-async"}, timeout=60)
    assert kick.status_code == 202, kick.text
    for _ in range(600):
        status = httpx.get(kick.headers["Content-Location"], headers={"Authorization": f"Bearer {token}"}, timeout=60)
        if status.status_code == 200:
            break
        time.sleep(0.1)
    out: dict[str, list[dict]] = {}
    for item in status.json()["output"]:
        body = httpx.get(item["url"], headers={"Authorization": f"Bearer {token}"}, timeout=60).content
        out.setdefault(item["type"], []).extend(orjson.loads(x) for x in body.splitlines())
    return out


# ---------------------------------------------------------------------- the full loop


def test_full_loop_remove_add_confirm_export_then_next_month(tmp_path_factory):
    home = _home(tmp_path_factory, "loop")
    publish(home, "2026-08")
    key = _client(home, CONTRACT)
    gid = group_ids(home, "2026-08")[CONTRACT]
    patients = _patient_ids(home, "2026-08")
    hook = Receiver()
    with live_server(home) as base:
        before = _group(base, key, gid)
        assert before["meta"]["versionId"] == "1" and _status(before) == "draft"
        # the provider subscribes to its Group before it sends any request (a real HTTP receiver)
        sub = create_subscription(base, key, subscription(gid, hook.url))
        assert sub.status_code == 201, sub.text
        hook.wait(lambda r: len(r.of_kind("handshake")) == 1, "the handshake")

        removed = _post(base, key, f"Group/{gid}/$member-remove", params(memberId=REMOVED),
                        headers={"X-Provenance": '{"resourceType":"Provenance","agent":[{"who":{"display":"clinic"}}]}'})
        assert removed.status_code == 200, removed.text
        draft = _group(base, key, gid)
        assert draft["meta"]["versionId"] == "2"
        (entry,) = _entries(draft, patients[REMOVED])  # draft: kept, inactive (ATR §4.3)
        assert entry["inactive"] is True and _change(entry) == "dropped"

        added = _post(base, key, f"Group/{gid}/$member-add", params(memberId=ADDED, providerNpi=PCP))
        assert added.status_code == 200, added.text
        with_add = _group(base, key, gid)
        assert with_add["meta"]["versionId"] == "3"
        new_pid = next(m["entity"]["reference"].split("/")[1] for m in with_add["member"] if not _entries(before, m["entity"]["reference"].split("/")[1]))
        (added_entry,) = _entries(with_add, new_pid)
        assert added_entry["inactive"] is False and _change(added_entry) == "new"

        confirmed = _post(base, key, f"Group/{gid}/$confirm-attribution-list")
        assert confirmed.status_code == 201, confirmed.text
        final = _group(base, key, gid)
        assert _status(final) == "final" and final["meta"]["versionId"] == "4"
        assert not _entries(final, patients[REMOVED])  # final lists drop the removed member
        assert _entries(final, new_pid)
        history = _get(base, key, f"Group/{gid}/_history").json()
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["4"]  # one month: its latest version
        search = _get(base, key, "Group", identifier=f"{ACME_CONTRACT_SYSTEM}|{CONTRACT}").json()
        assert search["entry"][0]["resource"]["meta"]["versionId"] == "4"

        exported = _export(base, key, gid)
        (group_line,) = exported["Group"]
        assert group_line["meta"]["versionId"] == "4" and _status(group_line) == "final"
        exported_patients = {p["id"] for p in exported["Patient"]}
        assert new_pid in exported_patients and patients[REMOVED] not in exported_patients
        assert {m["entity"]["reference"].split("/")[1] for m in group_line["member"]} == exported_patients

        # each new version (remove, add, confirm) reached the subscriber, in order, id-only
        hook.wait(lambda r: r.event_numbers() == ["1", "2", "3"], "events 1-3 (remove, add, confirm)")
        focus = [e["focus"]["reference"] for n in hook.of_kind("event-notification") for e in n.events()]
        assert [f.rsplit("/", 3)[-3:] for f in focus] == [[gid, "_history", v] for v in ("2", "3", "4")]
        assert all(len(n.bundle["entry"]) == 1 for n in hook.of_kind("event-notification"))  # id-only: the status alone

        # later requests on the final list are refused with an OperationOutcome
        late = _post(base, key, f"Group/{gid}/$member-add", params(memberId=REMOVED, providerNpi=PCP))
        assert late.status_code == 422 and "final" in late.json()["issue"][0]["diagnostics"]
        late = _post(base, key, f"Group/{gid}/$member-remove", params(memberId=ADDED))
        assert late.status_code == 422 and late.json()["resourceType"] == "OperationOutcome"

        # month 2: the payer's file lists the removed member again and not the added one
        publish(home, "2026-09")
        month2 = _group(base, key, gid)
        assert month2["meta"]["versionId"] == "5" and _status(month2) == "draft"
        patients2 = _patient_ids(home, "2026-09")
        (back,) = _entries(month2, patients2[REMOVED])
        assert _change(back) == "new" and back["inactive"] is False  # removed in month 1, attributed again
        (gone,) = _entries(month2, new_pid)
        assert _change(gone) == "dropped" and gone["inactive"] is True  # added in month 1, not in the file
        assert gone["period"]["end"] == "2026-08-31"
        changes: dict[str, int] = {}
        for m in month2["member"]:
            changes[_change(m)] = changes.get(_change(m), 0) + 1
        # The file's own diff against the August file is 2 new, 22 nochange, 1 changed, 4 dropped;
        # against the list the provider confirmed, the two entries above move: 3 new, 21, 1, 5.
        assert changes == {"new": 3, "nochange": 21, "changed": 1, "dropped": 5}
        history = _get(base, key, f"Group/{gid}/_history").json()
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["5", "4"]
        assert _status(history["entry"][1]["resource"]) == "final"
        hook.wait(lambda r: r.event_numbers() == ["1", "2", "3", "4"], "event 4 (the month 2 delivery)")
        assert hook.of_kind("event-notification")[-1].events()[0]["focus"]["reference"].endswith(f"/Group/{gid}/_history/5")
    hook.close()

    listed = atr(home, "requests", "list")
    assert listed.returncode == 0, listed.stderr
    for op in ("member-remove", "member-add", "confirm"):
        assert op in listed.stdout
    assert listed.stdout.count("accepted (auto)") == 2 and listed.stdout.count("rejected (rules)") == 2
    assert REMOVED not in listed.stdout and ADDED not in listed.stdout  # no member ids printed


# ---------------------------------------------------------------------- every combination, auto mode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = _home(tmp_path_factory, "ops")
    publish(home, "2026-08")
    keys = {"one": _client(home, CONTRACT), "two": _client(home, "VBC25-0002"), "new": _client(home, "VBC25-9000")}
    with live_server(home) as base:
        yield home, base, keys


def _gid(home: Path) -> str:
    return group_ids(home, "2026-08")[CONTRACT]


def test_metadata_lists_the_reconciliation_operations_and_create(served):
    _, base, _ = served
    cs = httpx.get(f"{base}/metadata").json()
    group = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Group")
    ops = {o["name"]: o["definition"] for o in group["operation"]}
    for name in ("member-add", "member-remove", "confirm-attribution-list", "attribution-status"):
        assert ops[name] == f"http://hl7.org/fhir/us/davinci-atr/OperationDefinition/{name}"
    assert "create" in {i["code"] for i in group["interaction"]}
    conf = httpx.get(f"{base}/.well-known/smart-configuration").json()
    assert {"system/*.write", "system/*.cud"} <= set(conf["scopes_supported"])


def test_member_add_every_shall_combination(served):
    home, base, keys = served
    gid = _gid(home)
    august = _patient_ids(home, "2026-08")
    practitioner = _provider_ref(home, "2026-08", "1000976609")
    cases = [
        (params(memberId="M13351955501", providerNpi="1000976609"), "M13351955501", None),
        (params(memberId="M37112390401", providerNpi="1000976609", attributionPeriod={"start": "2026-08-15"}),
         "M37112390401", {"start": "2026-08-15"}),
        (params(patientReference=f"Patient/{august['M38242317401']}", providerReference=practitioner), "M38242317401", None),
        (params(patientReference=f"Patient/{august['M69959755001']}", providerReference=practitioner,
                attributionPeriod={"start": "2026-08-01", "end": "2026-12-31"}), "M69959755001",
         {"start": "2026-08-01", "end": "2026-12-31"}),
    ]
    for body, member, period in cases:
        before = _group(base, keys["one"], gid)["meta"]["versionId"]
        res = _post(base, keys["one"], f"Group/{gid}/$member-add", body)
        assert res.status_code == 200, res.text
        assert res.json()["issue"][0]["severity"] == "information" and res.headers["X-Request-Id"]
        after = _group(base, keys["one"], gid)
        assert int(after["meta"]["versionId"]) == int(before) + 1
        (entry,) = _entries(after, august[member])
        assert _change(entry) == "new" and entry["inactive"] is False
        assert entry["period"] == (period or {"start": "2026-08-01"})
        provider = next(e["valueReference"]["reference"] for e in entry["extension"] if e["url"].endswith("ext-attributedProvider"))
        assert provider.startswith(("PractitionerRole/", "Practitioner/"))


def test_member_add_refusals(served):
    home, base, keys = served
    gid = _gid(home)
    august = _patient_ids(home, "2026-08")
    bad_requests = [
        params(memberId="M13351955501"),  # no provider
        params(memberId="M13351955501", providerReference=_provider_ref(home, "2026-08", PCP)),  # mixed forms
        params(memberId="M13351955501", patientReference=f"Patient/{august['M13351955501']}", providerNpi=PCP),
        {"resourceType": "Parameters", "parameter": [{"name": "member", "valueString": "x"}]},
        {"resourceType": "Parameters", "parameter": [*params(memberId="A", providerNpi=PCP)["parameter"],
                                                     {"name": "memberId", "valueIdentifier": {"value": "B"}}]},
        {"resourceType": "Group"},
        params(memberId="M13351955501", providerNpi=PCP, attributionPeriod={"start": "2026-09-01", "end": "2026-08-01"}),
    ]
    for body in bad_requests:
        res = _post(base, keys["one"], f"Group/{gid}/$member-add", body)
        assert res.status_code == 400, (body, res.text)
        assert res.json()["resourceType"] == "OperationOutcome"
    business = [
        (params(memberId="NOBODY", providerNpi=PCP), "not known to the payer"),
        (params(memberId="M13351955501", providerNpi="1234567893"), "provider NPI is not known"),
        (params(memberId=REMOVED, providerNpi=PCP), "already attributed"),
        (params(patientReference="Patient/00000000-0000-8000-8000-000000000000",
                providerReference=_provider_ref(home, "2026-08", PCP)), "not a Patient of this payer"),
    ]
    version = _group(base, keys["one"], gid)["meta"]["versionId"]
    for body, words in business:
        res = _post(base, keys["one"], f"Group/{gid}/$member-add", body)
        assert res.status_code == 422, res.text
        assert words in res.json()["issue"][0]["diagnostics"] and "request " in res.json()["issue"][0]["diagnostics"]
    assert _group(base, keys["one"], gid)["meta"]["versionId"] == version  # refused: no new version


def test_member_remove_every_shall_combination(served):
    home, base, keys = served
    gid = _gid(home)
    august = _patient_ids(home, "2026-08")
    coverage_of = {}
    for m in _group(base, keys["one"], gid)["member"]:
        cov = next(e["valueReference"]["reference"] for e in m["extension"] if e["url"] == EXT_COVERAGE_REFERENCE)
        coverage_of[m["entity"]["reference"]] = cov
    cases = [
        (params(memberId="M44137001701"), "M44137001701", 2),  # every attribution of the member
        (params(memberId="M89366341701", providerNpi="1001942022"), "M89366341701", 1),
        (params(patientReference=f"Patient/{august['M46610229201']}"), "M46610229201", 1),
        (params(patientReference=f"Patient/{august['M60292023901']}",
                providerReference=_provider_ref(home, "2026-08", PCP)), "M60292023901", 1),
        (params(patientReference=f"Patient/{august['M57083940601']}", providerReference=_provider_ref(home, "2026-08", PCP),
                coverageReference=coverage_of[f"Patient/{august['M57083940601']}"]), "M57083940601", 1),
    ]
    for body, member, count in cases:
        res = _post(base, keys["one"], f"Group/{gid}/$member-remove", body)
        assert res.status_code == 200, res.text
        entries = _entries(_group(base, keys["one"], gid), august[member])
        assert len(entries) == count
        assert all(e["inactive"] is True and _change(e) == "dropped" for e in entries)  # draft: kept, inactive
    again = _post(base, keys["one"], f"Group/{gid}/$member-remove", params(memberId="M44137001701"))
    assert again.status_code == 422 and "already removed" in again.json()["issue"][0]["diagnostics"]
    wrong_coverage = params(patientReference=f"Patient/{august['M81338214501']}",
                            coverageReference=coverage_of[f"Patient/{august['M89366341702']}"])
    res = _post(base, keys["one"], f"Group/{gid}/$member-remove", wrong_coverage)
    assert res.status_code == 422 and "not a Coverage of that patient" in res.json()["issue"][0]["diagnostics"]
    for body in (params(memberId="M81338214501", coverageReference=coverage_of[f"Patient/{august['M81338214501']}"]),
                 params(providerNpi=PCP), params(memberId="M81338214501", providerReference=_provider_ref(home, "2026-08", PCP))):
        res = _post(base, keys["one"], f"Group/{gid}/$member-remove", body)
        assert res.status_code == 400, res.text
    res = _post(base, keys["one"], f"Group/{gid}/$member-remove", params(memberId="NOBODY"))
    assert res.status_code == 422 and "no active entry" in res.json()["issue"][0]["diagnostics"]


def test_attribution_status_by_member_id_and_patient_reference(served):
    home, base, keys = served
    gid = _gid(home)
    august = _patient_ids(home, "2026-08")
    pid = august["M12320796301"]
    for res in (
        _post(base, keys["one"], f"Group/{gid}/$attribution-status", params(memberId="M12320796301"), scope="system/*.read"),
        _post(base, keys["one"], f"Group/{gid}/$attribution-status", params(patientReference=f"Patient/{pid}"), scope="system/*.read"),
        _get(base, keys["one"], f"Group/{gid}/$attribution-status", memberId=f"{MEMBER_SYSTEM}|M12320796301"),
    ):
        assert res.status_code == 200, res.text
        bundle = res.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        types = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert types[0] == "Patient" and bundle["entry"][0]["resource"]["id"] == pid
        assert "Coverage" in types and ({"PractitionerRole", "Practitioner"} & set(types))
        coverage = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Coverage")
        assert coverage["beneficiary"]["reference"] == f"Patient/{pid}"
    # a member of the other contract is not a member of this Group
    res = _post(base, keys["one"], f"Group/{gid}/$attribution-status", params(memberId="M92278121601"), scope="system/*.read")
    assert res.status_code == 404 and res.json()["resourceType"] == "OperationOutcome"
    res = _post(base, keys["one"], f"Group/{gid}/$attribution-status", params(memberId="NOBODY"), scope="system/*.read")
    assert res.status_code == 404
    res = _post(base, keys["one"], f"Group/{gid}/$attribution-status", {"resourceType": "Parameters"}, scope="system/*.read")
    assert res.status_code == 400


@pytest.mark.parametrize("operation", ["$member-add", "$member-remove", "$confirm-attribution-list", "$attribution-status"])
def test_authorisation_on_each_operation(served, operation):
    home, base, keys = served
    gid = _gid(home)
    body = params(memberId="M13351955501", providerNpi=PCP) if operation != "$confirm-attribution-list" else None
    if operation == "$attribution-status":
        body = params(memberId="M12320796301")
    # 401: no token, or a token that is not this server's
    res = _post(base, None, f"Group/{gid}/{operation}", body)
    assert res.status_code == 401 and res.json()["issue"][0]["code"] == "login"
    res = httpx.post(f"{base}/Group/{gid}/{operation}", content=orjson.dumps(body or {}),
                     headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert res.status_code == 401
    # 403: scopes that do not cover the operation (writes need *.write or v2 .cud; status needs read)
    wrong = "system/*.write" if operation == "$attribution-status" else "system/*.read system/*.rs"
    res = _post(base, keys["one"], f"Group/{gid}/{operation}", body, scope=wrong)
    assert res.status_code == 403 and res.json()["issue"][0]["code"] == "forbidden"
    # 404: another client's Group, the same answer as an unknown id
    for target in (gid, "00000000-0000-8000-8000-000000000000"):
        res = _post(base, keys["two"], f"Group/{target}/{operation}", body,
                    scope="system/*.read system/*.cud")
        assert res.status_code == 404 and res.json()["issue"][0]["code"] == "not-found"


def test_v2_cud_scope_allows_requests(served):
    home, base, keys = served
    gid = _gid(home)
    res = _post(base, keys["one"], f"Group/{gid}/$member-add", params(memberId="M83613906401", providerNpi=PCP),
                scope="system/Group.cud system/*.rs")
    assert res.status_code == 200, res.text


def test_scenario_2_create_empty_group_fill_export_confirm(served):
    home, base, keys = served
    provenance = '{"resourceType":"Provenance","agent":[{"who":{"identifier":{"value":"clinic-7"}}}]}'
    group = {"resourceType": "Group", "type": "person", "actual": True, "name": "Clinic 7 panel",
             "identifier": [{"system": ACME_CONTRACT_SYSTEM, "value": "VBC25-9000"}]}
    assert _post(base, keys["one"], "Group", group).status_code == 403  # not registered for VBC25-9000
    assert _post(base, keys["new"], "Group", group, scope="system/*.read").status_code == 403  # no write scope
    assert _post(base, keys["new"], "Group", {**group, "member": [{"entity": {"reference": "Patient/x"}}]}).status_code == 400
    assert _post(base, keys["new"], "Group", {**group, "identifier": [{"system": "urn:x", "value": "1"}]}).status_code == 422
    created = _post(base, keys["new"], "Group", group, headers={"X-Provenance": provenance})
    assert created.status_code == 201, created.text
    gid = created.json()["id"]
    assert created.headers["Location"] == f"{base}/Group/{gid}" and created.json()["quantity"] == 0
    assert _post(base, keys["new"], "Group", group).status_code == 409
    assert _post(base, keys["two"], f"Group/{gid}/$member-add", params(memberId=ADDED, providerNpi=PCP)).status_code == 404

    added = _post(base, keys["new"], f"Group/{gid}/$member-add", params(memberId=ADDED, providerNpi=PCP))
    assert added.status_code == 200, added.text
    filled = _group(base, keys["new"], gid)
    assert filled["name"] == "Clinic 7 panel" and _status(filled) == "draft" and len(filled["member"]) == 1
    assert {"system": ACME_CONTRACT_SYSTEM, "value": "VBC25-9000"} in filled["identifier"]
    exported = _export(base, keys["new"], gid)
    assert len(exported["Group"]) == 1 and len(exported["Patient"]) == 1 and len(exported["Coverage"]) == 1
    assert _post(base, keys["new"], f"Group/{gid}/$confirm-attribution-list").status_code == 201
    assert _status(_group(base, keys["new"], gid)) == "final"

    found = [r for r in HistoryStore(home / "history" / "acme_commercial.duckdb").list_requests(group_id=gid) if r.operation == "create-group"]
    assert found[0].provenance == provenance and found[0].client_id == keys["new"].client_id
    assert orjson.loads(found[0].parameters)["name"] == "Clinic 7 panel"


def test_confirm_sets_final_and_later_requests_are_refused(served):
    home, base, keys = served
    gid = _gid(home)
    before = _group(base, keys["one"], gid)
    res = _post(base, keys["one"], f"Group/{gid}/$confirm-attribution-list")
    assert res.status_code == 201 and res.json()["resourceType"] == "OperationOutcome"
    final = _group(base, keys["one"], gid)
    assert _status(final) == "final" and int(final["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1
    assert all(not m["inactive"] for m in final["member"])  # removed members are gone from the final list
    for op, body in (("$member-add", params(memberId="M13351955501", providerNpi="1001942022")),
                     ("$member-remove", params(memberId="M12320796301")), ("$confirm-attribution-list", None)):
        res = _post(base, keys["one"], f"Group/{gid}/{op}", body)
        assert res.status_code == 422 and "final" in res.json()["issue"][0]["diagnostics"], op
    assert _group(base, keys["one"], gid)["meta"]["versionId"] == final["meta"]["versionId"]


# ---------------------------------------------------------------------- review mode, open lists


def _request_lines(home: Path) -> list[list[str]]:
    res = atr(home, "requests", "list")
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()[1:]]


def test_review_mode_queues_requests_for_accept_and_reject(tmp_path_factory):
    home = _home(tmp_path_factory, "review", adjudication="review")
    publish(home, "2026-08")
    key = _client(home, CONTRACT)
    gid = group_ids(home, "2026-08")[CONTRACT]
    august = _patient_ids(home, "2026-08")
    with live_server(home) as base:
        queued = _post(base, key, f"Group/{gid}/$member-add", params(memberId=ADDED, providerNpi=PCP))
        assert queued.status_code == 202, queued.text
        add_id = queued.headers["X-Request-Id"]
        removal = _post(base, key, f"Group/{gid}/$member-remove", params(memberId=REMOVED))
        assert removal.status_code == 202
        remove_id = removal.headers["X-Request-Id"]
        third = _post(base, key, f"Group/{gid}/$member-remove", params(memberId="M12320796301"))
        third_id = third.headers["X-Request-Id"]
        assert _group(base, key, gid)["meta"]["versionId"] == "1"  # nothing changes before a decision

        rows = {r[0]: r for r in _request_lines(home)}
        assert [rows[i][5] for i in (add_id, remove_id)] == ["member-add", "member-remove"]
        assert all(rows[i][9] == "queued" and rows[i][6] == gid for i in (add_id, remove_id, third_id))

        accepted = atr(home, "requests", "accept", add_id)
        assert accepted.returncode == 0, accepted.stderr
        after = _group(base, key, gid)
        assert after["meta"]["versionId"] == "2"
        (entry,) = _entries(after, august[ADDED])
        assert _change(entry) == "new"

        rejected = atr(home, "requests", "reject", remove_id, "--reason", "member is in an active care episode")
        assert rejected.returncode == 0, rejected.stderr
        assert _group(base, key, gid)["meta"]["versionId"] == "2"
        assert atr(home, "requests", "accept", remove_id).returncode == 2  # already decided
        assert atr(home, "requests", "accept", "no-such-id").returncode == 2
        assert atr(home, "requests", "reject", third_id, "--reason", " ").returncode == 2

        assert _post(base, key, f"Group/{gid}/$confirm-attribution-list").status_code == 201  # never queued
        late = atr(home, "requests", "accept", third_id)  # the list became final while it waited
        assert late.returncode == 1 and "final" in late.stderr
        rows = {r[0]: r for r in _request_lines(home)}
        assert rows[add_id][9] == "accepted (cli)"
        assert rows[remove_id][9] == "rejected (cli)" and rows[remove_id][10] == "member is in an active care episode"
        assert rows[third_id][9] == "rejected (cli)" and "final" in rows[third_id][10]
        assert [r[5] for r in rows.values()].count("confirm") == 1
        queued_only = atr(home, "requests", "list", "--status", "queued")
        assert queued_only.stdout.strip() == "no requests"


def test_open_list_removes_at_once_and_a_superseded_month_is_refused(tmp_path_factory, monkeypatch):
    home = _home(tmp_path_factory, "open", status="open")
    publish(home, "2026-08")
    key = _client(home, CONTRACT)
    gid = group_ids(home, "2026-08")[CONTRACT]
    august = _patient_ids(home, "2026-08")
    with live_server(home) as base:
        assert _status(_group(base, key, gid)) == "open"
        assert _post(base, key, f"Group/{gid}/$member-remove", params(memberId=REMOVED)).status_code == 200
        assert not _entries(_group(base, key, gid), august[REMOVED])  # open: removed at once, not kept inactive
        publish(home, "2026-09")
    # a request made on August's list after September's delivery arrived is refused (and recorded)
    monkeypatch.setenv("ATR_ID_KEY", "test-key")
    settings = load_settings(home, mappings_dir=HOME_ENV[str(home)]["ATR_MAPPINGS_DIR"])
    with pytest.raises(RequestRefused, match="superseded"):
        adjudicate.submit_member_change(settings, Target("acme_commercial", CONTRACT, date(2026, 8, 1), gid),
                                        MemberChange("member-remove", member_id="M12320796301"), client_id="test",
                                        parameters="{}")
    (refused,) = [r for r in HistoryStore(home / "history" / "acme_commercial.duckdb").list_requests() if r.status == "rejected"]
    assert refused.operation == "member-remove" and "superseded" in (refused.reason or "")
