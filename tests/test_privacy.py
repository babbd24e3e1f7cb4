"""No PHI outside the two places that legitimately hold it (the FHIR resources and the rejects CSV).

The fixtures run through `atr demo` and `atr run` (subprocesses, as a user runs them), then a load
into the real FHIR test server and a refused month run in-process (Python logging captured); every
PHI value of every input file is then looked for in: CLI output, Python logging, every event
record and file of the Dagster instance (metadata, check results and the stored asset values
included), the run-failure sensor's message, the OperationOutcome NDJSON, the load report, the
manifests and resource ids. One demo month is a synthetic 3,000-member file (~0.9 MB): when the
assets handed each other row frames, Dagster pickled megabytes of PHI per run into
DAGSTER_HOME/storage; now every stored value is a small handle, and none holds a PHI value.

Values are read with the project's own reader over the fields ``canonical.PHI_FIELDS`` names, and
matched as whole tokens, case-insensitively (so a ZIP-like run of digits inside a sha256 is not a
hit). Two kinds of value are left out, each for a stated reason: values under 3 characters
(middle initials, suffixes) match ordinary text, and postal codes, whose 5 digits collide with
process ids Dagster records with every event.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
from fhir_server_fixture import FhirTestServer, fhir_server  # noqa: F401

from atr_pipeline.canonical import PHI_FIELDS
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import MappingSpec, load_mapping, to_strftime

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
ATR = str(Path(sys.executable).with_name("atr"))
MIN_LENGTH = 3
LARGE_MEMBERS = 3000
SKIPPED_FIELDS = {"postal_code"}  # see the module docstring
# The value planted in one row: an impossible birth date, rejected by validation, so the rejects
# reach the OperationOutcome NDJSON. The bad value itself is PHI as much as a good one.
BAD_DOB = "02/30/1971"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# ---------------------------------------------------------------- the scanner


@dataclass
class PhiScanner:
    """Finds any of a set of PHI values in text, as whole tokens, ignoring case."""

    fields_by_value: dict[str, str]
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        alternatives = sorted(self.fields_by_value, key=len, reverse=True)
        body = "|".join(re.escape(v) for v in alternatives)
        self._pattern = re.compile(rf"(?<![0-9A-Za-z])(?:{body})(?![0-9A-Za-z])", re.IGNORECASE)
        self._lower = {v.lower(): f for v, f in self.fields_by_value.items()}

    def leaks(self, text: str) -> list[tuple[str, str]]:
        """(field, value) of every PHI value in ``text``, in order of appearance."""
        return [(self._lower[m.group(0).lower()], m.group(0)) for m in self._pattern.finditer(text)]


@dataclass
class TokenScanner:
    """The same whole-token match for many thousands of values: a set lookup per token of the text.

    Only values that are one token (no spaces) are kept: ids, MBIs, names, dates, phones.
    """

    fields_by_value: dict[str, str]

    def __post_init__(self) -> None:
        self._lower = {v.lower(): f for v, f in self.fields_by_value.items() if " " not in v}

    def leaks(self, text: str) -> list[tuple[str, str]]:
        out = []
        for m in TOKEN.finditer(text):
            token = m.group(0).rstrip("-/.")
            if (f := self._lower.get(token.lower())) is not None:
                out.append((f, token))
        return out


TOKEN = re.compile(r"[0-9A-Za-z][0-9A-Za-z\-/.]*")


@dataclass
class Scanners:
    small: PhiScanner  # the fixture files, every value
    large: TokenScanner  # the synthetic 3,000-member month

    def leaks(self, text: str) -> list[tuple[str, str]]:
        return self.small.leaks(text) + self.large.leaks(text)


def scanner_for(values: dict[str, str]) -> PhiScanner:
    kept = {v: f for v, f in values.items() if len(v) >= MIN_LENGTH and f not in SKIPPED_FIELDS}
    return PhiScanner(kept)


def test_scanner_finds_a_planted_value() -> None:
    s = scanner_for({"M06228576401": "member_id", "Testova": "family_name", "1964-02-21": "birth_date", "P": "middle_name"})
    assert s.leaks("rows 42, rejected 0") == []
    assert s.leaks("member M06228576401 refused") == [("member_id", "M06228576401")]
    assert s.leaks('{"label": "who", "text": "TESTOVA"}') == [("family_name", "TESTOVA")]
    assert s.leaks("born 1964-02-21.") == [("birth_date", "1964-02-21")]
    # whole tokens only: inside a hash or a longer id it is not that value
    assert s.leaks("sha256 ab1964-02-21ff, XM06228576401, Testovax") == []
    assert s.leaks("P is short") == []


# ---------------------------------------------------------------- PHI values of the inputs


def phi_values(path: Path, spec: MappingSpec) -> dict[str, str]:
    """Every PHI value of a file: as read (canonical), as written in the file, and dates in ISO too."""
    rows = read_file(path, spec).rows
    out: dict[str, str] = {}
    for name in sorted(PHI_FIELDS & set(rows.columns)):
        fmt = spec.fields[name].date if name in spec.fields else None
        for value in rows.get_column(name).drop_nulls().unique().to_list():
            if isinstance(value, date):
                out[value.isoformat()] = name
                if fmt:
                    out[value.strftime(to_strftime(fmt))] = name
            else:
                out[str(value).strip()] = name
    return out


def fixed_width_phi(path: Path, spec: MappingSpec) -> dict[str, str]:
    """PHI of a fixed-width file the reader refuses whole (control totals): cut by the mapping's positions."""
    out: dict[str, str] = {}
    detail = spec.records.detail.code if spec.records and spec.records.detail else None
    for line in path.read_text(encoding=spec.file.encoding).splitlines():
        if detail and not line.startswith(detail):
            continue
        for name, f in spec.fields.items():
            if name in PHI_FIELDS and f.is_fixed:
                value = line[f.start - 1 : f.start - 1 + f.length].strip()  # type: ignore[operator]
                if value:
                    out[value] = name
    return out


