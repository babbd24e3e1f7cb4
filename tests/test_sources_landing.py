"""Landing and ledger: atomic, once per sha256, supersession, permissions, inbox scanning."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.spec import parse_mapping
from atr_pipeline.sources.landing import Ledger, land_local, land_stream, scan_inbox

pytest_plugins = ["sftp_servers"]

T0 = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
BODY = b"M001,Alice\nM002,Bob\n"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _landed_files(landing: Path) -> list[str]:
    """Every file under landing except the ledger's own files and the in-flight folder."""
    return sorted(str(p.relative_to(landing)) for p in landing.rglob("*")
                  if p.is_file() and not p.name.startswith("ledger.sqlite") and ".incoming" not in p.parts)


def test_land_stream_layout_hash_and_permissions(tmp_path, acme_spec):
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    out = land_stream([BODY[:5], BODY[5:]], original_name="acme_attribution_202601.csv", spec=acme_spec,
                      landing_dir=landing, ledger=ledger, received_at=T0)
    sha = hashlib.sha256(BODY).hexdigest()
    assert out.status == "landed"
    assert out.duplicate_of is None
    f = out.file
    assert f.path == landing / "acme" / "2026-01" / f"{sha[:12]}_acme_attribution_202601.csv"
    assert f.path.read_bytes() == BODY
    assert (f.sha256, f.size, f.month, f.source_id, f.received_at, f.supersedes) == (sha, len(BODY), date(2026, 1, 1), "acme", T0, None)
    assert _mode(f.path) == 0o600
    assert [_mode(landing), _mode(landing / "acme"), _mode(landing / "acme" / "2026-01")] == [0o700, 0o700, 0o700]
    assert _mode(landing / "ledger.sqlite") == 0o600
    [entry] = ledger.entries()
    assert (entry.sha256, entry.original_name, entry.status, entry.size, entry.received_at, entry.path) == (
        sha, "acme_attribution_202601.csv", "landed", len(BODY), T0, f.path)
    assert list((landing / ".incoming").iterdir()) == []


def test_same_bytes_under_new_name_is_a_duplicate(tmp_path, acme_spec):
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    first = land_stream([BODY], original_name="acme_attribution_202601.csv", spec=acme_spec, landing_dir=landing, ledger=ledger)
    again = land_stream([BODY], original_name="acme_attribution_202602.csv", spec=acme_spec, landing_dir=landing, ledger=ledger)
    assert (again.status, again.file, again.duplicate_of) == ("duplicate", None, "acme_attribution_202601.csv")
    assert _landed_files(landing) == [str(first.file.path.relative_to(landing))]
    assert len(ledger.entries()) == 1
    assert ledger.duplicates() == [(first.file.sha256, "acme_attribution_202602.csv", "acme")]


def test_changed_file_under_old_name_supersedes(tmp_path, acme_spec):
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    name = "acme_attribution_202601.csv"
    first = land_stream([BODY], original_name=name, spec=acme_spec, landing_dir=landing, ledger=ledger)
    second = land_stream([BODY + b"M003,Carol\n"], original_name=name, spec=acme_spec, landing_dir=landing, ledger=ledger)
    third = land_stream([BODY + b"M004,Dan\n"], original_name=name, spec=acme_spec, landing_dir=landing, ledger=ledger)
    assert second.status == "landed"
    assert second.file.supersedes == first.file.sha256
    assert third.file.supersedes == second.file.sha256
    assert ledger.latest_by_name("acme", name).sha256 == third.file.sha256
    assert [e.supersedes for e in ledger.entries()] == [None, first.file.sha256, second.file.sha256]
    assert len(_landed_files(landing)) == 3


def test_interrupted_stream_leaves_nothing(tmp_path, acme_spec):
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    seen_midway: list[tuple[list[str], int]] = []

    def chunks():
        yield b"x" * 100_000
        # Midway: nothing in the landed layout yet, one in-flight file in .incoming.
        seen_midway.append((_landed_files(landing), len(list((landing / ".incoming").iterdir()))))
        yield b"y" * 100_000
        raise ConnectionResetError("link dropped")

    with pytest.raises(ConnectionResetError):
        land_stream(chunks(), original_name="acme_attribution_202601.csv", spec=acme_spec, landing_dir=landing, ledger=ledger)
    assert seen_midway == [([], 1)]
    assert _landed_files(landing) == []
    assert list((landing / ".incoming").iterdir()) == []
    assert ledger.entries() == []


