"""The sftp_check / sftp_pull CLI functions against a real asyncssh SFTP server."""

from __future__ import annotations

import hashlib
import os

import typer
from typer.testing import CliRunner

from atr_pipeline.sources.commands import sftp_check, sftp_pull
from atr_pipeline.sources.landing import Ledger

pytest_plugins = ["sftp_servers"]

MAPPING = """\
source_id: acme
file:
  pattern: 'acme_attribution_(?P<yyyymm>\\d{6})\\.csv'
format: {kind: delimited, delimiter: ','}
fields:
  member_id: {column: 1}
  payer_id: {constant: P1}
  contract_id: {constant: C1}
identifier_systems: {member_id: 'urn:example:member', payer_id: 'urn:example:payer', contract_id: 'urn:example:contract'}
"""


def _app(fn):
    app = typer.Typer()
    app.command()(fn)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    return app


def _env(server, tmp_path, monkeypatch):
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "acme.yaml").write_text(MAPPING)
    for k, v in {"ATR_SFTP_HOST": "127.0.0.1", "ATR_SFTP_PORT": str(server.port), "ATR_SFTP_USER": "payer",
                 "ATR_SFTP_PASSWORD": server.password, "ATR_SFTP_KNOWN_HOSTS": str(server.known_hosts(tmp_path / "kh")),
                 "ATR_SFTP_INBOX": "/inbox", "ATR_SFTP_AFTER_LANDING": "archive", "ATR_SFTP_ARCHIVE": "/archive",
                 "ATR_MAPPINGS_DIR": str(tmp_path / "mappings"), "ATR_HOME": str(tmp_path / "home"),
                 "ATR_SFTP_STABLE_POLLS": "2", "ATR_SFTP_QUIET_SECONDS": "0",
                 "ATR_ID_KEY": "test-key"}.items():
        monkeypatch.setenv(k, v)


def test_sftp_pull_lands_matched_files_and_archives(sftp_server, tmp_path, monkeypatch):
    _env(sftp_server, tmp_path, monkeypatch)
    for name, body in [("acme_attribution_202601.csv", b"a\n"), ("acme_attribution_202602.csv", b"a\n"), ("readme.txt", b"r")]:
        (sftp_server.root / "inbox" / name).write_bytes(body)
    result = CliRunner().invoke(_app(sftp_pull), ["sftp-pull", "--settle-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == ("1 landed, 1 duplicate(s), 0 already landed, 0 still settling, 1 unmatched, "
                                              "0 problem(s)")
    assert [e.original_name for e in Ledger.for_landing(tmp_path / "home" / "landing").entries()] == ["acme_attribution_202601.csv"]
    assert sorted(os.listdir(sftp_server.root / "inbox")) == ["readme.txt"]
    sha12 = hashlib.sha256(b"a\n").hexdigest()[:12]
    # the duplicate is archived too: its bytes are safe in landing
    # (sorted by the original name: archive names differ by time and random hex, not in name order)
    archived = os.listdir(sftp_server.root / "archive")
    assert sorted((n[:12], n[37:]) for n in archived) == [(sha12, "acme_attribution_202601.csv"), (sha12, "acme_attribution_202602.csv")]


def test_sftp_check_reports_and_fails_cleanly(sftp_server, tmp_path, monkeypatch):
    _env(sftp_server, tmp_path, monkeypatch)
    (sftp_server.root / "inbox" / "acme_attribution_202601.csv").write_bytes(b"a\n")
    ok = CliRunner().invoke(_app(sftp_check), ["sftp-check"])
    assert ok.exit_code == 0
    assert ok.output.strip() == (f"ok: payer@127.0.0.1:{sftp_server.port}, host key matches {tmp_path / 'kh'}, "
                                 "cipher aes128-ctr, mac hmac-sha2-256, inbox, archive exist, 1 file(s) in '/inbox'")
    monkeypatch.setenv("ATR_SFTP_PASSWORD", "not-the-password-123")
    bad = CliRunner().invoke(_app(sftp_check), ["sftp-check"])
    assert bad.exit_code == 1
    assert "authentication failed" in bad.output and "not-the-password-123" not in bad.output