# ---------------------------------------------------------------- one world, every surface


@dataclass
class World:
    scanner: Scanners
    surfaces: dict[str, str]  # what -> text that must hold no PHI
    fhir_text: str  # Patient NDJSON: must hold PHI (proves the values and scanner work)
    rejects_csv_text: str
    check_evaluations: int
    operation_outcomes: int
    stored_values: dict[str, int]  # DAGSTER_HOME/storage/<asset>/... -> bytes
    large_text: str  # the synthetic month's Patient NDJSON (proves its values and scanner work)


def _corrupt_one_birth_date(src: Path, dest: Path) -> None:
    lines = src.read_text().splitlines(keepends=True)
    cells = lines[5].split(",")
    dob = cells[18]
    assert re.fullmatch(r'"\d\d/\d\d/\d{4}"', dob), "fixture layout changed: DOB is column 19"
    cells[18] = f'"{BAD_DOB}"'
    lines[5] = ",".join(cells)
    dest.write_text("".join(lines))


def sqlite_text(path: Path) -> str:
    """Every row of every table of a SQLite file (raw page bytes would split words at page ends)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]
        return "\n".join(repr(row) for t in tables for row in db.execute(f'select * from "{t}"'))


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ATR, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@contextlib.contextmanager
def captured_logging() -> Iterator[io.StringIO]:
    """Everything Python logging emits (root and Dagster's own logger) plus stderr, at DEBUG."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    loggers = [logging.getLogger(), logging.getLogger("dagster"), logging.getLogger("atr_pipeline")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, fhir_server: FhirTestServer) -> World:  # noqa: F811
    base = tmp_path_factory.mktemp("privacy")
    acme = load_mapping(ROOT / "mappings" / "acme_commercial.yaml")
    swmcd = load_mapping(ROOT / "mappings" / "statewide_medicaid.yaml")

    # Inputs: acme 2026-08 with one impossible birth date, acme 2026-09, medicaid 2026-08.
    fixtures = base / "fixtures"
    (fixtures / "acme_commercial").mkdir(parents=True)
    (fixtures / "statewide_medicaid").mkdir()
    acme08 = fixtures / "acme_commercial" / "ACME_ATTRIB_202608.csv"
    _corrupt_one_birth_date(FIXTURES / "acme_commercial" / acme08.name, acme08)
    shutil.copy2(FIXTURES / "acme_commercial" / "ACME_ATTRIB_202609.csv", fixtures / "acme_commercial")
    shutil.copy2(FIXTURES / "statewide_medicaid" / "SWMCD_ME_202608.txt", fixtures / "statewide_medicaid")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATR_", "DAGSTER_"))}
    env["ATR_ID_KEY"] = "privacy-test-key"
    made = _cli(["fixtures", "--mapping", "mappings/acme_commercial.yaml", "--members", str(LARGE_MEMBERS),
                 "--month", "2026-10", "--out", str(fixtures / "acme_commercial"), "--seed", "16"], env)
    assert made.returncode == 0, made.stderr[-2000:]
    large = fixtures / "acme_commercial" / "ACME_ATTRIB_202610.csv"
    run_inbox = base / "run_inbox"
    run_inbox.mkdir()
    for name in ("SWMCD_ME_202608.txt", "SWMCD_ME_202609.txt"):
        shutil.copy2(FIXTURES / "statewide_medicaid" / name, run_inbox)
    bad_trailer = FIXTURES / "bad" / "trailer_count" / "SWMCD_ME_202608.txt"
    ragged = FIXTURES / "bad" / "ragged" / "ACME_ATTRIB_202608.csv"

    values: dict[str, str] = {}
    for path, spec in [(acme08, acme), (FIXTURES / "acme_commercial" / "ACME_ATTRIB_202608.csv", acme),
                       (FIXTURES / "acme_commercial" / "ACME_ATTRIB_202609.csv", acme),
                       (run_inbox / "SWMCD_ME_202608.txt", swmcd), (run_inbox / "SWMCD_ME_202609.txt", swmcd),
                       (ragged, acme)]:
        values.update(phi_values(path, spec))
    values.update(fixed_width_phi(bad_trailer, swmcd))
    values[BAD_DOB] = "birth_date"
    small = scanner_for(values)
    assert len(small.fields_by_value) > 300  # names, ids, MBIs, dates, streets, phones of ~50 members
    large_values = {v: f for v, f in phi_values(large, acme).items() if len(v) >= MIN_LENGTH and f not in SKIPPED_FIELDS}
    scanner = Scanners(small, TokenScanner(large_values))
    assert len(scanner.large._lower) > 3 * LARGE_MEMBERS  # member and subscriber ids, MBIs, phones, birth dates, names

    surfaces: dict[str, str] = {}

    # 1. The CLI, as a user runs it.
    home = base / "demo"
    demo = _cli(["demo", "--home", str(home), "--fixtures", str(fixtures), "--mappings", str(ROOT / "mappings")], env)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    surfaces["atr demo stdout+stderr"] = demo.stdout + demo.stderr
    run = _cli(["run", "--mapping", "mappings/statewide_medicaid.yaml", "--inbox", str(run_inbox), "--home", str(base / "run")], env)
    assert run.returncode == 0, run.stderr[-3000:]
    surfaces["atr run stdout+stderr"] = run.stdout + run.stderr
    refused = _cli(["run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", str(ragged.parent), "--home", str(base / "ragged")], env)
    assert refused.returncode == 1 and "refused" in refused.stdout
    surfaces["atr run (refused file) stdout+stderr"] = refused.stdout + refused.stderr

    # 2. In-process on the demo's instance: a load into the FHIR server and a refused month.
    from atr_pipeline.definitions import defs
    from atr_pipeline.defs.automation import attribution_failure_sensor

    fhir_server.reset()
    bad_inbox = base / "bad_inbox"
    bad_inbox.mkdir()
    shutil.copy2(bad_trailer, bad_inbox)
    debug = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"DAGSTER_HOME": str(home / "dagster"), "ATR_HOME": str(home), "ATR_INBOX": str(home / "inbox"),
                     "ATR_MAPPINGS_DIR": str(ROOT / "mappings"), "ATR_ID_KEY": env["ATR_ID_KEY"],
                     "ATR_FHIR_URL": fhir_server.base_url}.items():
            mp.setenv(k, v)
        instance = dg.DagsterInstance.get()
        try:
            with captured_logging() as log:
                loaded = defs.resolve_job_def("load_job").execute_in_process(
                    partition_key=dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"}),
                    instance=instance, run_config=debug)
                assert loaded.success
                mp.setenv("ATR_HOME", str(base / "bad_home"))
                mp.setenv("ATR_INBOX", str(bad_inbox))
                failed = defs.resolve_job_def("attribution_job").execute_in_process(
                    partition_key=dg.MultiPartitionKey({"month": "2026-08-01", "source": "statewide_medicaid"}),
                    instance=instance, run_config=debug, raise_on_error=False)
                assert not failed.success
            surfaces["Python logging and Dagster console (in-process runs, DEBUG)"] = log.getvalue()
            failure = next(e for e in failed.all_events if e.event_type_value == "PIPELINE_FAILURE")
            ctx = dg.build_run_status_sensor_context(
                sensor_name="attribution_failure_sensor", dagster_event=failure, dagster_instance=instance,
                dagster_run=instance.get_run_by_id(failed.run_id)).for_run_failure()
            with captured_logging() as sensor_log:
                attribution_failure_sensor(ctx)
            assert "failed at canonical_rows (refused: trailer_count; check control_totals_match failed: trailer_count)" in sensor_log.getvalue()
            surfaces["run failure sensor output"] = sensor_log.getvalue()

            # 3. The Dagster instance: every run and event record, serialized.
            events: list[str] = []
            checks = 0
            for r in instance.get_runs():
                events.append(dg.serialize_value(r))
                for record in instance.all_logs(r.run_id):
                    events.append(dg.serialize_value(record))
                    if record.dagster_event and record.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION":
                        checks += 1
                        surfaces.setdefault("asset check metadata", "")
                        surfaces["asset check metadata"] += dg.serialize_value(record.dagster_event.event_specific_data.metadata) + "\n"  # type: ignore[union-attr]
            assert len(instance.get_runs()) == 6  # 4 demo partitions, the load, the refused month
            surfaces["Dagster event log (all runs, all records)"] = "\n".join(events)
        finally:
            instance.dispose()

    # Every file of the instance, the IO manager's stored asset values included.
    asset_dirs = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    dagster_home = home / "dagster"
    stored: dict[str, int] = {}
    for path in sorted(dagster_home.rglob("*")):
        rel = path.relative_to(dagster_home)
        if path.is_file():
            surfaces[f"DAGSTER_HOME/{rel}"] = sqlite_text(path) if path.suffix == ".db" else path.read_bytes().decode("latin-1")
            if rel.parts[0] == "storage" and rel.parts[1] in asset_dirs:
                stored[str(rel)] = path.stat().st_size

    # 4. The exports: manifests, OperationOutcomes, the load report, resource ids.
    ids: list[str] = []
    outcomes = 0
    fhir_text = ""
    exports = sorted(p.parent for p in (home / "exports").rglob("manifest.json"))
    for export in exports + sorted(p.parent for p in (base / "run" / "exports").rglob("manifest.json")):
        tag = export.relative_to(base)
        surfaces[f"{tag}/manifest.json"] = (export / "manifest.json").read_text()
        for ndjson in sorted(export.glob("*.ndjson")):
            if ndjson.name == "OperationOutcome.ndjson":
                surfaces[f"{tag}/OperationOutcome.ndjson"] = ndjson.read_text()
                outcomes += len(ndjson.read_text().splitlines())
                continue
            for line in ndjson.read_text().splitlines():
                ids.append(json.loads(line)["id"])
            if ndjson.name == "Patient.ndjson":
                fhir_text += ndjson.read_text()
        if (export / "load_report.json").exists():
            surfaces[f"{tag}/load_report.json"] = (export / "load_report.json").read_text()
    assert "demo/exports/acme_commercial/2026-08/load_report.json" in surfaces
    assert all(UUID.match(i) for i in ids), "resource ids must be keyed-hash UUIDs"
    surfaces["resource ids"] = "\n".join(ids)
    rejects_csv = next((home / "rejects" / "acme_commercial" / "2026-08").glob("*.rejects.csv"))
    large_text = (home / "exports" / "acme_commercial" / "2026-10" / "Patient.ndjson").read_text()
    return World(scanner, surfaces, fhir_text, rejects_csv.read_text(), checks, outcomes, stored, large_text)


