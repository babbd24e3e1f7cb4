"""Each fault a load meets, through the real `atr load` entry point (a subprocess) against the real
FHIR test server: exit code, message, and the exact count per type on the server afterwards.

Faults: nothing listening, a wrong base path, the wrong FHIR version, two resources the server
refuses, a changed NDJSON file, the client killed, the server killed (and started again empty)
mid-load, the server restarted empty while the load goes on. Time bounds are generous subprocess
timeouts, never wall-clock asserts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from fhir_server_fixture import FhirTestServer, fhir, fhir_server  # noqa: F401

from atr_pipeline.publish.checkpoint import STATE_DIR
from atr_pipeline.publish.export import iter_ndjson, write_bulk_export
from atr_pipeline.publish.loader import REPORT_NAME
from atr_pipeline.publish.synthetic import synthetic_resources
from atr_pipeline.systems import LOAD_ORDER

ROOT = Path(__file__).resolve().parents[1]
ATR = Path(sys.executable).with_name("atr")
EXPECTED = {"Organization": 2, "Practitioner": 3, "PractitionerRole": 3, "Patient": 120, "RelatedPerson": 12, "Coverage": 120, "Group": 2}
NOTHING = dict.fromkeys(LOAD_ORDER, 0)
# Small bundles and fast retries keep every fault test to seconds.
FAST = ["--bundle-size", "20", "--max-attempts", "20", "--progress-interval", "0.2"]


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    out = tmp_path / "export"
    write_bulk_export(out, synthetic_resources(120, groups=2), errors=None, transaction_time=datetime(2026, 11, 1, tzinfo=UTC), request="r")
    assert {t: sum(1 for _ in iter_ndjson(out, t)) for t in LOAD_ORDER} == EXPECTED
    return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATR_FHIR_", "ATR_SMART_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def atr_load(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`atr load ...` as a user runs it; output is not a terminal (plain progress lines)."""
    return subprocess.run([str(ATR), "load", *args], capture_output=True, text=True, timeout=timeout, env=_env(), check=False)


def start_load(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(ATR), "load", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def counts(server: FhirTestServer) -> dict[str, int]:
    return {t: server.count(t) for t in LOAD_ORDER}


def checkpoint_lines(export_dir: Path) -> int:
    files = list((export_dir / STATE_DIR).glob("*.jsonl")) if (export_dir / STATE_DIR).exists() else []
    return files[0].read_bytes().count(b"\n") if files else 0


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report_of(export_dir: Path) -> dict:
    return orjson.loads((export_dir / REPORT_NAME).read_bytes())


def test_nothing_listening_exits_3_naming_host_port_and_the_error(fhir, export_dir):
    port = free_port()
    done = atr_load(str(export_dir), "--server", f"http://127.0.0.1:{port}/fhir/R4", *FAST, timeout=30)
    assert done.returncode == 3
    assert f"cannot reach the FHIR server at 127.0.0.1:{port}: connection refused; nothing was sent" in done.stderr
    assert not (export_dir / STATE_DIR).exists() and not (export_dir / REPORT_NAME).exists()
    assert counts(fhir) == NOTHING


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://127.0.0.1:{port}/fhir/R4", "127.0.0.1:{port}: TLS handshake failed"),  # TLS to a plain-HTTP port
    ],
)
def test_tls_failure_exits_3_in_words(fhir, export_dir, url, words):
    done = atr_load(str(export_dir), "--server", url.format(port=fhir.port), *FAST, timeout=30)
    assert done.returncode == 3
    assert f"cannot reach the FHIR server at {words.format(port=fhir.port)}" in done.stderr
    assert counts(fhir) == NOTHING


def test_wrong_base_path_exits_4_after_one_request(fhir, export_dir):
    done = atr_load(str(export_dir), "--server", f"{fhir.root_url}/nope", *FAST, timeout=30)
    assert done.returncode == 4
    assert f"no FHIR server at {fhir.root_url}/nope: GET metadata answered HTTP 404, not a CapabilityStatement" in done.stderr
    assert fhir.stats()["requests"] == 0  # /nope is outside the FHIR base: the server counted no FHIR request
    assert counts(fhir) == NOTHING


