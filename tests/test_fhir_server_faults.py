"""Each injected fault of the FHIR test server, observed from Python with httpx; plus a bulk load."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from fhir_server_fixture import FhirTestServer, fhir, fhir_server  # noqa: F401


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def put_patient(server: FhirTestServer, n: int) -> httpx.Response:
    pid = uid(n)
    return server.request("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid})


@pytest.mark.parametrize(
    ("mode", "code", "text"),
    [
        ("429", "throttled", "Too many requests"),
        ("500", "exception", "Internal server error"),
        ("503", "exception", "Service unavailable"),
        ("409", "conflict", "could not serialize access due to concurrent update"),
    ],
)
def test_status_faults_answer_then_clear(fhir: FhirTestServer, mode: str, code: str, text: str) -> None:
    fhir.faults(mode, count=2, retry_after=7)
    for n in (1, 2):
        resp = put_patient(fhir, n)
        assert resp.status_code == int(mode)
        issue = resp.json()["issue"][0]
        assert (issue["code"], issue["details"]["text"]) == (code, text)
        assert resp.headers.get("Retry-After") == ("7" if mode in ("429", "503") else None)
    # nothing was applied while faulted; the third request goes through
    assert put_patient(fhir, 3).status_code == 200
    assert fhir.count("Patient") == 1
    stats = fhir.stats()
    assert stats["faults"] == {mode: 2}
    assert stats["byStatus"] == {mode: 2, "200": 2}  # two faulted PUTs, one PUT, one count search


def test_faults_match_method_type_path_and_skip(fhir: FhirTestServer) -> None:
    fhir.faults("503", count=1, method="PUT", type="Coverage")
    fhir.faults("500", count=1, path="/Patient/" + uid(2), skip=1)
    assert put_patient(fhir, 1).status_code == 200  # neither rule matches
    assert fhir.get(f"Patient/{uid(2)}").status_code == 404  # matched, skipped
    assert put_patient(fhir, 2).status_code == 500  # matched, fired
    assert put_patient(fhir, 2).status_code == 200
    cov = {"resourceType": "Coverage", "id": uid(3), "status": "active", "beneficiary": {"reference": f"Patient/{uid(1)}"},
           "payor": [{"reference": f"Patient/{uid(1)}"}]}
    assert fhir.request("GET", f"Coverage/{uid(3)}").status_code == 404  # wrong method
    assert fhir.request("PUT", f"Coverage/{uid(3)}", cov).status_code == 503
    assert fhir.request("PUT", f"Coverage/{uid(3)}", cov).status_code == 200
    armed = [(f["mode"], f["count"], f["fired"]) for f in fhir.client.get(f"{fhir.root_url}/__admin/faults").json()["faults"]]
    assert armed == [("503", 0, 1), ("500", 0, 1)]


def test_bundle_posts_match_type_bundle(fhir: FhirTestServer) -> None:
    fhir.faults("429", count=1, type="Bundle")
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient?_summary=count"}}]}
    assert fhir.request("POST", "", batch).status_code == 429
    assert fhir.request("POST", "", batch).status_code == 200


def test_delay_fault_applies_then_answers_late(fhir: FhirTestServer) -> None:
    fhir.faults("delay", count=1, delay_ms=1500)
    # A client timeout shorter than the delay sees a timeout, yet the write was applied.
    with pytest.raises(httpx.ReadTimeout):
        httpx.put(f"{fhir.base_url}/Patient/{uid(1)}", json={"resourceType": "Patient", "id": uid(1)}, timeout=0.3)
    assert fhir.count("Patient") == 1
    assert fhir.stats()["faults"] == {"delay": 1}
    # The fault is spent: the next request answers well inside the 1.5 s delay.
    assert httpx.get(f"{fhir.base_url}/Patient/{uid(1)}", timeout=1.2).status_code == 200


def test_delay_before_holds_the_request_then_applies_it(fhir: FhirTestServer) -> None:
    fhir.faults("delay", count=1, delay_ms=300, when="before")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{fhir.base_url}/Patient", params={"_summary": "count"}, timeout=0.1)
    resp = httpx.put(f"{fhir.base_url}/Patient/{uid(2)}", json={"resourceType": "Patient", "id": uid(2)}, timeout=5)
    assert resp.status_code == 200
    assert fhir.count("Patient") == 1


# A destroyed socket reaches the client as a closed connection (RemoteProtocolError) or, when
# the kernel still held unread bytes, as a reset (ReadError): both are a dropped connection.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError)


def test_drop_after_applies_the_write_but_cuts_the_response(fhir: FhirTestServer) -> None:
    fhir.faults("drop", count=1, method="PUT")
    with pytest.raises(DROPPED):
        put_patient(fhir, 1)
    assert fhir.count("Patient") == 1  # the server did the work: a retry must be idempotent
    assert put_patient(fhir, 1).status_code == 200
    assert fhir.count("Patient") == 1
    assert fhir.stats()["dropped"] == 1


def test_drop_before_applies_nothing(fhir: FhirTestServer) -> None:
    fhir.faults("drop", count=1, when="before")
    with pytest.raises(DROPPED):
        put_patient(fhir, 1)
    assert fhir.count("Patient") == 0
    assert fhir.stats()["dropped"] == 1


def test_unknown_fault_mode_is_refused(fhir: FhirTestServer) -> None:
    resp = fhir.client.post(f"{fhir.root_url}/__admin/faults", json={"mode": "418"})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("unknown fault mode")


def test_reset_clears_faults_and_stats(fhir: FhirTestServer) -> None:
    fhir.faults("500", count=5)
    assert put_patient(fhir, 1).status_code == 500
    fhir.reset()
    assert put_patient(fhir, 1).status_code == 200
    stats = fhir.stats()
    assert stats["requests"] == 1
    assert stats["faults"] == {}


def test_bulk_batch_put_load(fhir: FhirTestServer, capsys: pytest.CaptureFixture[str]) -> None:
    """~5k small Patients in batches of 500 PUTs; the rate is printed, never asserted."""
    total, size = 5000, 500
    started = time.perf_counter()
    for start in range(0, total, size):
        entries = [
            {
                "resource": {"resourceType": "Patient", "id": uid(n), "gender": "female", "identifier": [{"system": "urn:test:member", "value": f"m{n}"}]},
                "request": {"method": "PUT", "url": f"Patient/{uid(n)}"},
            }
            for n in range(start, start + size)
        ]
        resp = fhir.request("POST", "", {"resourceType": "Bundle", "type": "batch", "entry": entries})
        assert resp.status_code == 200
        assert {e["response"]["status"] for e in resp.json()["entry"]} == {"200"}
    elapsed = time.perf_counter() - started
    assert fhir.count("Patient") == total
    assert fhir.search("Patient", {"identifier": "urn:test:member|m4321"})[0]["id"] == uid(4321)
    with capsys.disabled():
        print(f"\nFHIR test server batch PUT load: {total} Patients in {elapsed:.2f} s = {total / elapsed:,.0f} resources/s")
