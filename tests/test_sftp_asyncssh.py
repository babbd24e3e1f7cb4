"""SftpSource against a real in-process asyncssh SFTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest
from sftp_servers import landed_files

from atr_pipeline.sources.landing import Ledger
from atr_pipeline.sources.polling import (
    RemoteFile,
    SensorCursor,
    plan_runs,
    run_key_for,
)
from atr_pipeline.sources.sftp import (
    AuthenticationFailed,
    HostKeyChanged,
    HostKeyUnknown,
    KeyLoadError,
    RemoteFileChanged,
    RemoteFileMissing,
    SftpConfig,
    SftpConnectionError,
    SftpSource,
    config_from_env,
    load_private_key,
)

pytest_plugins = ["sftp_servers"]

NAME = "acme_attribution_202601.csv"
MTIME = 1767225600


def _cfg(server, tmp_path: Path, **kw) -> SftpConfig:
    values = dict(host="127.0.0.1", port=server.port, username=server.username, password=server.password,
                  known_hosts=server.known_hosts(tmp_path / "known_hosts"), inbox="/inbox",
                  retries=4, backoff_initial=0.05, backoff_max=0.5, connect_timeout=5)
    values.update(kw)
    return SftpConfig(**{k: v for k, v in values.items() if v is not None})


def _put(server, name: str, data: bytes, mtime: int = MTIME) -> Path:
    p = server.root / "inbox" / name
    p.write_bytes(data)
    os.utime(p, (mtime, mtime))
    return p


def test_list_inbox_regular_files_sorted(sftp_server, tmp_path):
    _put(sftp_server, "b_202601.csv", b"12345", MTIME + 60)
    _put(sftp_server, NAME, b"abc")
    _put(sftp_server, ".hidden", b"x")
    _put(sftp_server, "upload.csv.part", b"x")
    (sftp_server.root / "inbox" / "folder").mkdir()
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        listing = src.list_inbox()
    assert listing == [RemoteFile(NAME, 3, MTIME), RemoteFile("b_202601.csv", 5, MTIME + 60)]


def test_one_connection_fetches_several_files(sftp_server, tmp_path, acme_spec):
    bodies = {f"acme_attribution_20260{m}.csv": f"M{m},x\n".encode() * 1000 for m in (1, 2, 3)}
    for name, body in bodies.items():
        _put(sftp_server, name, body)
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        outcomes = [src.fetch(n, spec=acme_spec, landing_dir=landing, ledger=ledger) for n in sorted(bodies)]
        assert src.connects == 1
    assert [o.file.sha256 for o in outcomes] == [hashlib.sha256(bodies[n]).hexdigest() for n in sorted(bodies)]
    assert [o.file.path.read_bytes() for o in outcomes] == [bodies[n] for n in sorted(bodies)]
    # leave is the default: the remote files stay
    assert sorted(p.name for p in (sftp_server.root / "inbox").iterdir()) == sorted(bodies)


def test_growing_file_requested_only_when_stable(sftp_server, tmp_path, acme_spec):
    path = _put(sftp_server, NAME, b"x" * 1000)
    mappings = {"acme": acme_spec}
    cur = SensorCursor()
    requested = []
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        for tick, grow in enumerate([b"y" * 1000, b"z" * 500, b"", b""]):
            if grow:
                with open(path, "ab") as fh:
                    fh.write(grow)
                os.utime(path, (MTIME + tick, MTIME + tick))
            runs, cur = plan_runs(src.list_inbox(), cur, mappings, now=datetime(2026, 1, 1, 0, tick, tzinfo=UTC),
                                      stable_polls=2, quiet_seconds=0)
            requested.append([r.run_key for r in runs])
    assert requested == [[], [], [run_key_for(RemoteFile(NAME, 2500, MTIME + 1))], []]


def test_duplicate_under_new_name_and_supersede_under_old_name(sftp_server, tmp_path, acme_spec):
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    _put(sftp_server, NAME, b"v1\n")
    _put(sftp_server, "acme_attribution_202602.csv", b"v1\n")
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        first = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=ledger)
        dup = src.fetch("acme_attribution_202602.csv", spec=acme_spec, landing_dir=landing, ledger=ledger)
        _put(sftp_server, NAME, b"v2\n")
        second = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=ledger)
    assert (dup.status, dup.duplicate_of) == ("duplicate", NAME)
    assert second.file.supersedes == first.file.sha256 == hashlib.sha256(b"v1\n").hexdigest()
    assert [p.read_bytes() for p in landed_files(landing)] == sorted([b"v1\n", b"v2\n"], key=lambda b: hashlib.sha256(b).hexdigest())


def test_changed_host_key_is_refused_without_key_material(sftp_server, tmp_path):
    cfg = _cfg(sftp_server, tmp_path)
    old = sftp_server.public_host_key.split()[1]
    sftp_server.set_host_key(asyncssh.generate_private_key("ssh-ed25519"))
    new = sftp_server.public_host_key.split()[1]
    with pytest.raises(HostKeyChanged) as err:
        SftpSource(cfg).__enter__()
    msg = str(err.value)
    assert f"[127.0.0.1]:{sftp_server.port}" in msg
    assert old not in msg and new not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_key_of_another_type_counts_as_changed(sftp_server, tmp_path):
    cfg = _cfg(sftp_server, tmp_path)
    sftp_server.set_host_key(asyncssh.generate_private_key("ecdsa-sha2-nistp256"))
    with pytest.raises(HostKeyChanged) as err:
        SftpSource(cfg).__enter__()
    assert "ecdsa-sha2-nistp256" in str(err.value) and "ssh-ed25519" in str(err.value)


def test_unknown_host_is_refused(sftp_server, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyUnknown) as err:
        SftpSource(_cfg(sftp_server, tmp_path, known_hosts=empty)).__enter__()
    assert f"host [127.0.0.1]:{sftp_server.port} is not in known_hosts" in str(err.value)
    with pytest.raises(HostKeyUnknown) as err:
        SftpSource(_cfg(sftp_server, tmp_path, known_hosts=tmp_path / "nope")).__enter__()
    assert "does not exist" in str(err.value)


def test_wrong_password_fails_fast_and_never_shows_the_password(sftp_server, tmp_path, caplog):
    secret = "Sup3r-Secret-Pw-9731"
    cfg = _cfg(sftp_server, tmp_path, password=secret)
    caplog.set_level(logging.DEBUG)
    src = SftpSource(cfg)
    with pytest.raises(AuthenticationFailed) as err:
        src.__enter__()
    text = "\n".join([str(err.value), repr(err.value), repr(cfg), str(cfg), repr(src), cfg.model_dump_json(),
                      caplog.text])
    assert secret not in text
    assert str(err.value) == (f"authentication failed for payer@127.0.0.1:{sftp_server.port} (password); "
                              "check ATR_SFTP_USER and its credentials. Not retried: the payer may lock the account "
                              "after repeated failures")
    assert src.connects == 0
    assert "will retry" not in caplog.text


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_private_keys_of_each_type_authenticate(sftp_server, tmp_path, client_keys, kind):
    key = client_keys[kind]
    sftp_server.authorized_keys.add(key.public_openssh.split()[1])
    _put(sftp_server, NAME, b"abc")
    key_file = tmp_path / f"id_{kind}"
    key_file.write_text(key.private_openssh)
    for cfg in (_cfg(sftp_server, tmp_path, password=None, private_key=key.private_openssh),
                _cfg(sftp_server, tmp_path, password=None, private_key_path=key_file)):
        with SftpSource(cfg) as src:
            assert src.list_inbox() == [RemoteFile(NAME, 3, MTIME)]


@pytest.mark.filterwarnings("ignore:Warning. bcrypt.kdf:UserWarning")  # few KDF rounds keep the test fast
def test_unauthorised_key_fails_and_passphrase_keys_load(sftp_server, tmp_path, client_keys):
    with pytest.raises(AuthenticationFailed) as err:
        SftpSource(_cfg(sftp_server, tmp_path, password=None, private_key=client_keys["ed25519"].private_openssh)).__enter__()
    assert "(private key)" in str(err.value)
    key = asyncssh.generate_private_key("ssh-ed25519")
    encrypted = key.export_private_key("openssh", passphrase="open sesame", rounds=4).decode()
    assert load_private_key(encrypted, passphrase="open sesame").get_name() == "ssh-ed25519"
    with pytest.raises(KeyLoadError) as err:
        load_private_key(encrypted)
    assert "passphrase" in str(err.value) and encrypted[40:80] not in str(err.value)
    with pytest.raises(KeyLoadError):
        load_private_key(encrypted, passphrase="wrong")


def test_dropped_connection_mid_download_is_retried(sftp_server, tmp_path, acme_spec):
    body = os.urandom(24 << 20)
    _put(sftp_server, NAME, body)
    sftp_server.drop_after_bytes = 8 << 20
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        out = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=ledger)
        assert src.connects == 2
    assert sftp_server.drops == 1
    assert out.file.sha256 == hashlib.sha256(body).hexdigest()
    assert landed_files(landing) == [out.file.path]
    assert list((landing / ".incoming").iterdir()) == []


def test_server_killed_mid_download_and_back_is_retried(sftp_server, tmp_path, acme_spec):
    body = os.urandom(16 << 20)
    _put(sftp_server, NAME, body)
    sftp_server.drop_after_bytes = 4 << 20
    sftp_server.on_drop, sftp_server.restart_after = "kill", 0.3
    landing = tmp_path / "landing"
    with SftpSource(_cfg(sftp_server, tmp_path, retries=8)) as src:
        out = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=Ledger.for_landing(landing))
    assert out.file.sha256 == hashlib.sha256(body).hexdigest()
    assert landed_files(landing) == [out.file.path]


def test_server_killed_for_good_fails_cleanly_and_keeps_remote_file(sftp_server, tmp_path, acme_spec):
    body = os.urandom(16 << 20)
    _put(sftp_server, NAME, body)
    sftp_server.drop_after_bytes = 4 << 20
    sftp_server.on_drop = "kill"
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    cfg = _cfg(sftp_server, tmp_path, retries=3, after_landing="archive", archive="/archive")
    with SftpSource(cfg) as src:
        with pytest.raises(SftpConnectionError) as err:
            src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=ledger)
    assert str(err.value).startswith(f"download of {NAME} on payer@127.0.0.1:{sftp_server.port} failed after 3 attempt(s)")
    assert landed_files(landing) == []
    assert ledger.entries() == []
    assert (sftp_server.root / "inbox" / NAME).read_bytes() == body
    assert list((sftp_server.root / "archive").iterdir()) == []


def test_file_vanishing_between_listing_and_download(sftp_server, tmp_path, acme_spec):
    path = _put(sftp_server, NAME, b"abc")
    landing = tmp_path / "landing"
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        assert [f.name for f in src.list_inbox()] == [NAME]
        path.unlink()
        with pytest.raises(RemoteFileMissing) as err:
            src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=Ledger.for_landing(landing))
        assert src.connects == 1  # not treated as a connection problem
    assert str(err.value) == (f"{NAME} is no longer in '/inbox' on payer@127.0.0.1:{sftp_server.port} "
                              "(moved or deleted after listing); nothing landed")
    assert landed_files(landing) == []


def test_archive_moves_only_after_landing(sftp_server, tmp_path, acme_spec):
    _put(sftp_server, NAME, b"abc\n")
    landing = tmp_path / "landing"
    cfg = _cfg(sftp_server, tmp_path, after_landing="archive", archive="/archive")
    with SftpSource(cfg) as src:
        out = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=Ledger.for_landing(landing))
    assert list((sftp_server.root / "inbox").iterdir()) == []
    [archived] = (sftp_server.root / "archive").iterdir()
    # <sha12>_<UTC time>_<6 random hex>_<name>: no other pull can produce the same name
    assert re.fullmatch(rf"{out.file.sha256[:12]}_\d{{8}}T\d{{6}}Z_[0-9a-f]{{6}}_{NAME}", archived.name)
    assert archived.read_bytes() == b"abc\n"
    assert out.file.path.read_bytes() == b"abc\n"


def test_delete_after_landing(sftp_server, tmp_path, acme_spec):
    _put(sftp_server, NAME, b"abc\n")
    landing = tmp_path / "landing"
    with SftpSource(_cfg(sftp_server, tmp_path, after_landing="delete")) as src:
        out = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=Ledger.for_landing(landing))
    assert list((sftp_server.root / "inbox").iterdir()) == []
    assert out.file.path.read_bytes() == b"abc\n"


def test_upload_rejects_to_outbox(sftp_server, tmp_path):
    rejects = tmp_path / "acme_attribution_202601.rejects.csv"
    rejects.write_bytes(b"line_number,rule\n3,npi_check_digit\n" * 5000)
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        remote = src.upload_rejects(rejects, "/outbox")
        # a second upload of the same name replaces the first
        rejects.write_bytes(b"line_number,rule\n")
        src.upload_rejects(rejects, "/outbox")
    assert remote == "/outbox/acme_attribution_202601.rejects.csv"
    assert [p.name for p in (sftp_server.root / "outbox").iterdir()] == [rejects.name]
    assert (sftp_server.root / "outbox" / rejects.name).read_bytes() == b"line_number,rule\n"


def test_config_from_env(tmp_path, client_keys):
    kh = tmp_path / "kh"
    env = {"ATR_SFTP_HOST": "sftp.payer.example", "ATR_SFTP_PORT": "2222", "ATR_SFTP_USER": "atr",
           "ATR_SFTP_KEY": client_keys["rsa"].private_openssh, "ATR_SFTP_KNOWN_HOSTS": str(kh),
           "ATR_SFTP_INBOX": "/in", "ATR_SFTP_ARCHIVE": "/done", "ATR_SFTP_AFTER_LANDING": "archive",
           "ATR_SFTP_TIMEOUT": "7", "ATR_SFTP_RETRIES": "2"}
    cfg = config_from_env(env)
    assert (cfg.host, cfg.port, cfg.username, cfg.known_hosts, cfg.inbox, cfg.archive, cfg.after_landing) == (
        "sftp.payer.example", 2222, "atr", kh, "/in", "/done", "archive")
    assert (cfg.connect_timeout, cfg.banner_timeout, cfg.auth_timeout, cfg.retries) == (7.0, 7.0, 7.0, 2)
    assert cfg.private_key.get_secret_value() == client_keys["rsa"].private_openssh
    assert client_keys["rsa"].private_openssh[50:90] not in repr(cfg)
    path_cfg = config_from_env({**{k: v for k, v in env.items() if k != "ATR_SFTP_KEY"}, "ATR_SFTP_KEY_FILE": "/keys/id_ed25519"})
    assert (path_cfg.private_key, path_cfg.private_key_path) == (None, Path("/keys/id_ed25519"))


def test_fetch_for_run_is_idempotent_and_refuses_renamed_duplicates(sftp_server, tmp_path, acme_spec):
    from atr_pipeline.config import Settings
    from atr_pipeline.errors import FileRefused
    from atr_pipeline.sources.sftp import fetch_for_run

    settings = Settings(home=tmp_path / "home", mappings_dir=tmp_path / "m", inbox_dir=tmp_path / "i", id_key=b"k")
    _put(sftp_server, NAME, b"abc\n")
    _put(sftp_server, "acme_attribution_202602.csv", b"abc\n")
    cfg = _cfg(sftp_server, tmp_path)
    first = fetch_for_run(NAME, spec=acme_spec, settings=settings, config=cfg)
    again = fetch_for_run(NAME, spec=acme_spec, settings=settings, config=cfg)  # a retried run
    assert again == first
    assert first.path == settings.landing_dir / "acme" / "2026-01" / f"{first.sha256[:12]}_{NAME}"
    with pytest.raises(FileRefused) as err:
        fetch_for_run("acme_attribution_202602.csv", spec=acme_spec, settings=settings, config=cfg)
    assert (err.value.rule, err.value.reason) == ("duplicate_delivery", f"same bytes as {NAME}, which was already delivered")


# -- faults of issue 15 that need a server misbehaving in ways sshd cannot be told to ------------


def test_server_that_never_starts_sftp_times_out(sftp_server, tmp_path, monkeypatch):
    """It logs in, accepts the sftp subsystem request, then says nothing: bounded, clear, not a hang."""
    from typer.testing import CliRunner

    from atr_pipeline.cli import app

    sftp_server.never_start_sftp()
    for k, v in {"ATR_SFTP_HOST": "127.0.0.1", "ATR_SFTP_PORT": str(sftp_server.port), "ATR_SFTP_USER": "payer",
                 "ATR_SFTP_PASSWORD": sftp_server.password, "ATR_SFTP_KNOWN_HOSTS": str(sftp_server.known_hosts(tmp_path / "kh")),
                 "ATR_SFTP_TIMEOUT": "1", "ATR_SFTP_RETRIES": "2"}.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(app, ["sftp-check"])
    where = f"payer@127.0.0.1:{sftp_server.port}"
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: connect on {where} failed after 2 attempt(s): the SFTP subsystem on {where} "
                                     "did not start within 1 s (the server accepted the login but never answered as SFTP)")
    # The whole-connection budget also holds when a phase's own timeout is larger.
    cfg = _cfg(sftp_server, tmp_path, sftp_timeout=30, total_timeout=1, retries=1)
    with pytest.raises(SftpConnectionError) as err:
        SftpSource(cfg).__enter__()
    assert str(err.value).endswith("SFTP subsystem start on " + where + " ran past the total budget of 1 s (ATR_SFTP_TOTAL_TIMEOUT)")


def test_file_written_during_download_is_not_landed_nor_archived(sftp_server, tmp_path, acme_spec):
    body = os.urandom(4 << 20)
    path = _put(sftp_server, NAME, body)

    def payer_resumes_upload() -> None:
        with open(path, "ab") as fh:
            fh.write(b"more rows\n")
        os.utime(path, (MTIME + 5, MTIME + 5))

    sftp_server.hook_after_bytes = (1 << 20, payer_resumes_upload)
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    with SftpSource(_cfg(sftp_server, tmp_path, after_landing="archive", archive="/archive")) as src:
        [judged] = src.list_inbox()
        with pytest.raises(RemoteFileChanged) as err:
            src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=ledger, expected=judged)
    assert "it is still being written; nothing landed" in str(err.value)
    assert landed_files(landing) == [] and ledger.entries() == []
    assert list((sftp_server.root / "archive").iterdir()) == []
    assert path.stat().st_size == len(body) + 10


def test_leave_mode_skips_what_the_ledger_holds_without_downloading(sftp_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from atr_pipeline.cli import app

    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "acme.yaml").write_text(
        "source_id: acme\nfile: {pattern: 'acme_attribution_(?P<yyyymm>\\d{6})\\.csv'}\n"
        "format: {kind: delimited, delimiter: ','}\nfields: {member_id: {column: 1}, payer_id: {constant: P1}, "
        "contract_id: {constant: C1}}\nidentifier_systems: {member_id: 'urn:m', payer_id: 'urn:p', contract_id: 'urn:c'}\n")
    for k, v in {"ATR_SFTP_HOST": "127.0.0.1", "ATR_SFTP_PORT": str(sftp_server.port), "ATR_SFTP_USER": "payer",
                 "ATR_SFTP_PASSWORD": sftp_server.password, "ATR_SFTP_KNOWN_HOSTS": str(sftp_server.known_hosts(tmp_path / "kh")),
                 "ATR_SFTP_INBOX": "/inbox", "ATR_SFTP_QUIET_SECONDS": "0", "ATR_SFTP_STABLE_POLLS": "2",
                 "ATR_MAPPINGS_DIR": str(tmp_path / "mappings"), "ATR_HOME": str(tmp_path / "home"), "ATR_ID_KEY": "k"}.items():
        monkeypatch.setenv(k, v)
    for m in (1, 2, 3):
        _put(sftp_server, f"acme_attribution_20260{m}.csv", os.urandom(300_000))
    first = CliRunner().invoke(app, ["sftp-pull", "--settle-seconds", "0"])
    assert first.exit_code == 0, first.output
    served = sftp_server.bytes_served
    assert served == 900_000
    second = CliRunner().invoke(app, ["sftp-pull", "--settle-seconds", "0"])
    assert second.output.splitlines() == ["0 landed, 0 duplicate(s), 3 already landed, 0 still settling, 0 unmatched, "
                                          "0 problem(s)"]
    assert sftp_server.bytes_served == served  # not one byte downloaded again


def test_listing_reports_unlistable_names_and_keeps_the_rest(sftp_server, tmp_path):
    inbox = sftp_server.root / "inbox"
    (inbox / "acme_attribution_202601.csv").write_bytes(b"a")
    (inbox / b"latin1_\xe9_202601.csv".decode("utf-8", "surrogateescape")).write_bytes(b"b")
    os.symlink("/etc/passwd", inbox / "acme_attribution_202602.csv")
    with SftpSource(_cfg(sftp_server, tmp_path)) as src:
        listing = src.scan_inbox()
    assert [f.name for f in listing.files] == ["acme_attribution_202601.csv"]
    assert [(s.name, s.reason) for s in listing.skipped] == [
        ("acme_attribution_202602.csv", "a symbolic link; only regular files are fetched"),
        ("latin1_\\xe9_202601.csv", "the name is not UTF-8; ask the payer to rename it"),
    ]


def test_listener_that_never_sends_a_banner_times_out_with_a_reason(tmp_path):
    """TCP connects (the kernel completes the handshake) but no SSH banner ever comes."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        kh = tmp_path / "kh"
        kh.write_text(f"[127.0.0.1]:{port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBlGUuFM6t8VyphXmvsG5R4F7Ya8trIwAMbZ6H6pNu0k\n")
        cfg = SftpConfig(host="127.0.0.1", port=port, username="u", password="p", known_hosts=kh, banner_timeout=0.5,
                         retries=2, backoff_initial=0.01, backoff_max=0.02)
        with pytest.raises(SftpConnectionError) as err:
            SftpSource(cfg).__enter__()
    assert str(err.value) == (f"connect on u@127.0.0.1:{port} failed after 2 attempt(s): no SSH banner from the server "
                              "(not an SSH server, or overloaded)")


def test_file_written_again_after_landing_is_not_archived(sftp_server, tmp_path, acme_spec):
    path = _put(sftp_server, NAME, b"v1\n")
    landing = tmp_path / "landing"
    with SftpSource(_cfg(sftp_server, tmp_path, after_landing="archive", archive="/archive")) as src:
        [judged] = src.list_inbox()
        _, sha = src.fetch_with_sha(NAME, spec=acme_spec, landing_dir=landing, ledger=Ledger.for_landing(landing),
                                    expected=judged, after=False)
        _put(sftp_server, NAME, b"v2, a new upload\n", mtime=MTIME + 60)
        with pytest.raises(RemoteFileChanged) as err:
            src.after_landing(NAME, sha, landed_as=judged)
    assert "was written again after it landed; left in the inbox" in str(err.value)
    assert path.read_bytes() == b"v2, a new upload\n"
    assert list((sftp_server.root / "archive").iterdir()) == []
