"""Shared by the overlap, crash, relocation and upgrade tests: run `atr` as an operator would
(a subprocess of the real entry point) and compare what two homes published.

Exports are compared with only the publication's time and version numbers set aside: Group
``meta.versionId`` / ``meta.lastUpdated``, the manifest's ``transactionTime`` and the sha256 of
the files those change. Versions are returned separately so a test checks they follow month order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Runs start in the checkout under test: `python -m` puts the working folder first on sys.path.
CODE = ROOT
FIXTURES = ROOT / "fixtures"
MAPPINGS = ROOT / "mappings"
SOURCES = {
    "acme_commercial": ("ACME_ATTRIB_{yyyymm}.csv", FIXTURES / "acme_commercial"),
    "statewide_medicaid": ("SWMCD_ME_{yyyymm}.txt", FIXTURES / "statewide_medicaid"),
}


def atr_env(home: Path, extra: dict[str, str] | None = None, pythonpath: str | None = None) -> dict[str, str]:
    env = {**os.environ, "ATR_HOME": str(home), "ATR_ID_KEY": "test-key", "COLUMNS": "200", **(extra or {})}
    env.pop("ATR_INBOX", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


def run_args(source: str, month: str, inbox: Path | None = None, *more: str) -> list[str]:
    folder = inbox or SOURCES[source][1]
    return [sys.executable, "-m", "atr_pipeline.cli", "run", "--mapping", str(MAPPINGS / f"{source}.yaml"),
            "--inbox", str(folder), "--month", month, *more]


def atr(args: list[str], home: Path, *, env: dict[str, str] | None = None, pythonpath: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd or CODE, env=atr_env(home, env, pythonpath), capture_output=True, text=True, timeout=300)


def start(args: list[str], home: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(args, cwd=CODE, env=atr_env(home, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def together(runs: list[list[str]], home: Path, *, gap: float = 0.0) -> list[tuple[int, str]]:
    """Start every run (``gap`` seconds apart, in the given order) and wait for all."""
    procs = []
    for i, args in enumerate(runs):
        if i and gap:
            time.sleep(gap)
        procs.append(start(args, home))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append((p.returncode, stdout + stderr))
    return out


def _strip_group(line: dict) -> tuple[dict, str | None]:
    meta = line.get("meta") or {}
    version = meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    return line, version


def normalized_export(export_dir: Path) -> tuple[dict, dict[str, str]]:
    """(the export with publication time and versions removed, {Group id: versionId})."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    content: dict[str, object] = {
        "output": manifest["output"], "error": manifest["error"], "request": manifest["request"],
        "exportType": manifest["extension"]["exportType"],
        "files": sorted(p.name for p in export_dir.iterdir()),
    }
    versions: dict[str, str] = {}
    for item in manifest["output"] + manifest["error"]:
        lines = []
        for raw in (export_dir / item["url"]).read_text().splitlines():
            resource = json.loads(raw)
            if resource.get("resourceType") == "Group":
                resource, version = _strip_group(resource)
                versions[resource["id"]] = version
            lines.append(json.dumps(resource, sort_keys=True))
        content[item["url"]] = lines
    return content, versions


def published(home: Path, source: str) -> dict[str, tuple[dict, dict[str, str]]]:
    """Every published month of a source: month -> normalized export and Group versions."""
    folder = home / "exports" / source
    if not folder.is_dir():
        return {}
    return {p.name: normalized_export(p) for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def trends(home: Path, source: str, *, pythonpath: str | None = None) -> str:
    """`atr trends --source` output: in this process through the real typer app (no start-up
    cost), or as a subprocess when ``pythonpath`` names another checkout."""
    if pythonpath is not None:
        res = atr([sys.executable, "-m", "atr_pipeline.cli", "trends", "--source", source], home, pythonpath=pythonpath)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout
    from typer.testing import CliRunner

    from atr_pipeline.cli import app

    result = CliRunner().invoke(app, ["trends", "--source", source, "--home", str(home)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def differences(home: Path, reference: Path, source: str, *, months: list[str] | None = None) -> list[str]:
    """What differs between two homes' exports of a source (the reference's ``months`` only, when
    given), and whether versions follow month order; empty when they agree."""
    found, expected = published(home, source), published(reference, source)
    if months is not None:
        expected = {m: v for m, v in expected.items() if m in months}
        found = {m: v for m, v in found.items() if m in months}
    problems = []
    if sorted(found) != sorted(expected):
        problems.append(f"{source}: months {sorted(found)} published, expected {sorted(expected)}")
    for month in sorted(set(found) & set(expected)):
        if found[month][0] != expected[month][0]:
            keys = [k for k in expected[month][0] if found[month][0].get(k) != expected[month][0][k]]
            problems.append(f"{source} {month}: export differs from the run in order ({', '.join(map(str, keys))})")
    months = sorted(found)
    for earlier, later in pairwise(months):
        for group, version in found[later][1].items():
            before = found[earlier][1].get(group)
            if before is not None and int(version) < int(before):
                problems.append(f"{source}: Group {group[:8]} is version {before} in {earlier} but {version} in {later}")
    return problems


def in_order_reference(home: Path, source: str, months: list[str]) -> Path:
    """A home where ``months`` of ``source`` ran one after the other, in month order."""
    for month in months:
        res = atr(run_args(source, month), home)
        assert res.returncode == 0, res.stdout + res.stderr
    return home


def trend_rows(home: Path, source: str, months: list[str] | None = None, *, pythonpath: str | None = None) -> list[list[str]]:
    """The rows of `atr trends --source` as cells (contract, month, previous month, counts...)."""
    rows = []
    for line in trends(home, source, pythonpath=pythonpath).splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) >= 10 and cells[1][:2] == "20" and (months is None or cells[1] in months):
            rows.append(cells)
    return rows