@pytest.mark.parametrize("name", ["../acme_attribution_202601.csv", "sub/acme_attribution_202601.csv", "..", "a\x00b"])
def test_refuses_names_that_are_not_base_names(tmp_path, acme_spec, name):
    with pytest.raises(FileRefused) as err:
        land_stream([BODY], original_name=name, spec=acme_spec, landing_dir=tmp_path / "l", ledger=Ledger.for_landing(tmp_path / "l"))
    assert err.value.rule == "file_name"


def test_refuses_name_outside_the_mapping_pattern(tmp_path, acme_spec):
    with pytest.raises(FileRefused) as err:
        land_stream([BODY], original_name="other_202601.csv", spec=acme_spec, landing_dir=tmp_path / "l",
                    ledger=Ledger.for_landing(tmp_path / "l"))
    assert (err.value.rule, err.value.file_name) == ("file_name", "other_202601.csv")


def test_refuses_an_impossible_month_in_the_name(tmp_path, acme_spec):
    with pytest.raises(FileRefused) as err:
        land_stream([BODY], original_name="acme_attribution_202613.csv", spec=acme_spec, landing_dir=tmp_path / "l",
                    ledger=Ledger.for_landing(tmp_path / "l"))
    assert err.value.rule == "month"


def _header_spec():
    return parse_mapping({
        "source_id": "beta",
        "file": {"pattern": r"beta_roster_\d+\.txt", "month_from": "header", "month_header_field": "period"},
        "format": {"kind": "delimited", "delimiter": "|"},
        "records": {"type_field": {"column": 1}, "detail": {"code": "D"},
                    "header": {"code": "H", "fields": {"period": {"column": 3}}}},
        "fields": {"member_id": {"column": 2}, "payer_id": {"constant": "P1"}, "contract_id": {"constant": "C1"}},
        "identifier_systems": {"member_id": "urn:m", "payer_id": "urn:p", "contract_id": "urn:c"},
    })


def test_month_from_header_record(tmp_path):
    landing = tmp_path / "landing"
    out = land_stream([b"H|BETA|2026", b"04|x\nD|M1\n"], original_name="beta_roster_7.txt", spec=_header_spec(),
                      landing_dir=landing, ledger=Ledger.for_landing(landing))
    assert out.file.month == date(2026, 4, 1)
    assert out.file.path.parent == landing / "beta" / "2026-04"


def test_header_month_unreadable_is_refused_and_nothing_lands(tmp_path):
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    with pytest.raises(FileRefused) as err:
        land_stream([b"D|M1\nD|M2\n"], original_name="beta_roster_7.txt", spec=_header_spec(), landing_dir=landing, ledger=ledger)
    assert (err.value.rule, err.value.line_number) == ("month", 1)
    assert _landed_files(landing) == []
    assert ledger.entries() == []


def test_land_local_leaves_inbox_file_and_mark_status(tmp_path, acme_spec):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    src = inbox / "acme_attribution_202605.csv"
    src.write_bytes(BODY * 1000)
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    out = land_local(src, spec=acme_spec, landing_dir=landing, ledger=ledger)
    assert src.read_bytes() == out.file.path.read_bytes()
    assert out.file.size == len(BODY) * 1000
    ledger.mark(out.file.sha256, "refused", "trailer_count")
    assert [(e.status, e.reason) for e in ledger.entries()] == [("refused", "trailer_count")]
    assert ledger.entries(status="landed") == []
    with pytest.raises(KeyError):
        ledger.mark("0" * 64, "processed")


