"""Each fault found against a real OpenSSH server, replayed against the sshd this suite starts.

The `atr` entry point runs as a subprocess (as an operator or cron would run it) or through
typer's CliRunner on the real app; the server is Debian's /usr/sbin/sshd with internal-sftp.
Needs root (skipped with the reason otherwise).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atr_pipeline.cli import app
from atr_pipeline.config import Settings
from atr_pipeline.sources.landing import Ledger
from atr_pipeline.sources.polling import (
    DEFAULT_QUIET_SECONDS,
    DEFAULT_STABLE_POLLS,
)
from atr_pipeline.sources.sftp import (
    KnownHostsInvalid,
    RemoteFileChanged,
    RemoteFileNotReady,
    RemoteFileRefused,
    SftpConfig,
    SftpSource,
    WeakAlgorithms,
    fetch_for_run,
)

pytest_plugins = ["sftp_servers"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
MTIME = 1767225600
# A loose pattern, so odd names reach the later checks (control characters, month, length).
MAPPING = """\
source_id: acme
file:
  pattern: '.*_(?P<yyyymm>\\d{6})\\.csv'
format: {kind: delimited, delimiter: ','}
fields:
  member_id: {column: 1}
  payer_id: {constant: P1}
  contract_id: {constant: C1}
identifier_systems: {member_id: 'urn:example:member', payer_id: 'urn:example:payer', contract_id: 'urn:example:contract'}
"""


def _put(server, name: str, data: bytes, mtime: int | None = MTIME) -> Path:
    from sftp_servers import write_as_user

    path = write_as_user(server, f"inbox/{name}", data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _env(server, tmp_path: Path, **extra: str) -> dict[str, str]:
    mappings = tmp_path / "mappings"
    if not mappings.exists():
        mappings.mkdir()
        (mappings / "acme.yaml").write_text(MAPPING)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATR_")}
    env.update({
        "ATR_SFTP_HOST": "127.0.0.1", "ATR_SFTP_PORT": str(server.port), "ATR_SFTP_USER": server.username,
        "ATR_SFTP_PASSWORD": server.password, "ATR_SFTP_KNOWN_HOSTS": str(server.known_hosts(tmp_path / "kh")),
        "ATR_SFTP_INBOX": str(server.home / "inbox"), "ATR_SFTP_STABLE_POLLS": "2", "ATR_SFTP_QUIET_SECONDS": "0",
        "ATR_SFTP_RETRIES": "2", "ATR_SFTP_TIMEOUT": "5",
        "ATR_MAPPINGS_DIR": str(mappings), "ATR_HOME": str(tmp_path / "home"), "ATR_ID_KEY": "faults",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    })
    env.update(extra)
    return env


def _atr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atr_pipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _cli(env: dict[str, str], monkeypatch, *args: str):
    for k in [k for k in os.environ if k.startswith("ATR_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith("ATR_"):
            monkeypatch.setenv(k, v)
    return CliRunner().invoke(app, list(args))


def _cfg(server, tmp_path: Path, **kw) -> SftpConfig:
    values = dict(host="127.0.0.1", port=server.port, username=server.username, password=server.password,
                  known_hosts=server.known_hosts(tmp_path / "known_hosts"), inbox=str(server.home / "inbox"),
                  retries=2, backoff_initial=0.05, backoff_max=0.2, connect_timeout=5, channel_timeout=20)
    values.update(kw)
    return SftpConfig(**{k: v for k, v in values.items() if v is not None})


def _landed(home: Path) -> list[Path]:
    landing = home / "landing"
    return sorted(p for p in landing.rglob("*") if p.is_file() and p.parent.name != ".incoming"
                  and not p.name.startswith(("ledger.sqlite", "sftp_pull_state")))


# -- 1. one bad file stops intake for good --------------------------------------------------------


def test_bad_files_get_their_own_outcome_and_the_good_one_lands(openssh_server, tmp_path, monkeypatch):
    long_name = "x" * 237 + "_202601.csv"  # 248 bytes: with the sha prefix, past NAME_MAX
    unicode_name = "Überweisung_ärzte_" + "é" * 100 + "_202602.csv"  # 230 characters, 330 bytes
    _put(openssh_server, "good_202601.csv", b"M1\n")
    _put(openssh_server, "bad_202613.csv", b"M2\n")  # month 13
    _put(openssh_server, "esc\x1b[31m_202601.csv", b"M3\n")
    _put(openssh_server, long_name, b"M4\n")
    _put(openssh_server, unicode_name[:80] + "_202603.csv", b"M5\n")
    unreadable = openssh_server.home / "inbox" / "locked_202604.csv"  # root's, 0600: the user cannot open it
    unreadable.write_bytes(b"M6\n")
    unreadable.chmod(0o600)
    env = _env(openssh_server, tmp_path)
    result = _cli(env, monkeypatch, "sftp-pull", "--settle-seconds", "0")
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert "refused bad_202613.csv: the month in the file name is not a valid month (month)" in lines
    assert ("skipped esc\\x1b[31m_202601.csv: not a plain file name (path separators or control characters)" in lines)
    assert (f"skipped locked_202604.csv: locked_202604.csv on {openssh_server.username}@127.0.0.1:{openssh_server.port} "
            "cannot be read (permission denied)") in lines
    assert "\x1b" not in result.output
    landed = {p.read_bytes(): p.name for p in _landed(tmp_path / "home")}
    assert sorted(landed) == [b"M1\n", b"M4\n", b"M5\n"]
    assert all(len(name.encode()) <= 255 for name in landed.values())
    assert landed[b"M4\n"].endswith("_202601.csv")
    assert lines[-1] == "3 landed, 0 duplicate(s), 0 already landed, 0 still settling, 0 unmatched, 3 problem(s)"
    names = sorted(e.original_name for e in Ledger.for_landing(tmp_path / "home" / "landing").entries())
    assert names == sorted(["good_202601.csv", long_name, unicode_name[:80] + "_202603.csv"])


def test_file_deleted_between_listing_and_download_does_not_stop_the_rest(openssh_server, tmp_path, acme_spec):
    from atr_pipeline.sources.sftp import RemoteFileMissing

    a = _put(openssh_server, "acme_attribution_202601.csv", b"A\n")
    _put(openssh_server, "acme_attribution_202602.csv", b"B\n")
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    with SftpSource(_cfg(openssh_server, tmp_path)) as src:
        listing = src.list_inbox()
        a.unlink()
        with pytest.raises(RemoteFileMissing):
            src.fetch(listing[0].name, spec=acme_spec, landing_dir=landing, ledger=ledger, expected=listing[0])
        out = src.fetch(listing[1].name, spec=acme_spec, landing_dir=landing, ledger=ledger, expected=listing[1])
    assert out.file.path.read_bytes() == b"B\n"


def test_sensor_reports_unrequestable_files_and_keeps_requesting_the_rest(openssh_server, tmp_path, acme_spec):
    """Months before the job's first / after its last partition, month 13: reported once; the good file beside
    them is requested and the cursor moves on (it used to fail every tick with DagsterUnknownPartitionError)."""
    import dagster as dg

    from atr_pipeline.defs.resources import SftpResource
    from atr_pipeline.defs.sftp_sensor import build_sftp_sensor
    from atr_pipeline.sources.polling import SensorCursor

    partitions = dg.MultiPartitionsDefinition({"month": dg.MonthlyPartitionsDefinition(start_date="2025-01-01"),
                                               "source": dg.StaticPartitionsDefinition(["acme"])})

    @dg.asset(partitions_def=partitions)
    def landed() -> None: ...

    job = dg.define_asset_job("ingest_job", selection=[landed], partitions_def=partitions)
    sensor = build_sftp_sensor(job, {"acme": acme_spec}, stable_polls=2, quiet_seconds=0)
    resource = SftpResource(host="127.0.0.1", port=openssh_server.port, username=openssh_server.username,
                            password=openssh_server.password, known_hosts=str(openssh_server.known_hosts(tmp_path / "kh")),
                            inbox=str(openssh_server.home / "inbox"), backoff_initial=0.05)
    defs = dg.Definitions(assets=[landed], jobs=[job], sensors=[sensor], resources={"sftp": resource})
    for name in ("acme_attribution_202412.csv", "acme_attribution_209912.csv", "acme_attribution_202613.csv",
                 "acme_attribution_202602.csv"):
        _put(openssh_server, name, b"M1\n")
    cursor, requested = None, []
    with dg.instance_for_test() as instance:
        for _ in range(3):
            data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                                                resources={"sftp": resource}))
            requested.append([r.tags["atr/remote_file"] for r in data.run_requests])
            cursor = data.cursor
    assert requested == [[], ["acme_attribution_202602.csv"], []]
    reported = SensorCursor.from_json(cursor).reported
    assert sorted(r.split(":")[0] for r in reported.values()) == [
        "acme_attribution_202412.csv", "acme_attribution_202613.csv", "acme_attribution_209912.csv"]


def test_refused_login_is_one_attempt_under_dagsters_retry_policy(openssh_server, tmp_path, monkeypatch):
    import dagster as dg

    from atr_pipeline.defs import assets
    from atr_pipeline.defs.build import build_definitions

    env = _env(openssh_server, tmp_path, ATR_SFTP_PASSWORD="not-it-4411", ATR_SFTP_RETRIES="4",
               ATR_MAPPINGS_DIR=str(ROOT / "mappings"))
    for k, v in env.items():
        if k.startswith("ATR_"):
            monkeypatch.setenv(k, v)
    defs = build_definitions()
    result = dg.materialize([assets.landed_file], resources=defs.resources, raise_on_error=False,
                            partition_key=dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"}),
                            tags={"atr/remote_file": "ACME_ATTRIB_202608.csv"})
    assert not result.success
    assert openssh_server.log_count("Failed password for atrsftptest") == 1  # it was 4: 1 + 3 Dagster retries


# -- 3. half a file landed ------------------------------------------------------------------------


def test_paused_upload_is_not_landed_by_default_settings(openssh_server, tmp_path, monkeypatch):
    body = (ROOT / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202608.csv").read_bytes()
    half = body[: len(body) // 2]
    _put(openssh_server, "acme_attribution_202601.csv", half, mtime=None)
    env = _env(openssh_server, tmp_path)
    del env["ATR_SFTP_STABLE_POLLS"], env["ATR_SFTP_QUIET_SECONDS"]  # the shipped defaults
    # Three pulls (six listings) of an upload that paused: unchanged throughout, still not landed.
    for _ in range(3):
        result = _cli(env, monkeypatch, "sftp-pull", "--settle-seconds", "0.2")
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0].startswith("waiting acme_attribution_202601.csv: unchanged for ")
        assert f"needs {DEFAULT_QUIET_SECONDS:g} s over {DEFAULT_STABLE_POLLS} poll(s)" in result.output.splitlines()[0]
    assert _landed(tmp_path / "home") == []
    # A paused upload of several minutes is inside the default quiet period.
    assert DEFAULT_QUIET_SECONDS >= 600 and DEFAULT_STABLE_POLLS >= 3


def test_done_marker_is_honoured_by_pull_and_by_fetch_by_name(openssh_server, tmp_path, monkeypatch, acme_spec):
    name = "acme_attribution_202601.csv"
    _put(openssh_server, name, b"M1\nM2\n")
    env = _env(openssh_server, tmp_path, ATR_SFTP_DONE_SUFFIX=".done")
    waiting = _cli(env, monkeypatch, "sftp-pull", "--settle-seconds", "0")
    assert waiting.output.splitlines()[0] == f"waiting {name}: no done marker {name}.done yet"
    assert _landed(tmp_path / "home") == []
    settings = Settings(home=tmp_path / "h2", mappings_dir=tmp_path, inbox_dir=tmp_path, id_key=b"k")
    with pytest.raises(RemoteFileNotReady) as err:
        fetch_for_run(name, spec=acme_spec, settings=settings, config=_cfg(openssh_server, tmp_path, done_suffix=".done"))
    assert str(err.value) == f"{name} has no done marker {name}.done on {openssh_server.username}@127.0.0.1:{openssh_server.port} yet; not fetched"
    _put(openssh_server, name + ".done", b"")
    landed = _cli(env, monkeypatch, "sftp-pull", "--settle-seconds", "0")
    assert landed.exit_code == 0, landed.output
    assert [p.read_bytes() for p in _landed(tmp_path / "home")] == [b"M1\nM2\n"]


def test_file_still_growing_is_neither_landed_nor_archived(openssh_server, tmp_path, acme_spec):
    name = "acme_attribution_202601.csv"
    path = _put(openssh_server, name, b"M1\n" * 155)
    landing = tmp_path / "landing"
    cfg = _cfg(openssh_server, tmp_path, after_landing="archive", archive=str(openssh_server.home / "archive"))
    with SftpSource(cfg) as src:
        [judged] = src.list_inbox()
        with open(path, "ab") as fh:  # the payer's upload resumes after the file was judged
            fh.write(b"M2\n" * 154)
        with pytest.raises(RemoteFileChanged) as err:
            src.fetch(name, spec=acme_spec, landing_dir=landing, ledger=Ledger.for_landing(landing), expected=judged)
    assert "changed since it was judged complete (size 465 -> 927)" in str(err.value)
    assert (openssh_server.home / "inbox" / name).stat().st_size == 927
    assert list((openssh_server.home / "archive").iterdir()) == []
    assert not (landing / "acme").exists()


# -- 4. overlapping pulls, missing archive folder -------------------------------------------------


def test_overlapping_pulls_never_lose_or_delete_a_file(openssh_server, tmp_path):
    bodies = {f"acme_attribution_2026{m:02d}.csv": os.urandom(2 << 20) for m in range(1, 7)}
    for name, body in bodies.items():
        _put(openssh_server, name, body)
    env = _env(openssh_server, tmp_path, ATR_SFTP_AFTER_LANDING="archive",
               ATR_SFTP_ARCHIVE=str(openssh_server.home / "archive"))
    cmd = [sys.executable, "-m", "atr_pipeline.cli", "sftp-pull", "--settle-seconds", "0"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o for pair in outs for o in pair)
    assert list((openssh_server.home / "inbox").iterdir()) == []
    archived = sorted((openssh_server.home / "archive").iterdir())
    # Each file exactly once in the archive, with its bytes; each landed exactly once.
    assert sorted(p.name[37:] for p in archived) == sorted(bodies)
    assert all(p.read_bytes() == bodies[p.name[37:]] for p in archived)
    entries = Ledger.for_landing(tmp_path / "home" / "landing").entries()
    assert sorted(e.original_name for e in entries) == sorted(bodies)
    assert sorted(p.read_bytes() for p in _landed(tmp_path / "home")) == sorted(bodies.values())


def test_missing_archive_folder_is_one_clear_error_in_check_and_pull(openssh_server, tmp_path):
    _put(openssh_server, "acme_attribution_202601.csv", b"M1\n")
    missing = str(openssh_server.home / "no_such_archive")
    env = _env(openssh_server, tmp_path, ATR_SFTP_AFTER_LANDING="archive", ATR_SFTP_ARCHIVE=missing)
    expected = (f"error: the remote archive folder {missing!r} does not exist on "
                f"{openssh_server.username}@127.0.0.1:{openssh_server.port}")
    check = _atr(env, "sftp-check")
    assert (check.returncode, check.stdout, check.stderr.strip()) == (1, "", expected)
    pull = _atr(env, "sftp-pull", "--settle-seconds", "0")
    assert (pull.returncode, pull.stdout, pull.stderr.strip()) == (1, "", expected)
    assert (openssh_server.home / "inbox" / "acme_attribution_202601.csv").exists()
    locked = openssh_server.home / "locked_inbox"  # root's, 0700: the user may see it but not list it
    locked.mkdir(mode=0o700)
    unlisted = _atr({**env, "ATR_SFTP_AFTER_LANDING": "leave", "ATR_SFTP_INBOX": str(locked)}, "sftp-check")
    assert (unlisted.returncode, unlisted.stderr.strip()) == (1, f"error: the remote inbox folder {str(locked)!r} on "
                                                                 f"{openssh_server.username}@127.0.0.1:{openssh_server.port} "
                                                                 "cannot be listed (permission denied)")
    outbox = _atr({**env, "ATR_SFTP_AFTER_LANDING": "leave", "ATR_SFTP_OUTBOX": "/nope/outbox"}, "sftp-check")
    assert outbox.returncode == 1
    assert outbox.stderr.strip() == (f"error: the remote outbox folder '/nope/outbox' does not exist on "
                                     f"{openssh_server.username}@127.0.0.1:{openssh_server.port}")


# -- 6. login failures, timeouts ------------------------------------------------------------------


def test_wrong_password_is_tried_once_however_many_retries(openssh_server, tmp_path):
    env = _env(openssh_server, tmp_path, ATR_SFTP_PASSWORD="not-the-password-77", ATR_SFTP_RETRIES="4")
    result = _atr(env, "sftp-check")
    assert result.returncode == 1
    assert "authentication failed" in result.stderr and "will retry" not in result.stderr
    assert openssh_server.log_count("Failed password for atrsftptest") == 1


def test_login_that_runs_no_sftp_is_a_clear_error(openssh_server, tmp_path):
    # OpenSSH runs the forced command through the user's shell (nologin), which prints its
    # message instead of speaking SFTP. (A server that says nothing at all: test_sftp_asyncssh.)
    openssh_server.restart_with("ForceCommand /bin/sleep 60")
    env = _env(openssh_server, tmp_path, ATR_SFTP_TIMEOUT="2", ATR_SFTP_RETRIES="3")
    result = _atr(env, "sftp-check", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: the server {openssh_server.username}@127.0.0.1:{openssh_server.port} accepted the login but did not "
        "start SFTP (it answered with something else, e.g. a shell's message); ask the payer to enable the sftp "
        "subsystem for this user")
    assert openssh_server.log_count("Accepted password for atrsftptest") == 1  # not retried


def test_unreachable_host_reason_is_words_and_last_attempt_says_no_retry(tmp_path, caplog):
    import logging
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBlGUuFM6t8VyphXmvsG5R4F7Ya8trIwAMbZ6H6pNu0k\n")
    cfg = SftpConfig(host="127.0.0.1", port=port, username="u", password="p", known_hosts=kh, retries=3,
                     backoff_initial=0.01, backoff_max=0.02)
    caplog.set_level(logging.WARNING)
    from atr_pipeline.sources.sftp import SftpConnectionError, describe

    with pytest.raises(SftpConnectionError) as err:
        SftpSource(cfg).__enter__()
    assert str(err.value) == (f"connect on u@127.0.0.1:{port} failed after 3 attempt(s): connection refused "
                              "(nothing listening on that port)")
    assert describe(socket.gaierror(-2, "Name or service not known")) == "host name not found (DNS)"
    retries = [r.getMessage() for r in caplog.records if "will retry" in r.getMessage()]
    assert [m.rsplit("(", 1)[1] for m in retries] == ["attempt 2 of 3)", "attempt 3 of 3)"]


# -- 6. algorithms, host keys ---------------------------------------------------------------------


def test_weak_only_server_is_refused_unless_explicitly_allowed(openssh_server, tmp_path):
    openssh_server.restart_with("Ciphers 3des-cbc", "MACs hmac-md5")
    env = _env(openssh_server, tmp_path)
    refused = _atr(env, "sftp-check")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: {openssh_server.username}@127.0.0.1:{openssh_server.port} offers no "
                                     "algorithm this client accepts (no acceptable ciphers)")
    assert "ATR_SFTP_ALLOW_ALGORITHMS" in refused.stderr
    allowed = _atr({**env, "ATR_SFTP_ALLOW_ALGORITHMS": "3des-cbc,hmac-md5"}, "sftp-check")
    assert allowed.returncode == 0, allowed.stderr
    assert ", cipher 3des-cbc, mac hmac-md5, " in allowed.stdout
    with pytest.raises(WeakAlgorithms):
        SftpSource(_cfg(openssh_server, tmp_path, allow_algorithms=("3des-cbc",))).__enter__()  # MAC still off


def test_host_key_mismatch_shows_the_offered_fingerprint_like_openssh(openssh_server, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, data = Path(str(other) + ".pub").read_text().split()[:2]
    kh = tmp_path / "changed_known_hosts"
    kh.write_text(f"[127.0.0.1]:{openssh_server.port} {kind} {data}\n")
    # What `ssh-keygen -lf` prints for the server's real key: the operator compares this.
    offered = subprocess.run(["ssh-keygen", "-lf", str(openssh_server.host_key_path) + ".pub"], capture_output=True,
                             text=True, check=True).stdout.split()[1]
    result = _atr(_env(openssh_server, tmp_path, ATR_SFTP_KNOWN_HOSTS=str(kh)), "sftp-check")
    assert result.returncode == 1
    assert f"the server offers ssh-ed25519 {offered}" in result.stderr
    assert offered.startswith("SHA256:") and data not in result.stderr


@pytest.mark.parametrize("line, lineno", [("[127.0.0.1]:22 ssh-ed25519 !!!not-base64!!!", 2),
                                          ("just-one-field", 2), ("@cert-authority * ssh-ed25519 AAAA", 2)])
def test_malformed_known_hosts_is_a_clear_error(openssh_server, tmp_path, line, lineno):
    kh = tmp_path / "bad_known_hosts"
    kh.write_text("# pinned\n" + line + "\n" + openssh_server.known_hosts(tmp_path / "good").read_text())
    with pytest.raises(KnownHostsInvalid) as err:
        SftpSource(_cfg(openssh_server, tmp_path, known_hosts=kh)).__enter__()
    assert str(err.value).startswith(f"known_hosts file {kh} line {lineno} is not a valid entry")
    result = _atr(_env(openssh_server, tmp_path, ATR_SFTP_KNOWN_HOSTS=str(kh)), "sftp-check")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"line {lineno} is not a valid entry" in result.stderr


# -- 7. files -------------------------------------------------------------------------------------


def test_symlink_is_never_fetched_even_by_name(openssh_server, tmp_path, acme_spec, monkeypatch):
    name = "acme_attribution_202601.csv"
    link = openssh_server.home / "inbox" / name
    os.symlink("/etc/passwd", link)
    settings = Settings(home=tmp_path / "home", mappings_dir=tmp_path, inbox_dir=tmp_path, id_key=b"k")
    with pytest.raises(RemoteFileRefused) as err:
        fetch_for_run(name, spec=acme_spec, settings=settings, config=_cfg(openssh_server, tmp_path))
    assert str(err.value).endswith("is a symbolic link; only regular files are fetched")
    pull = _cli(_env(openssh_server, tmp_path), monkeypatch, "sftp-pull", "--settle-seconds", "0")
    assert pull.output.splitlines()[0] == f"skipped {name}: a symbolic link; only regular files are fetched"
    assert _landed(tmp_path / "home") == []


def test_partial_download_of_a_killed_pull_is_removed_at_the_next_start(openssh_server, tmp_path):
    body = os.urandom(60 << 20)
    _put(openssh_server, "acme_attribution_202601.csv", body)
    env = _env(openssh_server, tmp_path)
    incoming = tmp_path / "home" / "landing" / ".incoming"
    proc = subprocess.Popen([sys.executable, "-m", "atr_pipeline.cli", "sftp-pull", "--settle-seconds", "0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(incoming.glob("*.part")) if incoming.exists() else []
        if parts and parts[0].stat().st_size >= 4 << 20:
            seen = parts[0].stat().st_size
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert 0 < seen < len(body)
    [partial] = incoming.glob("*.part")
    os.utime(partial, (time.time() - 10, time.time() - 10))  # older than the create-then-lock instant
    result = _atr(env, "sftp-pull", "--settle-seconds", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "removed 1 partial download(s) left by a stopped pull"
    assert list(incoming.glob("*.part")) == []
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in _landed(tmp_path / "home")] == [hashlib.sha256(body).hexdigest()]


def test_leave_mode_does_not_download_again(openssh_server, tmp_path, monkeypatch):
    name = "acme_attribution_202601.csv"
    _put(openssh_server, name, b"M1\n")
    env = _env(openssh_server, tmp_path)
    first = _cli(env, monkeypatch, "sftp-pull", "--settle-seconds", "0")
    assert first.output.splitlines()[0].startswith(f"landed {name} -> ")
    second = _cli(env, monkeypatch, "sftp-pull", "--settle-seconds", "0")
    assert second.exit_code == 0
    assert second.output.splitlines() == ["0 landed, 0 duplicate(s), 1 already landed, 0 still settling, 0 unmatched, "
                                          "0 problem(s)"]
    assert (openssh_server.home / "inbox" / name).exists()
    # Changed under the same name: a new delivery, downloaded.
    _put(openssh_server, name, b"M1\nM2\n", mtime=MTIME + 60)
    third = _cli(env, monkeypatch, "sftp-pull", "--settle-seconds", "0")
    assert third.output.splitlines()[0].startswith(f"landed {name} -> ")


# -- 8. from pull to run --------------------------------------------------------------------------


def test_pull_with_run_processes_what_it_landed(openssh_server, tmp_path):
    from sftp_servers import write_as_user

    name = "ACME_ATTRIB_202608.csv"
    write_as_user(openssh_server, f"inbox/{name}", (ROOT / "fixtures" / "acme_commercial" / name).read_bytes())
    env = _env(openssh_server, tmp_path, ATR_MAPPINGS_DIR=str(ROOT / "mappings"))
    result = _atr(env, "sftp-pull", "--settle-seconds", "0", "--run", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"landed {name} -> ")
    export = tmp_path / "home" / "exports" / "acme_commercial" / "2026-08"
    assert lines[-1] == f"processed {name} (2026-08): 42 rows read, 42 accepted, 0 rejected; export {export}"
    [entry] = Ledger.for_landing(tmp_path / "home" / "landing").entries()
    assert (entry.original_name, entry.status) == (name, "processed")
    again = _atr(env, "sftp-pull", "--settle-seconds", "0", "--run")
    assert again.stdout.splitlines()[-1] == "nothing landed to process"


# -- 9. clean tests -------------------------------------------------------------------------------


def test_the_test_user_is_removed_when_a_suite_ends(tmp_path):
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root and /usr/sbin/sshd, like the OpenSSH fixture")
    inner = tmp_path / "test_inner.py"
    inner.write_text("pytest_plugins = ['sftp_servers']\n\n"
                     "def test_uses_sshd(openssh_server):\n"
                     "    import pwd\n"
                     "    assert pwd.getpwnam('atrsftptest')\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"})
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout + result.stderr
    getent = subprocess.run(["getent", "passwd", "atrsftptest"], capture_output=True)
    assert getent.returncode == 2  # no such user left behind