def test_the_phi_values_are_really_in_the_data(world: World) -> None:
    """Negative control: the FHIR output and the rejects CSV do hold PHI, so a clean surface means something."""
    found = {f for f, _ in world.scanner.leaks(world.fhir_text)}
    assert {"member_id", "family_name", "given_name", "birth_date", "address_line1", "phone", "city"} <= found
    assert ("birth_date", BAD_DOB) in world.scanner.leaks(world.rejects_csv_text)
    assert world.check_evaluations >= 16  # 4 checks x 4 partitions + load_complete + the failed control check
    assert world.operation_outcomes == 1  # the planted birth date
    large = {f for f, _ in world.scanner.large.leaks(world.large_text)}
    assert {"member_id", "family_name", "birth_date", "mbi", "phone"} <= large
    assert len(world.scanner.large.leaks(world.large_text)) > LARGE_MEMBERS


def test_dagster_stores_handles_not_rows(world: World) -> None:
    """Every asset value Dagster stored is a small handle, also for the 3,000-member month."""
    stored = world.stored_values
    assert any("canonical_rows/2026-10-01/acme_commercial" in k for k in stored)
    assert any("validated_rows/2026-10-01/acme_commercial" in k for k in stored)
    assert max(stored.values()) < 8_000, {k: v for k, v in stored.items() if v >= 8_000}
    leaks = {k: world.scanner.leaks(world.surfaces[f"DAGSTER_HOME/{k}"]) for k in stored}
    assert {k: v for k, v in leaks.items() if v} == {}


@pytest.mark.parametrize(
    "surface",
    [
        "atr demo stdout+stderr",
        "atr run stdout+stderr",
        "atr run (refused file) stdout+stderr",
        "Python logging and Dagster console (in-process runs, DEBUG)",
        "run failure sensor output",
        "asset check metadata",
        "Dagster event log (all runs, all records)",
        "resource ids",
    ],
)
def test_no_phi_in(world: World, surface: str) -> None:
    text = world.surfaces[surface]
    assert len(text) > 0
    assert world.scanner.leaks(text) == []


def test_no_phi_in_exports_and_instance_files(world: World) -> None:
    files = {k: v for k, v in world.surfaces.items() if k.endswith((".json", ".ndjson")) or k.startswith("DAGSTER_HOME/")}
    assert any(k.endswith("OperationOutcome.ndjson") for k in files)
    assert any(k.endswith("load_report.json") for k in files)
    assert any(k.endswith(".db") for k in files)  # the SQLite run and event storage, read raw
    assert any("compute_logs" in k for k in files)
    leaks = {k: world.scanner.leaks(v) for k, v in files.items()}
    assert {k: v for k, v in leaks.items() if v} == {}
