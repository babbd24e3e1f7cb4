"""$davinci-data-export on a live `atr serve`: the Bulk Data async pattern, parameters, per-client files,
cancel, restart, retention, file splitting, and exported files that pass `atr conform`."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from api_server import (
    ACME_CONTRACT_SYSTEM,
    ClientKey,
    atr,
    group_ids,
    live_server,
    publish,
    register,
)

ATR_EXPORT = "hl7.fhir.us.davinci-atr"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    publish(home, "2026-08", "2026-09")
    return home


@pytest.fixture(scope="module")
def keys(home):
    a, b = ClientKey(), ClientKey("ES384")
    register(home, a, f"{ACME_CONTRACT_SYSTEM}|VBC25-0001")
    register(home, b, f"{ACME_CONTRACT_SYSTEM}|VBC25-0002")
    return a, b


@pytest.fixture(scope="module")
def base(home, keys):
    with live_server(home) as base:
        yield base


def auth(base: str, key: ClientKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token(base)}", "Accept": "application/fhir+json", "Prefer": "respond-async"}


def kick_off(base: str, key: ClientKey, group_id: str, params: dict | None = None, body: dict | None = None) -> httpx.Response:
    url = f"{base}/Group/{group_id}/$davinci-data-export"
    if body is not None:
        return httpx.post(url, headers=auth(base, key) | {"Content-Type": "application/fhir+json"}, content=orjson.dumps(body))
    return httpx.get(url, params=params or {"exportType": ATR_EXPORT}, headers=auth(base, key))


def wait(base: str, key: ClientKey, status_url: str) -> httpx.Response:
    headers = auth(base, key)
    for _ in range(600):
        res = httpx.get(status_url, headers=headers)
        if res.status_code != 202:
            return res
        assert res.headers["X-Progress"] and res.headers["Retry-After"] == "1"
        time.sleep(0.1)
    raise AssertionError("export did not finish")


def download(base: str, key: ClientKey, manifest: dict, folder: Path) -> dict[str, list[dict]]:
    """Files of a manifest into `folder` with a manifest of relative URLs, as `atr conform` reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    headers = auth(base, key)
    local = {"transactionTime": manifest["transactionTime"], "request": manifest["request"], "requiresAccessToken": True,
             "output": [], "error": []}
    lines: dict[str, list[dict]] = {}
    for kind in ("output", "error"):
        for item in manifest[kind]:
            res = httpx.get(item["url"], headers=headers)
            assert res.status_code == 200 and res.headers["content-type"].startswith("application/fhir+ndjson")
            name = item["url"].rsplit("/", 1)[1]
            (folder / name).write_bytes(res.content)
            parsed = [orjson.loads(x) for x in res.content.splitlines()]
            assert len(parsed) == item["count"]
            lines.setdefault(item["type"], []).extend(parsed)
            local[kind].append({"type": item["type"], "url": name, "count": item["count"]})
    (folder / "manifest.json").write_bytes(orjson.dumps(local))
    return lines


def test_full_export_follows_bulk_data_and_passes_atr_conform(home, keys, base, tmp_path):
    a, _ = keys
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    res = kick_off(base, a, gid)
    assert res.status_code == 202, res.text
    status_url = res.headers["Content-Location"]
    done = wait(base, a, status_url)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith(f"/Group/{gid}/$davinci-data-export?exportType={ATR_EXPORT}")
    assert manifest["transactionTime"].endswith("Z") and "Expires" in done.headers
    lines = download(base, a, manifest, tmp_path / "export")
    assert {"Group", "Patient", "Coverage", "RelatedPerson", "Practitioner", "PractitionerRole", "Organization"} == set(lines)
    group = lines["Group"][0]
    assert group["id"] == gid and len(lines["Group"]) == 1
    members = {m["entity"]["reference"] for m in group["member"]}
    assert {f"Patient/{p['id']}" for p in lines["Patient"]} == members
    # the other contract's members are not in this client's files
    other = orjson.loads(next(x for x in (home / "exports/acme_commercial/2026-09/Group.ndjson").read_bytes().splitlines()
                              if orjson.loads(x)["id"] != gid))
    assert not ({m["entity"]["reference"] for m in other["member"]} - members) & {f"Patient/{p['id']}" for p in lines["Patient"]}
    res = atr(home, "conform", str(tmp_path / "export"), "--json-out")
    assert res.returncode == 0, res.stdout[-3000:]
    report = orjson.loads(res.stdout)
    assert report["resources_checked"] == sum(len(v) for v in lines.values())
    job_dir = home / "api" / "jobs" / status_url.rsplit("/", 1)[1]
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in job_dir.iterdir()} == {0o600}


def test_post_parameters_with_type_and_patient_filters_and_reports_non_members(home, keys, base, tmp_path):
    a, _ = keys
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    group = orjson.loads(next(x for x in (home / "exports/acme_commercial/2026-09/Group.ndjson").read_bytes().splitlines()
                              if orjson.loads(x)["id"] == gid))
    wanted = group["member"][0]["entity"]["reference"]
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "exportType", "valueCanonical": ATR_EXPORT},
        {"name": "_type", "valueString": "Group,Patient,Coverage"},
        {"name": "patient", "valueReference": {"reference": wanted}},
        {"name": "patient", "valueReference": {"reference": "Patient/not-a-member"}},
    ]}
    res = kick_off(base, a, gid, body=body)
    assert res.status_code == 202, res.text
    manifest = wait(base, a, res.headers["Content-Location"]).json()
    lines = download(base, a, manifest, tmp_path / "export")
    assert set(lines) == {"Group", "Patient", "Coverage", "OperationOutcome"}
    assert [f"Patient/{p['id']}" for p in lines["Patient"]] == [wanted]
    assert {m["entity"]["reference"] for m in lines["Group"][0]["member"]} == {wanted}
    assert len(lines["Coverage"]) == sum(1 for m in group["member"] if m["entity"]["reference"] == wanted)
    (issue,) = lines["OperationOutcome"]
    assert "Patient/not-a-member is not a member" in issue["issue"][0]["diagnostics"]