@pytest.mark.parametrize(
    ("status", "content_type", "body", "words"),
    [
        (200, "text/html", b"<html><body>Welcome to nginx</body></html>", "GET metadata answered text/html, not a CapabilityStatement"),
        (200, "application/json", b'{"status": "ok"}', "GET metadata answered JSON, not a CapabilityStatement"),
        (401, "application/fhir+json", b'{"resourceType":"OperationOutcome"}', "answered 401: the server refused the credentials"),
    ],
)
def test_not_a_fhir_server_exits_4_and_nothing_is_written(fhir, export_dir, status, content_type, body, words):
    seen: list[str] = []

    class Answer(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append("GET " + self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_GET

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        done = atr_load(str(export_dir), "--server", f"http://127.0.0.1:{httpd.server_address[1]}/fhir/R4", *FAST, timeout=30)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert done.returncode == 4
    assert words in done.stderr and "nothing was sent" in done.stderr
    assert seen == ["GET /fhir/R4/metadata"]


def test_wrong_fhir_version_exits_4_and_sends_nothing(fhir, export_dir):
    fhir.configure(fhirVersion="5.0.0")
    done = atr_load(str(export_dir), "--server", fhir.base_url, *FAST, timeout=30)
    assert done.returncode == 4
    assert f"the server at {fhir.base_url} speaks FHIR 5.0.0; ATR 2.1.0 resources need FHIR R4 (4.0.x); nothing was sent" in done.stderr
    assert fhir.stats()["byMethod"] == {"GET": 1}
    assert counts(fhir) == NOTHING


def test_unknown_kind_lists_the_valid_ones(fhir, export_dir):
    done = atr_load(str(export_dir), "--server", fhir.base_url, "--kind", "firely", timeout=30)
    assert done.returncode == 2
    assert "unknown server kind 'firely'; valid kinds: generic, medplum" in done.stderr
    assert counts(fhir) == NOTHING


def test_two_refused_resources_hold_back_their_dependents(fhir, export_dir):
    coverage_ids = sorted(orjson.loads(line)["id"] for line in iter_ndjson(export_dir, "Coverage"))
    refused = coverage_ids[5], coverage_ids[77]
    fhir.configure_rejects(*(f"Coverage/{i}" for i in refused))
    done = atr_load(str(export_dir), "--server", fhir.base_url, *FAST)
    assert done.returncode == 1
    for rid in refused:
        assert f"failed Coverage/{rid}: http-400 (business-rule@Coverage)" in done.stderr
    assert "Group: not_attempted: not sent: it references Coverage, which did not load (--keep-going sends it anyway)" in done.stderr
    assert "Coverage: failed: 2 of 120 refused" in done.stderr
    assert "status: failed_entries" in done.stderr
    assert counts(fhir) == {**EXPECTED, "Coverage": 118, "Group": 0}
    report = report_of(export_dir)
    assert {t: c["state"] for t, c in report["counts"].items()} == {
        **dict.fromkeys(["Organization", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson"], "loaded"),
        "Coverage": "failed",
        "Group": "not_attempted",
    }

    kept = atr_load(str(export_dir), "--server", fhir.base_url, *FAST, "--keep-going")
    assert kept.returncode == 1
    assert counts(fhir) == {**EXPECTED, "Coverage": 118}


def test_changed_ndjson_file_is_refused_by_name_before_anything_is_sent(fhir, export_dir):
    path = export_dir / "Patient.ndjson"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"Member", b"Membre")
    lines[40] = lines[40].replace(b"Member", b"Membre")
    path.write_bytes(b"\n".join(lines))  # same line count, other bytes
    done = atr_load(str(export_dir), "--server", fhir.base_url, *FAST, timeout=30)
    assert done.returncode == 2
    assert "Patient.ndjson: changed since the export was written" in done.stderr
    assert "nothing was sent" in done.stderr
    assert fhir.stats()["requests"] == 0
    assert counts(fhir) == NOTHING


# One Bundle at a time: the 10 Bundles before the stall are, in order, a batch read and a batch
# write each for Organization, Practitioner, PractitionerRole and the first two Patient chunks.
ONE = ["--concurrency", "1"]
BEFORE_STALL = {**NOTHING, "Organization": 2, "Practitioner": 3, "PractitionerRole": 3, "Patient": 40}


def stall_after(server: FhirTestServer, bundles: int, hold_ms: int = 60_000) -> None:
    """Let ``bundles`` Bundles through, then hold the next one (unapplied) for ``hold_ms``; return
    once it is held, so the load is at a known point."""
    server.faults("delay", count=1, type="Bundle", skip=bundles, delay_ms=hold_ms, when="before")
    wait_for(lambda: server.client.get(f"{server.root_url}/__admin/faults").json()["faults"][0]["fired"] == 1)


def test_killed_client_leaves_report_and_checkpoint_and_resumes_exactly(fhir, export_dir):
    proc = start_load(str(export_dir), "--server", fhir.base_url, *FAST, *ONE)
    stall_after(fhir, 10, hold_ms=8_000)
    time.sleep(0.5)  # two progress intervals: the report on disk has caught up with the checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # not a terminal: a plain line at the start, then one per interval with server-confirmed counts
    assert f"atr load: {export_dir} -> {fhir.base_url} (batch, bundles of 20)" in stderr
    assert re.search(r"^atr load: 48/262 on the server; Patient 40/120; no failures$", stderr, re.M)
    left = report_of(export_dir)  # flushed while the load went on
    assert left["status"] == "running"
    assert {t: c["state"] for t, c in left["counts"].items() if c["state"] != "not_attempted"} == dict.fromkeys(
        ["Organization", "Practitioner", "PractitionerRole"], "loaded"
    )
    assert left["counts"]["Patient"]["updated"] == 40
    assert checkpoint_lines(export_dir) == 1 + 3 + 3 + 2  # header, a chunk and a done line per type, two Patient chunks
    assert counts(fhir) == BEFORE_STALL

    done = atr_load(str(export_dir), "--server", fhir.base_url, *FAST)
    assert done.returncode == 0, done.stderr
    assert "resumed from the checkpoint of an earlier run" in done.stderr
    assert "checkpoint checked against the server: Organization 2, Practitioner 3, PractitionerRole 3, Patient 40 present" in done.stderr
    assert "status: complete" in done.stderr
    assert counts(fhir) == EXPECTED
    # the Bundle held when the client died is dropped by the server when its hold ends, not applied
    wait_for(lambda: fhir.stats().get("abandoned") == 1)
    assert counts(fhir) == EXPECTED


def test_server_killed_mid_load_stops_fast_then_restarted_empty_is_noticed_and_refilled(fhir, export_dir):
    proc = start_load(str(export_dir), "--server", fhir.base_url, *FAST, *ONE, "--max-unreachable-seconds", "2")
    stall_after(fhir, 10)
    fhir.kill()
    _, stderr = proc.communicate(timeout=60)  # the bound: 2 s of silence, then stop
    assert proc.returncode == 1
    assert f"the FHIR server at 127.0.0.1:{fhir.port} has not answered for 2 s (connection refused); stopped with the checkpoint" in stderr
    resume = f"resume with: atr load {export_dir} --server {fhir.base_url} " + " ".join(FAST + ONE) + " --max-unreachable-seconds 2"
    assert resume in stderr
    assert "Patient: failed: the load stopped during this type (40 of 120 on the server)" in stderr
    assert "RelatedPerson: not_attempted: the load stopped before this type" in stderr
    assert "retrying 1, last error: connection refused" in stderr  # the progress lines said so meanwhile
    report = report_of(export_dir)
    assert report["status"] == "stopped"
    assert {t: c["state"] for t, c in report["counts"].items()} == {
        **dict.fromkeys(["Organization", "Practitioner", "PractitionerRole"], "loaded"),
        "Patient": "failed",
        **dict.fromkeys(["RelatedPerson", "Coverage", "Group"], "not_attempted"),
    }

    fhir.start_again()  # empty, like an in-memory server after a restart
    assert counts(fhir) == NOTHING
    done = atr_load(*resume.removeprefix("resume with: atr load ").split())
    assert done.returncode == 0, done.stderr
    assert (
        "the server lost data since the checkpoint (Organization: 0 on the server, 2 loaded before; Practitioner: 0 on the server, "
        "3 loaded before; PractitionerRole: 0 on the server, 3 loaded before; Patient: 0 on the server, 40 loaded before); "
        "those types are sent again"
    ) in done.stderr
    assert "status: complete" in done.stderr
    assert counts(fhir) == EXPECTED


def test_server_restarted_empty_while_the_load_goes_on_is_not_called_complete(fhir, export_dir):
    proc = start_load(str(export_dir), "--server", fhir.base_url, *FAST, *ONE)
    stall_after(fhir, 10)
    fhir.start_again()  # killed and back within the loader's patience: it retries and goes on
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5
    assert (
        "the server lost data since the checkpoint: Organization: 0 on the server, 2 loaded before; Practitioner: 0 on the server, "
        "3 loaded before; PractitionerRole: 0 on the server, 3 loaded before; Patient: 80 on the server, 120 loaded before"
    ) in stderr
    assert counts(fhir) == {**EXPECTED, "Organization": 0, "Practitioner": 0, "PractitionerRole": 0, "Patient": 80}
    report = report_of(export_dir)
    assert (report["status"], report["data_lost"]) == ("stopped", True)

    done = atr_load(str(export_dir), "--server", fhir.base_url, *FAST)
    assert done.returncode == 0, done.stderr
    assert counts(fhir) == EXPECTED


def test_verify_prints_the_difference_per_type(fhir, export_dir):
    atr_load(str(export_dir), "--server", fhir.base_url, *FAST)
    fhir.start_again()
    providers = [line for t in ("Organization", "Practitioner", "PractitionerRole") for line in iter_ndjson(export_dir, t)]
    for line in providers:
        resource = orjson.loads(line)
        assert fhir.request("PUT", f"{resource['resourceType']}/{resource['id']}", resource).status_code == 200
    differs = atr_load("--verify", str(export_dir), "--server", fhir.base_url, timeout=60)
    assert differs.returncode == 1
    assert "Patient: 120 missing, e.g." in differs.stderr
    assert "verify: differs in Patient, RelatedPerson, Coverage, Group" in differs.stderr
    atr_load(str(export_dir), "--server", fhir.base_url, *FAST)
    same = atr_load("--verify", str(export_dir), "--server", fhir.base_url, timeout=60)
    assert same.returncode == 0, same.stderr
    assert "verify: the server holds every resource of the export" in same.stderr


def test_dns_failure_is_described_in_words():
    # A real unknown host would send a DNS query off this machine; the tests only talk to 127.0.0.1,
    # so the lookup failure is the exception httpx raises for it (getaddrinfo's gaierror as cause).
    import socket

    import httpx

    from atr_pipeline.publish.preflight import describe_transport_error

    exc = httpx.ConnectError("[Errno -2] Name or service not known")
    exc.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert describe_transport_error(exc) == "DNS lookup failed (unknown host)"
