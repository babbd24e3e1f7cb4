"""Providers answer back through a live `atr serve`: $member-add, $member-remove,
$confirm-attribution-list, $attribution-status and POST Group (ATR 2.1.0 §4.2-4.6).

Every parameter combination of the IG, each list-status rule (draft keeps a removed member
inactive, open drops it, final refuses), authorisation on each operation (401 / 403 / 404),
review mode (`atr requests list|accept|reject`), and the whole loop: payer file month 1 ->
provider removes one member and adds another -> confirm -> export shows the final list ->
month 2 file -> the diff and the versions.
"""

from __future__ import annotations

import shutil
import time
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
    with live_server(home) as base:
        before = _group(base, key, gid)
        assert before["meta"]["versionId"] == "1" and _status(before) == "draft"

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

    listed = atr(home, "requests", "list")
    assert listed.returncode == 0, listed.stderr
    for op in ("member-remove", "member-add", "confirm"):
        assert op in listed.stdout
    assert listed.stdout.count("accepted (auto)") == 2 and listed.stdout.count("rejected (rules)") == 2
    assert REMOVED not in listed.stdout and ADDED not in listed.stdout  # no member ids printed