def test_since_and_until_select_by_the_published_group_version(home, keys, base):
    a, _ = keys
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    res = kick_off(base, a, gid, {"exportType": ATR_EXPORT, "_since": future})
    manifest = wait(base, a, res.headers["Content-Location"]).json()
    assert manifest["output"] == []  # nothing updated after tomorrow
    res = kick_off(base, a, gid, {"_until": "2000-01-01T00:00:00Z"})
    manifest = wait(base, a, res.headers["Content-Location"]).json()
    assert manifest["output"] == [] and len(manifest["error"]) == 1


@pytest.mark.parametrize("params, fragment", [
    ({"_typeFilter": "Patient?gender=female"}, "_typeFilter is not supported"),
    ({"exportType": "hl7.fhir.us.davinci-pdex#payertopayer"}, "exportType"),
    ({"_type": "Observation"}, "_type Observation"),
    ({"_since": "yesterday"}, "_since"),
    ({"patient": "Coverage/x"}, "patient"),
    ({"includeAssociatedData": "LatestProvenanceResources"}, "unknown"),
])
def test_bad_kick_off_parameters_get_400_operation_outcome(home, keys, base, params, fragment):
    a, _ = keys
    res = kick_off(base, a, group_ids(home, "2026-09")["VBC25-0001"], params)
    assert res.status_code == 400, res.text
    assert res.json()["resourceType"] == "OperationOutcome" and fragment in res.json()["issue"][0]["diagnostics"]


def test_another_clients_token_cannot_see_status_or_files_and_cannot_export_the_group(home, keys, base):
    a, b = keys
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    status_url = kick_off(base, a, gid).headers["Content-Location"]
    manifest = wait(base, a, status_url).json()
    for url in (status_url, manifest["output"][0]["url"]):
        res = httpx.get(url, headers=auth(base, b))
        assert res.status_code == 404 and res.json()["resourceType"] == "OperationOutcome"
        assert httpx.get(url).status_code == 401
    assert httpx.delete(status_url, headers=auth(base, b)).status_code == 404
    assert kick_off(base, b, gid).status_code == 404
    assert httpx.get(manifest["output"][0]["url"], headers=auth(base, a)).status_code == 200


def test_delete_cancels_and_removes_the_files(home, keys, base):
    a, _ = keys
    status_url = kick_off(base, a, group_ids(home, "2026-09")["VBC25-0001"]).headers["Content-Location"]
    manifest = wait(base, a, status_url).json()
    job_dir = home / "api" / "jobs" / status_url.rsplit("/", 1)[1]
    assert job_dir.is_dir()
    assert httpx.delete(status_url, headers=auth(base, a)).status_code == 202
    assert not job_dir.exists()
    assert httpx.get(status_url, headers=auth(base, a)).status_code == 404
    assert httpx.get(manifest["output"][0]["url"], headers=auth(base, a)).status_code == 404


def test_jobs_survive_a_restart_and_unfinished_ones_run_again(home, keys, tmp_path):
    from atr_pipeline.api.jobs import Job, JobStore

    a, _ = keys
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    with live_server(home) as first:
        finished = kick_off(first, a, gid).headers["Content-Location"].rsplit("/", 1)[1]
        wait(first, a, f"{first}/bulkstatus/{finished}")
    # a job the server accepted but never ran (as if it stopped right after kick-off)
    store = JobStore(home)
    pending = store.create(Job(id="", client_id=a.client_id, group_id=gid, request="test", types=["Group", "Patient"]))
    store.shutdown()
    with live_server(home) as second:
        done = wait(second, a, f"{second}/bulkstatus/{finished}")
        assert done.status_code == 200
        assert httpx.get(done.json()["output"][0]["url"], headers=auth(second, a)).status_code == 200
        resumed = wait(second, a, f"{second}/bulkstatus/{pending.id}").json()
        assert [o["type"] for o in resumed["output"]] == ["Group", "Patient"]


def test_retention_cleanup_deletes_expired_jobs(home, keys):
    from atr_pipeline.api.jobs import Job, JobStore

    a, _ = keys
    store = JobStore(home, retention=timedelta(hours=1))
    job = store.create(Job(id="", client_id=a.client_id, group_id="g", request="r", types=["Group"],
                           status="completed", expires=(datetime.now(UTC) + timedelta(hours=1)).isoformat()))
    assert job.id not in store.cleanup()
    assert job.id in store.cleanup(now=datetime.now(UTC) + timedelta(hours=2))
    assert not store.folder(job.id).exists()
    store.shutdown()


def test_files_are_split_at_the_configured_size(home, keys, tmp_path):
    a, _ = keys
    gid = group_ids(home, "2026-09")["VBC25-0001"]
    os.environ["ATR_API_EXPORT_FILE_BYTES"] = "2000"
    try:
        with live_server(home) as base:
            manifest = wait(base, a, kick_off(base, a, gid).headers["Content-Location"]).json()
            patients = [o for o in manifest["output"] if o["type"] == "Patient"]
            assert len(patients) > 1
            lines = download(base, a, manifest, tmp_path / "split")
            assert len(lines["Patient"]) == sum(o["count"] for o in patients)
    finally:
        del os.environ["ATR_API_EXPORT_FILE_BYTES"]
    res = atr(home, "conform", str(tmp_path / "split"))
    assert res.returncode == 0, res.stdout[-2000:]
