"""Request files over SFTP, and two runs answering one file at once.

A provider's request file uploaded next to the payer's file on a real SFTP server (the asyncssh
server of tests/sftp_servers.py) is fetched by `atr sftp-pull` with the payer's file, answered by
`--run` after it, and its response is uploaded to ATR_SFTP_OUTBOX/<provider>/ (and written to
ATR_OUTBOX); re-uploading the same bytes gets the same response and records nothing twice.
Two `atr run` processes answering the same file at once record each request once and write the
same response.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from atr_cli import ATR, ROOT, atr
from test_request_files import ADDED, CONTRACT, HEADER, LAYOUT, PCP, PROVIDER, REMOVED

from atr_pipeline.sources.landing import Ledger

pytest_plugins = ["sftp_servers"]

PAYER = "ACME_ATTRIB_202608.csv"
REQUESTS = "ACME_REQ_NORTHSIDE_202608.txt"
RESPONSE = "ACME_REQ_NORTHSIDE_202608.response.txt"
LINES = HEADER + "\n".join([
    f"r1|REMOVE|{CONTRACT}|{REMOVED}||||",
    f"r2|ADD|{CONTRACT}|{ADDED}|{PCP}|2026-08-15||",
    f"r3|ADD|{CONTRACT}|{ADDED}|{PCP}|2026-13-01||",  # not a date
    f"r4|REMOVE|{CONTRACT}|M99999999999||||",  # not on the list
]) + "\n"


def _mappings(tmp_path: Path) -> Path:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    text = (ROOT / "mappings/acme_commercial.yaml").read_text()
    (mappings / "acme_commercial.yaml").write_text(text + LAYOUT.replace("MODE", "auto"))
    return mappings


def _rows(text: str) -> list[tuple[str, ...]]:
    lines = [line.split("|") for line in text.splitlines()]
    assert lines[0] == ["LINE", "PROVIDER_REQUEST_ID", "OUTCOME", "REASON", "REQUEST_ID"]
    return [tuple(r) for r in lines[1:]]


def _requests(home: Path, env: dict[str, str]) -> list[list[str]]:
    res = atr("requests", "list", home=home, env=env)
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()[1:]]


def test_a_request_file_on_sftp_is_fetched_answered_and_its_response_uploaded(sftp_server, tmp_path):
    inbox, outbox = sftp_server.root / "inbox", sftp_server.root / "outbox"
    shutil.copy2(ROOT / "fixtures/acme_commercial" / PAYER, inbox / PAYER)
    (inbox / REQUESTS).write_text(LINES)
    home = tmp_path / "home"
    env = {**sftp_server.sensor_env(tmp_path), "ATR_MAPPINGS_DIR": str(_mappings(tmp_path)),
           "ATR_SFTP_AFTER_LANDING": "archive", "ATR_SFTP_ARCHIVE": "/archive", "ATR_SFTP_OUTBOX": "/outbox",
           "ATR_INBOX": str(tmp_path / "empty_inbox")}

    pulled = atr("sftp-pull", "--settle-seconds", "0", "--run", home=home, env=env)
    out = pulled.stdout + pulled.stderr
    assert pulled.returncode == 0, out
    assert REMOVED not in out and ADDED not in out  # no member ids printed
    assert f"landed {REQUESTS} -> " in out and f"archived {REQUESTS} -> /archive/" in out
    lines = pulled.stdout.splitlines()
    # the payer's file first (the requests are about its lists), then the request file
    assert [i for i, line in enumerate(lines) if line.startswith(("processed ", "answered "))] == [len(lines) - 2, len(lines) - 1]
    assert lines[-1].startswith(f"answered {REQUESTS}: 4 request(s) from {PROVIDER}: 2 accepted, 0 queued, 2 rejected; "
                                f"response {home / 'outbox' / PROVIDER / RESPONSE}, uploaded to /outbox/{PROVIDER}/{RESPONSE}")
    assert sorted(p.name for p in inbox.iterdir()) == []

    uploaded = (outbox / PROVIDER / RESPONSE).read_text()
    assert uploaded == (home / "outbox" / PROVIDER / RESPONSE).read_text()
    rows = _rows(uploaded)
    assert [r[:3] for r in rows] == [("2", "r1", "accepted"), ("3", "r2", "accepted"), ("4", "r3", "rejected"),
                                     ("5", "r4", "rejected")]
    assert rows[2][3] == "line 4, field START_DT: not a date in YYYY-MM-DD" and not rows[2][4]
    assert "no active entry" in rows[3][3] and rows[3][4]
    recorded = _requests(home, env)
    assert len(recorded) == 3 and {(r[7], r[8]) for r in recorded} == {(PROVIDER, "file")}
    entries = {e.original_name: e for e in Ledger.for_landing(home / "landing").entries()}
    assert {n: e.status for n, e in entries.items()} == {PAYER: "processed", REQUESTS: "processed"}
    landed = entries[REQUESTS].path  # landed like the payer's file: its month's folder, owner-only
    assert landed.parent == home / "landing/acme_commercial/2026-08" and stat.S_IMODE(landed.stat().st_mode) == 0o600

    # The provider lost its response and uploads the same file again: fetched (a duplicate in the
    # ledger), answered again from history, the same response uploaded, nothing recorded twice.
    (outbox / PROVIDER / RESPONSE).unlink()
    (inbox / REQUESTS).write_text(LINES)
    again = atr("sftp-pull", "--settle-seconds", "0", "--run", home=home, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"duplicate {REQUESTS} (same bytes as {REQUESTS}); its requests are answered again" in again.stdout
    assert (outbox / PROVIDER / RESPONSE).read_text() == uploaded
    assert len(_requests(home, env)) == 3
    assert [e.status for e in Ledger.for_landing(home / "landing").entries()] == ["processed", "processed"]


def test_two_runs_answering_one_file_at_once_record_each_request_once(tmp_path):
    mappings, inbox, home = _mappings(tmp_path), tmp_path / "inbox", tmp_path / "home"
    inbox.mkdir()
    shutil.copy(ROOT / "fixtures/acme_commercial" / PAYER, inbox)
    env = {"ATR_MAPPINGS_DIR": str(mappings)}
    mapping = str(mappings / "acme_commercial.yaml")
    first = atr("run", "--mapping", mapping, "--inbox", str(inbox), home=home, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    (inbox / REQUESTS).write_text(LINES)

    runs = []
    for i in (1, 2):
        # each run writes its response to its own ATR_OUTBOX, so the two answers can be compared
        run_env = {**os.environ, "ATR_ID_KEY": "test-key", "ATR_HOME": str(home),
                   "ATR_MAPPINGS_DIR": str(mappings), "ATR_OUTBOX": str(tmp_path / f"outbox{i}")}
        runs.append(subprocess.Popen([*ATR, "run", "--mapping", mapping, "--inbox", str(inbox)], cwd=ROOT, env=run_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in runs]  # type: ignore[union-attr]
    for code, out, err in results:
        assert code == 0, out + err
        assert f"{REQUESTS}: 4 request(s) from {PROVIDER}: 2 accepted, 0 queued, 2 rejected" in out, out + err
    one, two = ((tmp_path / f"outbox{i}" / PROVIDER / RESPONSE).read_text() for i in (1, 2))
    assert one == two and [r[2] for r in _rows(one)] == ["accepted", "accepted", "rejected", "rejected"]
    recorded = _requests(home, env)
    assert len(recorded) == 3 and len({r[0] for r in recorded}) == 3


def test_a_decision_on_a_request_from_sftp_uploads_the_rewritten_response(sftp_server, tmp_path):
    inbox, outbox = sftp_server.root / "inbox", sftp_server.root / "outbox"
    shutil.copy2(ROOT / "fixtures/acme_commercial" / PAYER, inbox / PAYER)
    (inbox / REQUESTS).write_text(HEADER + f"q1|REMOVE|{CONTRACT}|{REMOVED}||||\n")
    mappings = _mappings(tmp_path)
    (mappings / "acme_commercial.yaml").write_text(
        (mappings / "acme_commercial.yaml").read_text().replace("adjudication: auto", "adjudication: review"))
    home = tmp_path / "home"
    env = {**sftp_server.sensor_env(tmp_path), "ATR_MAPPINGS_DIR": str(mappings), "ATR_SFTP_OUTBOX": "/outbox",
           "ATR_INBOX": str(tmp_path / "empty_inbox")}
    pulled = atr("sftp-pull", "--settle-seconds", "0", "--run", home=home, env=env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    ((_, rid, outcome, reason, request_id),) = _rows((outbox / PROVIDER / RESPONSE).read_text())
    assert (rid, outcome, reason) == ("q1", "queued", "waiting for the payer's review") and request_id
    accepted = atr("requests", "accept", request_id, home=home, env=env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert _rows((outbox / PROVIDER / RESPONSE).read_text()) == [("2", "q1", "accepted", "", request_id)]
    assert (outbox / PROVIDER / RESPONSE).read_text() == (home / "outbox" / PROVIDER / RESPONSE).read_text()


def test_a_landed_request_file_is_no_payer_delivery(tmp_path, monkeypatch):
    """Lateness and supersession count the payer's deliveries only: a request file landed after the
    payer's file of its month does not supersede it, and one for a month without a payer file
    does not make that month delivered."""
    from atr_pipeline.config import load_settings
    from atr_pipeline.defs.lateness import delivered_months
    from atr_pipeline.layouts.spec import load_mapping
    from atr_pipeline.pipeline import ensure_current_delivery
    from atr_pipeline.requests.files import landing_spec
    from atr_pipeline.sources.landing import land_local

    mappings = _mappings(tmp_path)
    monkeypatch.setenv("ATR_MAPPINGS_DIR", str(mappings))
    settings = load_settings(tmp_path / "home")
    spec = load_mapping(mappings / "acme_commercial.yaml")
    ledger = Ledger.for_landing(settings.landing_dir)
    payer = land_local(ROOT / "fixtures/acme_commercial" / PAYER, spec=spec, landing_dir=settings.landing_dir, ledger=ledger)
    assert payer.file is not None
    for name in (REQUESTS, "ACME_REQ_NORTHSIDE_202609.txt"):
        (tmp_path / name).write_text(LINES + f"x{name[-6:-4]}|CONFIRM|{CONTRACT}|||||\n")
        landed = land_local(tmp_path / name, spec=landing_spec(spec, spec.requests.files[0]),
                            landing_dir=settings.landing_dir, ledger=ledger)
        assert landed.status == "landed"
    assert {(e.original_name, f"{e.month:%Y-%m}") for e in ledger.entries()} == {
        (PAYER, "2026-08"), (REQUESTS, "2026-08"), ("ACME_REQ_NORTHSIDE_202609.txt", "2026-09")}
    ensure_current_delivery(payer.file, settings)  # not "superseded by ACME_REQ_NORTHSIDE_202608.txt"
    assert {f"{m:%Y-%m}" for m in delivered_months(settings, "acme_commercial")} == {"2026-08"}
