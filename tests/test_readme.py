"""Every `bash` block of README.md runs as written, in order, in a fresh copy of the repository.

The copy holds the files git tracks (and new ones it does not ignore), with `.venv` pointing at
the environment running the tests and the FHIR test server's node_modules at the installed ones,
so nothing is installed or downloaded. A block is preceded by an HTML comment when it needs
more than running:
  - ``readme-test: quickstart``: the demo. Its install step (scripts/setup.sh) would re-point the
    shared environment at the copy, so the copy runs the block's last step, ``.venv/bin/atr demo``;
    the install itself is what CI runs through scripts/test.sh.
  - ``readme-test: server URL``: a server that runs until stopped: started, URL polled until it
    answers, then stopped with its whole process group.
Every other block runs with ``bash -euo pipefail`` and must exit 0. ``yaml`` blocks must be
valid mappings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from atr_pipeline.layouts.spec import parse_mapping

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"(?:<!--\s*readme-test:\s*(?P<marker>.*?)\s*-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)
SERVER_START_TIMEOUT = 240.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def blocks() -> list[tuple[str, str, str]]:
    """(language, marker, body) of every fenced block, in README order."""
    return [(m["lang"], m["marker"] or "", m["body"]) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]


def fresh_copy(target: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file() or src.is_symlink() and not src.exists():
            continue  # deleted in the working tree, or a dangling link
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        dest.chmod(src.stat().st_mode & 0o777)
    (target / ".venv").symlink_to(Path(sys.prefix))
    node_modules = ROOT / "tests" / "fhir_server" / "node_modules"
    if node_modules.is_dir():
        (target / "tests" / "fhir_server" / "node_modules").symlink_to(node_modules.resolve())
    return target


def _env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATR_", "DAGSTER_", "VIRTUAL_ENV"))}
    # The environment's install of atr_pipeline points at the original tree: the copy's code first.
    env["PYTHONPATH"] = str(copy)
    return env


def _run(copy: Path, script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout
    )


def _serve_until_ready(copy: Path, script: str, url: str) -> str:
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script], cwd=copy, env=_env(copy), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server block exited {proc.returncode} before {url} answered:\n{proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise AssertionError(f"{url} did not answer within {SERVER_START_TIMEOUT:.0f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # dagster dev shuts its daemon and webserver down on Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_yaml_blocks_are_valid_mappings():
    yaml_blocks = [body for lang, _, body in blocks() if lang == "yaml"]
    assert yaml_blocks
    for body in yaml_blocks:
        assert parse_mapping(yaml.safe_load(body)).source_id


def test_every_bash_block_runs_in_order_after_the_demo(tmp_path):
    copy = fresh_copy(tmp_path / "clone")
    bash_blocks = [(marker, body) for lang, marker, body in blocks() if lang == "bash"]
    assert len(bash_blocks) >= 3
    assert bash_blocks[0][0].startswith("quickstart"), "the first bash block is the quickstart"
    ran = []
    try:
        for index, (marker, body) in enumerate(bash_blocks):
            if marker.startswith("quickstart"):
                res = _run(copy, ".venv/bin/atr demo", timeout=900)
                assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
                assert "Dagster UI on the same data" in res.stdout
                # the copy-paste command on one line, whole, however narrow the output
                assert re.search(r"^DAGSTER_HOME=\S+ ATR_HOME=\S+ ATR_INBOX=\S+ \.venv/bin/dagster dev -w workspace\.yaml$",
                                 res.stdout, re.M), res.stdout
            elif marker.startswith("server "):
                _serve_until_ready(copy, body, marker.split(None, 1)[1])
            else:
                res = _run(copy, body, timeout=600)
                assert res.returncode == 0, f"README bash block {index + 1} failed:\n{body}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
                ran.append(res.stdout + res.stderr)
    finally:
        _run(copy, "bash scripts/fhir_test_server.sh stop", timeout=60)
    worked = next(out for out in ran if "ATR conformance" in out)
    # what the worked block promises: a passing export, a trend per contract, a complete load
    assert "ATR conformance: PASS" in worked
    assert re.search(r"VBC25-\d{4} .*2026-12 .*2026-11", worked), worked
    assert "status: complete" in worked
    assert (copy / ".atr_home" / "exports" / "acme_commercial" / "2026-12" / "load_report.json").is_file()
    assert not (copy / ".atr_home" / "fhir-test-server" / "pid").exists()  # the server was stopped