def test_scan_inbox_matches_sorts_and_leaves_the_rest(tmp_path, mapping_factory):
    make_mapping = mapping_factory
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ["acme_attribution_202602.csv", "acme_attribution_202601.csv", "notes.txt",
                 ".acme_attribution_202603.csv", "acme_attribution_202604.csv.part", "beta_202601.csv"]:
        (inbox / name).write_bytes(b"x")
    (inbox / "sub").mkdir()
    acme = make_mapping()
    beta = make_mapping("beta", r"beta_(?P<yyyymm>\d{6})\.csv")
    # A second mapping whose pattern also matches beta files makes them ambiguous.
    greedy = make_mapping("greedy", r"(?P<x>beta)_(?P<yyyymm>\d{6})\.csv")
    matched, unmatched = scan_inbox(inbox, {"acme": acme, "beta": beta})
    assert [(p.name, s.source_id) for p, s in matched] == [
        ("acme_attribution_202601.csv", "acme"), ("acme_attribution_202602.csv", "acme"), ("beta_202601.csv", "beta")]
    assert [p.name for p in unmatched] == ["notes.txt"]
    matched, unmatched = scan_inbox(inbox, {"acme": acme, "beta": beta, "greedy": greedy})
    assert [p.name for p, _ in matched] == ["acme_attribution_202601.csv", "acme_attribution_202602.csv"]
    assert [p.name for p in unmatched] == ["beta_202601.csv", "notes.txt"]
    assert sorted(p.name for p in inbox.iterdir()) == sorted([
        "acme_attribution_202602.csv", "acme_attribution_202601.csv", "notes.txt", ".acme_attribution_202603.csv",
        "acme_attribution_202604.csv.part", "beta_202601.csv", "sub"])
    assert scan_inbox(tmp_path / "missing", {"acme": acme}) == ([], [])


_RACER = r"""
import sys, time
from pathlib import Path
from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.sources.landing import Ledger, land_stream
landing, name, spec_json, go = sys.argv[1:5]
spec = MappingSpec.model_validate_json(spec_json)
ledger = Ledger.for_landing(Path(landing))
Path(go + "." + name).touch()          # ready
while not Path(go).exists():           # start together
    time.sleep(0.005)
out = land_stream([b"M001,Alice\n" * 50000], original_name=name, spec=spec, landing_dir=Path(landing), ledger=ledger)
print(out.status)
"""


def test_two_processes_landing_the_same_bytes_land_once(tmp_path, acme_spec):
    # Separate interpreters (not fork): the ledger must hold across real processes.
    landing = tmp_path / "landing"
    Ledger.for_landing(landing)
    go = tmp_path / "go"
    names = [f"acme_attribution_20260{i}.csv" for i in range(1, 5)]
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(landing), n, acme_spec.model_dump_json(), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
             for n in names]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not all(Path(f"{go}.{n}").exists() for n in names):
        time.sleep(0.01)
    go.touch()
    results = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e for _, e in results]
    assert sorted(out.strip() for out, _ in results) == ["duplicate", "duplicate", "duplicate", "landed"]
    assert len(Ledger.for_landing(landing).entries()) == 1
    assert len(_landed_files(landing)) == 1
    assert os.listdir(landing / ".incoming") == []


_OPEN_LEDGERS = """
import sys, time
from pathlib import Path
from atr_pipeline.sources.landing import Ledger
root, base, attempts = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
for attempt in range(attempts):
    while time.time() < base + 0.3 * attempt:  # every process opens the new ledger at once
        pass
    try:
        Ledger(root / f"home{attempt}" / "ledger.sqlite")
    except Exception as exc:
        print(f"attempt {attempt}: {type(exc).__name__}: {exc}")
"""


def test_processes_creating_the_ledger_at_once_all_open_it(tmp_path):
    """Two `atr run` (or Dagster runs) starting on a fresh ATR_HOME create the ledger together:
    switching a new sqlite file to WAL while another process has it open answered "database is
    locked" at once (seen with benchmarks/bench_two_sources.sh). Separate interpreters, not
    forks: forking a process with running threads can hang its children."""
    attempts = 12
    base = time.time() + 4.0  # time for every interpreter to import atr_pipeline first
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPEN_LEDGERS, str(tmp_path), str(base), str(attempts)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(6)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6
    assert outputs == [""] * 6
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"home{i}" for i in range(attempts))
