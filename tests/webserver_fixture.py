"""Start and stop a real ``dagster-webserver`` from Python, for tests and the screenshot script.

In: a DAGSTER_HOME folder (a dagster.yaml with nux and telemetry off is written into it), extra
environment (ATR_HOME, ATR_INBOX, ATR_ID_KEY...), the workspace file.
Out: a ``Webserver`` on a free 127.0.0.1 port whose code location has loaded, with ``graphql()``
to POST queries and ``stop()`` to end its whole process group.
Refused: a webserver that exits or does not load the code location in time raises
``WebserverError`` with the tail of its log (which holds no PHI: it is Dagster's own startup log).

Why not ``dagster dev``: it ignores SIGINT/SIGTERM when started from a CI shell (FACTS.md), and
it starts a daemon the tests do not need. The webserver spawns a gRPC code server as its child;
both live in a new session, so ending the process group ends both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "workspace.yaml"

DAGSTER_YAML = """\
# Written by tests/webserver_fixture.py. nux off: a fresh instance shows a modal over the UI.
nux:
  enabled: false
telemetry:
  enabled: false
# Launch runs at once (no daemon runs beside this webserver to dequeue them).
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""

LOCATION_STATUS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


class WebserverError(RuntimeError):
    pass


def write_dagster_yaml(dagster_home: Path, extra: str = "") -> Path:
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(DAGSTER_YAML + extra)
    return path


def free_port() -> int:
    # A port the kernel just handed out and released; a rare collision shows up as a start failure.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Webserver:
    url: str
    process: subprocess.Popen
    log_path: Path
    dagster_home: Path
    stopped: bool = field(default=False)

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, *, timeout: float = 60) -> dict[str, Any]:
        """POST /graphql; returns ``data``. GraphQL-level errors raise WebserverError."""
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
        if answer.get("errors"):
            raise WebserverError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM the process group (webserver + code server), then SIGKILL if it lingers."""
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return self.process.wait(timeout=timeout)


def _get(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


def start_webserver(
    dagster_home: Path,
    env: Mapping[str, str] | None = None,
    *,
    workspace: Path = WORKSPACE,
    cwd: Path = ROOT,
    log_path: Path | None = None,
    timeout: float = 120,
) -> Webserver:
    """Start the webserver and return once /server_info answers and the code location is LOADED."""
    if not (dagster_home / "dagster.yaml").exists():
        write_dagster_yaml(dagster_home)
    port = free_port()
    log_path = log_path or dagster_home / "webserver.log"
    full_env = {**os.environ, **dict(env or {}), "DAGSTER_HOME": str(dagster_home)}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    try:
        process = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    server = Webserver(f"http://127.0.0.1:{port}", process, log_path, dagster_home)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Webserver, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise WebserverError(f"dagster-webserver exited with {server.process.returncode}:\n{server.log_tail()}")
        if _get(f"{server.url}/server_info") == 200:
            try:
                entries = server.graphql(LOCATION_STATUS, timeout=10)["workspaceOrError"]["locationEntries"]
            except (WebserverError, OSError, KeyError, TypeError):
                entries = []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    raise WebserverError(f"code location failed to load: {errors[0]['locationOrLoadError']['message']}")
                return
        time.sleep(0.5)
    raise WebserverError(f"dagster-webserver not ready after {timeout:.0f} s:\n{server.log_tail()}")


@contextmanager
def running_webserver(dagster_home: Path, env: Mapping[str, str] | None = None, **kwargs: Any) -> Iterator[Webserver]:
    server = start_webserver(dagster_home, env, **kwargs)
    try:
        yield server
    finally:
        server.stop()
