"""The loader against the real FHIR test server (Medplum's engine): counts, references, idempotence,
crash and resume, injected faults, size limits, large Groups, SMART auth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir_server_fixture import fhir, fhir_server  # noqa: F401
from token_server import TokenServer

from atr_pipeline.publish.auth import SmartBackendAuth
from atr_pipeline.publish.checkpoint import STATE_DIR
from atr_pipeline.publish.export import iter_ndjson, write_bulk_export
from atr_pipeline.publish.loader import REPORT_NAME, load_export
from atr_pipeline.publish.server import RetryPolicy, ServerConfig, Timeouts
from atr_pipeline.publish.synthetic import synthetic_errors, synthetic_resources
from atr_pipeline.systems import LOAD_ORDER

T0 = datetime(2026, 11, 1, tzinfo=UTC)
FAST = RetryPolicy(max_attempts=6, max_total_retry_seconds=60, initial_backoff=0.01, max_backoff=0.05)


def _export(tmp_path: Path, members: int = 60, groups: int = 2, name: str = "export", resources=None, **kwargs) -> Path:
    out = tmp_path / name
    write_bulk_export(
        out,
        resources or synthetic_resources(members, groups=groups),
        errors=synthetic_errors(2),
        transaction_time=T0,
        request="Group/$davinci-data-export",
        **kwargs,
    )
    return out


def _config(server, **overrides) -> ServerConfig:
    settings = {"bundle_size": 20, "concurrency": 2, "retry": FAST, **overrides}
    return ServerConfig(base_url=server.base_url, **settings)


def _expected(export_dir: Path) -> dict[str, int]:
    return {t: sum(1 for _ in iter_ndjson(export_dir, t)) for t in LOAD_ORDER}


def _server_counts(server) -> dict[str, int]:
    return {t: server.count(t) for t in LOAD_ORDER}


def test_small_export_loads_with_exact_counts_and_resolvable_references(fhir, tmp_path):
    export_dir = _export(tmp_path)
    report = load_export(export_dir, _config(fhir))
    expected = _expected(export_dir)
    assert expected == {"Organization": 2, "Practitioner": 3, "PractitionerRole": 3, "Patient": 60, "RelatedPerson": 6, "Coverage": 60, "Group": 2}
    assert _server_counts(fhir) == expected
    assert report.status == "complete"
    assert report.failed == []
    assert {t: c.created + c.updated + c.unchanged for t, c in report.counts.items()} == expected
    assert report.retries == 0
    # every member of every Group points at a Patient, Coverage and PractitionerRole that exist
    patient_ids = {p["id"] for p in fhir.search("Patient")}
    coverage_ids = {c["id"] for c in fhir.search("Coverage")}
    role_ids = {r["id"] for r in fhir.search("PractitionerRole")}
    members = 0
    for line in iter_ndjson(export_dir, "Group"):
        group_id = orjson.loads(line)["id"]
        group = fhir.get(f"Group/{group_id}").json()
        for member in group["member"]:
            members += 1
            assert member["entity"]["reference"].removeprefix("Patient/") in patient_ids
            refs = {e["url"].rsplit("-", 1)[-1]: e["valueReference"]["reference"] for e in member["extension"] if "valueReference" in e}
            assert refs["coverageReference"].removeprefix("Coverage/") in coverage_ids
            assert refs["attributedProvider"].removeprefix("PractitionerRole/") in role_ids
    assert members == 60
    # the report on disk is the returned one, and carries no names or member ids
    on_disk = (export_dir / REPORT_NAME).read_bytes()
    assert orjson.loads(on_disk)["counts"]["Patient"]["total"] == 60
    assert b"Member" not in on_disk and b"M0000" not in on_disk


def test_second_run_skips_and_restart_leaves_server_unchanged(fhir, tmp_path):
    export_dir = _export(tmp_path)
    load_export(export_dir, _config(fhir))
    expected = _expected(export_dir)
    group_id = orjson.loads(next(iter_ndjson(export_dir, "Group")))["id"]
    version_before = fhir.get(f"Group/{group_id}").json()["meta"]["versionId"]

    resumed = load_export(export_dir, _config(fhir))
    assert resumed.requests == 0
    assert {t: c.skipped for t, c in resumed.counts.items()} == expected
    assert resumed.status == "complete"

    again = load_export(export_dir, _config(fhir), resume=False)
    assert again.status == "complete"
    assert again.checkpoint_note == "checkpoint ignored (--restart)"
    assert {t: c.created + c.updated + c.unchanged for t, c in again.counts.items()} == expected
    assert _server_counts(fhir) == expected
    # identical content: the server kept the same version, nothing was duplicated
    assert fhir.get(f"Group/{group_id}").json()["meta"]["versionId"] == version_before


def test_transaction_mode_and_gzipped_split_export(fhir, tmp_path):
    export_dir = _export(tmp_path, members=45, gzip=True, max_lines_per_file=10)
    report = load_export(export_dir, _config(fhir, mode="transaction", bundle_size=15))
    assert report.status == "complete"
    assert _server_counts(fhir) == _expected(export_dir)
    assert fhir.stats()["byType"]["Bundle"] == report.requests + report.reads  # writes, and the batch reads before them


def test_crash_mid_load_then_resume_gives_exact_counts(fhir, tmp_path):
    export_dir = _export(tmp_path, members=200)
    seen: list[tuple[str, int]] = []

    def crash_after_five_chunks(event):
        if event.tick:
            return
        seen.append((event.resource_type, event.chunk_index))
        if len(seen) == 5:
            raise KeyboardInterrupt("operator pressed Ctrl-C")

    with pytest.raises(KeyboardInterrupt):
        load_export(export_dir, _config(fhir), progress=crash_after_five_chunks)
    crashed = orjson.loads((export_dir / REPORT_NAME).read_bytes())
    assert crashed["status"] == "stopped"
    assert crashed["stop_reason"] == "interrupted by KeyboardInterrupt; re-run the same command to resume"
    expected = _expected(export_dir)
    partial = _server_counts(fhir)
    assert partial["Patient"] < expected["Patient"]
    assert partial["Group"] == 0

    report = load_export(export_dir, _config(fhir))
    assert report.resumed is True
    assert report.status == "complete"
    assert _server_counts(fhir) == expected
    skipped = sum(c.skipped for c in report.counts.values())
    # the five chunks the crashed run settled (and logged) are not sent again
    assert skipped == 2 + 3 + 3 + 20 + 20  # Organization, Practitioner, PractitionerRole, two Patient chunks
    # chunks in flight at the crash were applied but not logged: found unchanged, not written again
    assert {t: c.created + c.updated + c.unchanged + c.skipped for t, c in report.counts.items()} == expected


def test_killed_loader_process_resumes_to_exact_counts(fhir, tmp_path):
    export_dir = _export(tmp_path, members=300)
    fhir.faults("delay", count=10_000, type="Bundle", delay_ms=150)  # slow enough to kill mid-way
    script = (
        "import sys; from pathlib import Path;"
        "from atr_pipeline.publish.loader import load_export;"
        "from atr_pipeline.publish.server import ServerConfig;"
        "load_export(Path(sys.argv[1]), ServerConfig(base_url=sys.argv[2], bundle_size=20, concurrency=2))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(export_dir), fhir.base_url])
    state = next(iter([]), None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = list((export_dir / STATE_DIR).glob("*.jsonl")) if (export_dir / STATE_DIR).exists() else []
        state = files[0] if files else None
        if state and state.read_bytes().count(b"\n") >= 8:  # header + 7 settled chunks
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    fhir.clear_faults()
    expected = _expected(export_dir)
    assert _server_counts(fhir)["Coverage"] < expected["Coverage"]

    report = load_export(export_dir, _config(fhir))
    assert report.resumed is True
    assert report.status == "complete"
    assert _server_counts(fhir) == expected
    assert sum(c.skipped for c in report.counts.values()) >= 7


def test_injected_faults_are_survived_and_counted(fhir, tmp_path):
    export_dir = _export(tmp_path, members=100)
    fhir.faults("429", count=2, type="Bundle", retry_after=1)
    fhir.faults("500", count=2, type="Bundle", skip=3)
    fhir.faults("409", count=2, type="Bundle", skip=5)
    fhir.faults("503", count=1, type="Bundle", skip=7, retry_after=0)
    fhir.faults("drop", count=2, type="Bundle", skip=9)  # applied, answer cut mid-body
    fhir.faults("drop", count=1, type="Bundle", skip=11, when="before")  # nothing applied
    fhir.faults("delay", count=1, type="Bundle", skip=12, delay_ms=3000)
    # Bundle faults would also hit the batch reads before each write: write only, to count them exactly.
    config = _config(fhir, timeouts=Timeouts(read=1.0), skip_unchanged=False)
    report = load_export(export_dir, config)
    assert report.status == "complete"
    assert report.failed == []
    assert _server_counts(fhir) == _expected(export_dir)
    assert report.retries_by_reason == {"http-429": 2, "http-500": 2, "http-409": 2, "http-503": 1, "connection": 3, "timeout": 1}
    assert report.retries == 11
    assert report.retry_sleep_seconds >= 2.0  # two Retry-After: 1 honoured
    assert fhir.stats()["faults"] == {"429": 2, "500": 2, "409": 2, "503": 1, "drop": 3, "delay": 1}


def test_max_attempts_reports_the_exact_entries_then_a_rerun_finishes(fhir, tmp_path):
    export_dir = _export(tmp_path, members=20)
    fhir.faults("500", count=2, type="Bundle")  # the Organization bundle fails twice
    config = _config(fhir, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02), skip_unchanged=False)
    report = load_export(export_dir, config)
    org_ids = sorted(orjson.loads(line)["id"] for line in iter_ndjson(export_dir, "Organization"))
    assert report.status == "failed_entries"
    assert [(f.resource_type, f.id, f.status, f.reason, f.attempts) for f in report.failed] == [
        ("Organization", i, 500, "max-attempts", 2) for i in org_ids
    ]
    assert report.counts["Organization"].failed == 2
    assert fhir.count("Organization") == 0
    assert fhir.count("Patient") == 20  # the load went on with the other types

    rerun = load_export(export_dir, config)
    assert rerun.status == "complete"
    assert rerun.counts["Organization"].updated + rerun.counts["Organization"].created == 2
    assert rerun.counts["Patient"].skipped == 20
    assert _server_counts(fhir) == _expected(export_dir)


def test_retry_budget_stops_the_load_with_a_clear_report(fhir, tmp_path):
    export_dir = _export(tmp_path, members=40)
    fhir.faults("503", count=10_000, type="Bundle", skip=2, retry_after=0)
    config = _config(fhir, retry=RetryPolicy(max_attempts=1000, max_total_retry_seconds=0.3, initial_backoff=0.05, max_backoff=0.1))
    report = load_export(export_dir, config)
    assert report.status == "stopped"
    assert report.stop_reason.startswith("retry budget exhausted: 0.3 s of backoff spent (last failure: http-503)")
    assert report.retry_sleep_seconds <= 0.3
    assert {f.reason for f in report.failed} == {"stopped"}
    assert "Group" not in report.counts or report.counts["Group"].updated == 0
    on_disk = orjson.loads((export_dir / REPORT_NAME).read_bytes())
    assert on_disk["status"] == "stopped"

    fhir.clear_faults()
    finished = load_export(export_dir, _config(fhir))
    assert finished.status == "complete"
    assert finished.resumed is True
    assert _server_counts(fhir) == _expected(export_dir)


def test_refused_entries_are_reported_sanitized_and_neighbours_load(fhir, tmp_path):
    resources = synthetic_resources(10)
    patients = resources["Patient"].to_dicts()
    bad = orjson.loads(patients[3]["json"])
    bad["gender"] = "Member3-secret"  # outside the required binding: the server refuses it
    patients[3]["json"] = orjson.dumps(bad).decode()
    resources["Patient"] = pl.DataFrame(patients)
    export_dir = _export(tmp_path, resources=resources)
    report = load_export(export_dir, _config(fhir))
    assert report.status == "failed_entries"
    (failed,) = report.failed
    assert (failed.resource_type, failed.id, failed.status, failed.reason) == ("Patient", bad["id"], 400, "http-400")
    assert [(i.severity, i.code, i.expression) for i in failed.issues] == [("error", "code-invalid", ["Patient.gender"])]
    assert fhir.count("Patient") == 9  # batch: the other entries of the bundle were stored
    assert b"Member3-secret" not in (export_dir / REPORT_NAME).read_bytes()
    # the types that reference Patient were not sent: no Coverage or Group points at a missing Patient
    assert {t: (c.state, fhir.count(t)) for t, c in report.counts.items()} == {
        "Organization": ("loaded", 2), "Practitioner": ("loaded", 3), "PractitionerRole": ("loaded", 3), "Patient": ("failed", 9),
        "RelatedPerson": ("not_attempted", 0), "Coverage": ("not_attempted", 0), "Group": ("not_attempted", 0),
    }
    assert report.counts["Coverage"].note == "not sent: it references Patient, RelatedPerson, which did not load (--keep-going sends it anyway)"
    # a rerun tries the refused entry again (it is not in the checkpoint) and reports it again
    rerun = load_export(export_dir, _config(fhir))
    assert [f.id for f in rerun.failed] == [bad["id"]]
    assert rerun.counts["Patient"].skipped == 0  # its chunk never completed
    assert rerun.counts["Organization"].skipped == 2
    # --keep-going sends the dependents anyway
    kept = load_export(export_dir, _config(fhir), keep_going=True)
    assert kept.status == "failed_entries"
    assert {t: c.state for t, c in kept.counts.items() if c.state != "loaded"} == {"Patient": "failed"}
    assert (fhir.count("Coverage"), fhir.count("Group")) == (10, 1)


def test_request_size_limit_refusal_and_the_byte_cut_that_avoids_it(fhir, tmp_path):
    export_dir = _export(tmp_path, members=80, groups=1)
    assert len(next(iter_ndjson(export_dir, "Group"))) > 30_000  # the Group alone is over the limit
    fhir.configure(maxBodyBytes=30_000)
    too_big = load_export(export_dir, _config(fhir, bundle_size=50, max_request_bytes=1_000_000))
    assert too_big.status == "failed_entries"
    assert {f.status for f in too_big.failed} == {413}
    fits = load_export(export_dir, _config(fhir, bundle_size=50, max_request_bytes=28_000, max_group_members_per_request=1000), resume=False)
    assert fits.status == "complete"
    assert _server_counts(fhir) == _expected(export_dir)
    assert fits.counts["Group"].group_patches >= 1  # PUT with the first members, PATCH for the rest


def test_large_group_by_patch_survives_lost_answers_without_duplicates(fhir, tmp_path):
    export_dir = _export(tmp_path, members=2_500, groups=1)
    fhir.faults("drop", count=1, method="PATCH")  # first PATCH applied, answer lost
    fhir.faults("drop", count=1, method="PATCH", skip=1, when="before")  # a later one never arrives
    fhir.faults("500", count=1, method="PATCH", skip=2)
    # skip_unchanged off: its reads would be counted below with the read-backs
    report = load_export(export_dir, _config(fhir, bundle_size=50, max_group_members_per_request=400, skip_unchanged=False))
    assert report.status == "complete"
    stats = fhir.stats()
    # 6 PATCHes for slices 2..7; the dropped-before and the 500 one are sent again (8); the applied
    # one whose answer was lost is found by reading the Group back, not sent twice. 3 read-backs.
    assert stats["byMethod"]["PATCH"] == 8
    assert report.reads == 3
    assert stats["byMethod"]["GET"] == 1 + 3 + report.check_requests  # metadata, read-backs, the check after the load
    assert stats["faults"] == {"drop": 2, "500": 1}
    group_line = next(iter_ndjson(export_dir, "Group"))
    expected_members = [m["entity"]["reference"] for m in orjson.loads(group_line)["member"]]
    stored = fhir.get(f"Group/{orjson.loads(group_line)['id']}").json()
    assert [m["entity"]["reference"] for m in stored["member"]] == expected_members  # order kept, no duplicates
    assert len(stored["member"]) == 2_500
    assert report.counts["Group"].group_patches == 6  # ceil(2500/400) = 7 slices, the first one in the PUT


def test_smart_auth_fetches_one_token_for_the_whole_load(fhir, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = TokenServer(expires_in=300).start()
    try:
        tokens.register("atr-loader", key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        auth = SmartBackendAuth(tokens.token_url, "atr-loader", key, kid="k1")
        export_dir = _export(tmp_path, members=80)
        report = load_export(export_dir, _config(fhir, auth="smart", concurrency=3), auth=auth)
    finally:
        tokens.stop()
    assert report.status == "complete"
    assert report.requests > 10
    assert tokens.token_requests == 1
    assert _server_counts(fhir) == _expected(export_dir)


def test_refused_credentials_stop_the_load_at_once(tmp_path):
    """A server that answers 401 to everything: no retries, a stopped report that says why."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refuse(BaseHTTPRequestHandler):
        """Reads allowed (the metadata preflight passes), every write refused: a read-only token."""

        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b'{"resourceType":"CapabilityStatement","fhirVersion":"4.0.1","software":{"name":"refuser"}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login"}]}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        export_dir = _export(tmp_path, members=200)
        config = ServerConfig(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/fhir/R4", bundle_size=20, concurrency=1, retry=FAST, skip_unchanged=False)
        report = load_export(export_dir, config)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert report.status == "stopped"
    assert report.stop_reason == "http-401: the server refused the credentials; fix auth and re-run"
    assert report.retries == 0
    assert report.requests == 1
    assert [(f.resource_type, f.status, f.reason) for f in report.failed] == [("Organization", 401, "http-401")] * 2
    assert [i.code for i in report.failed[0].issues] == ["login"]


def test_resume_checks_every_group_member_count_and_resends_a_shrunk_group(fhir, tmp_path):
    export_dir = _export(tmp_path, members=60, groups=2)
    assert load_export(export_dir, _config(fhir)).status == "complete"
    line = orjson.loads(next(iter_ndjson(export_dir, "Group")))
    shrunk = {**line, "member": line["member"][:3]}  # someone (or a restore) left 3 of its members
    assert fhir.request("PUT", f"Group/{line['id']}", shrunk).status_code == 200

    report = load_export(export_dir, _config(fhir))
    assert report.verify_note == (
        f"the server lost data since the checkpoint (Group/{line['id']}: 3 members on the server, {len(line['member'])} in the export); "
        "those types are sent again"
    )
    assert report.status == "complete"
    assert (report.counts["Group"].skipped, report.counts["Group"].updated, report.counts["Group"].unchanged) == (0, 1, 1)
    assert report.counts["Patient"].skipped == 60
    assert len(fhir.get(f"Group/{line['id']}").json()["member"]) == len(line["member"])
