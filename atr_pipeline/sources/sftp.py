"""A payer's SFTP inbox over paramiko: list, fetch into landing, archive, upload rejects.

In:  an ``SftpConfig`` (host, port, user, password or private key, a known_hosts file that
     must already hold the server's key, remote folders, timeouts, retries, algorithm opt-ins).
Out: ``scan_inbox()`` -> ``RemoteListing`` (regular files, and every entry that was skipped with
     its reason); ``fetch(name, ...)`` -> ``LandingOutcome`` (the download streams straight into
     ``land_stream``); ``upload_rejects`` puts a file into the payer's outbox under a temporary
     name and renames it when complete.
Refused: unknown hosts and changed host keys (``HostKeyUnknown`` / ``HostKeyChanged``, never
     trust-on-first-use), failed logins (``AuthenticationFailed``, never retried), servers that
     offer only weak algorithms (``WeakAlgorithms``, unless explicitly allowed), anything but a
     regular file (``RemoteFileRefused``: symlinks, even by name), files that vanish or change
     before, during or right after the download (``RemoteFileMissing`` / ``RemoteFileChanged``).

One connection per ``with SftpSource(cfg) as src:`` block, not per file. Every phase of a
connection is bounded (TCP connect, SSH banner, authentication, SFTP subsystem start, each SFTP
request) and one connection attempt as a whole by ``total_timeout``; a watchdog closes the
socket when a phase overruns, because paramiko waits for some replies without any timeout.
Dropped connections and timeouts are retried with exponential backoff and jitter,
reconnecting each time; an interrupted download never leaves a partial file in landing. The
remote file is archived (under a name no other pull can produce) or deleted only after it has
landed and a second look shows it unchanged since it was judged complete.
Passwords and keys never appear in repr, logs or exception text: paramiko's own exceptions are
replaced (``from None``), since some carry key material, and no setting's value is echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import posixpath
import secrets
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from paramiko.sftp import CMD_CLOSE, CMD_OPENDIR, CMD_READDIR
from paramiko.sftp_attr import SFTPAttributes
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from atr_pipeline.config import Settings
from atr_pipeline.errors import AtrError, FileRefused
from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.sources.landing import (
    CHUNK_SIZE,
    LandedFile,
    LandingOutcome,
    Ledger,
    check_name,
    is_in_flight,
    land_stream,
    match_mapping,
    short_name,
)
from atr_pipeline.sources.polling import RemoteFile, printable

log = logging.getLogger(__name__)
# paramiko logs every transport failure itself at ERROR (with its own wording, sometimes key
# types and algorithm lists); our exceptions say the same in words an operator can act on.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

AfterLanding = Literal["leave", "archive", "delete"]

# Off unless a source opts in by name (ATR_SFTP_ALLOW_ALGORITHMS): CBC ciphers (plaintext
# recovery attacks), MD5 and SHA-1 MACs, SHA-1 key exchanges. paramiko 5.1 no longer offers the
# SHA-1 kex or ssh-dss at all; they are listed so an upgrade cannot bring them back silently.
WEAK_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "ciphers": ("3des-cbc", "aes128-cbc", "aes192-cbc", "aes256-cbc", "blowfish-cbc", "arcfour"),
    "macs": ("hmac-md5", "hmac-md5-96", "hmac-sha1", "hmac-sha1-96"),
    "kex": ("diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1"),
    "keys": ("ssh-dss",),
}
_ALL_WEAK = {name for names in WEAK_ALGORITHMS.values() for name in names}


class SftpError(AtrError):
    """An SFTP problem the operator can act on. Messages hold host, port, user and file names only."""

    # Retrying cannot help: a login or a host key does not fix itself, and a payer with a
    # lockout counts every failed login (the CLI, the sensor and Dagster's RetryPolicy all obey).
    permanent = False


class HostKeyUnknown(SftpError):
    permanent = True


class HostKeyChanged(SftpError):
    permanent = True


class KnownHostsInvalid(SftpError):
    permanent = True


class AuthenticationFailed(SftpError):
    permanent = True


class AuthenticationTimeout(SftpError):
    permanent = True


class KeyLoadError(SftpError):
    permanent = True


class WeakAlgorithms(SftpError):
    permanent = True


class SftpSettingsError(SftpError):
    permanent = True


class SftpNotStarted(SftpError):
    """The login worked, but what answered on the channel is not SFTP (e.g. a shell message)."""

    permanent = True


class SftpConnectionError(SftpError):
    """The connection failed, dropped or timed out, and stayed so through every retry."""


class RemoteFolderMissing(SftpError):
    """The inbox, archive or outbox folder does not exist (or is not a folder) on the server."""

    permanent = True


# A file's verdicts hold for the run that named it (the sensor requests a new run, with a new
# run key, once the file is stable again): a step retry could only repeat them.


class RemoteFileMissing(SftpError):
    permanent = True


class RemoteFileChanged(SftpError):
    permanent = True


class RemoteFileRefused(SftpError):
    """Not a regular file (a symlink, a device...), or unreadable: never fetched."""

    permanent = True


class RemoteFileNotReady(SftpError):
    """Done markers are in use and this file has none yet."""

    permanent = True


class _Transient(Exception):
    """Internal: a dropped/failed connection worth a reconnect and another try."""


# Errors about the connection or the settings, not about one file: a pull stops at them.
CONNECTION_ERRORS = (SftpConnectionError, SftpNotStarted, HostKeyUnknown, HostKeyChanged, KnownHostsInvalid, AuthenticationFailed,
                     AuthenticationTimeout, KeyLoadError, WeakAlgorithms, SftpSettingsError)


class SftpConfig(BaseModel):
    """Connection settings. ``password``/``private_key`` are SecretStr: repr shows ``**********``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    password: SecretStr | None = None
    private_key: SecretStr | None = None  # OpenSSH or PEM private key text, never a path
    private_key_path: Path | None = None
    private_key_passphrase: SecretStr | None = None
    known_hosts: Path  # required: host keys are pinned, never learned on first use
    inbox: str = "."
    archive: str | None = None
    after_landing: AfterLanding = "leave"
    done_suffix: str | None = None  # e.g. ".done": only files whose <name><suffix> exists are fetched
    connect_timeout: float = Field(default=15.0, gt=0)  # TCP connect
    banner_timeout: float = Field(default=15.0, gt=0)
    auth_timeout: float = Field(default=15.0, gt=0)
    sftp_timeout: float = Field(default=15.0, gt=0)  # opening the channel and starting the SFTP subsystem
    channel_timeout: float = Field(default=60.0, gt=0)  # each SFTP request, and every read of a download
    total_timeout: float = Field(default=120.0, gt=0)  # an operation without progress: connects, retries, backoff
    retries: int = Field(default=4, ge=1)  # attempts per operation, the first included
    backoff_initial: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    chunk_size: int = Field(default=CHUNK_SIZE, ge=4096)
    allow_algorithms: tuple[str, ...] = ()  # weak algorithms this source may use, by exact name

    @model_validator(mode="after")
    def _check(self) -> SftpConfig:
        # Messages never quote a value: pydantic would show the input, which may be a secret.
        if self.password is None and self.private_key is None and self.private_key_path is None:
            raise ValueError("give a password, a private key (ATR_SFTP_KEY) or a key file (ATR_SFTP_KEY_FILE)")
        if self.private_key is not None and self.private_key_path is not None:
            raise ValueError("give the key text (ATR_SFTP_KEY) or a key file (ATR_SFTP_KEY_FILE), not both")
        if self.private_key is not None:
            _check_key_text(self.private_key.get_secret_value())
        if self.after_landing == "archive" and not self.archive:
            raise ValueError("after_landing=archive needs an archive folder (ATR_SFTP_ARCHIVE)")
        unknown = sorted(set(self.allow_algorithms) - _ALL_WEAK)
        if unknown:
            raise ValueError(f"allow_algorithms names algorithms that are not disabled: {', '.join(unknown)} "
                             f"(disabled ones: {', '.join(sorted(_ALL_WEAK))})")
        return self

    @property
    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def disabled_algorithms(self) -> dict[str, list[str]]:
        allowed = set(self.allow_algorithms)
        disabled = {kind: [n for n in names if n not in allowed] for kind, names in WEAK_ALGORITHMS.items()}
        disabled["pubkeys"] = disabled["keys"]
        return disabled


def _check_key_text(text: str) -> None:
    """Refuse key settings that are not key text, naming the likely mistake, never the value."""
    if "PuTTY-User-Key-File" in text:
        raise ValueError("ATR_SFTP_KEY holds a PuTTY key; convert it with `puttygen key.ppk -O private-openssh -o key` "
                         "and give that text")
    if "-----BEGIN" not in text:
        raise ValueError("ATR_SFTP_KEY must hold the private key text (-----BEGIN ... PRIVATE KEY-----); "
                         "for a key file use ATR_SFTP_KEY_FILE (the value is not shown)")


def load_private_key(text: str | None = None, path: Path | None = None, passphrase: str | None = None) -> paramiko.PKey:
    """An Ed25519, ECDSA or RSA key from OpenSSH or PEM text or a file. Errors never quote the key or the path."""
    if text is not None:
        try:
            _check_key_text(text)
        except ValueError as exc:
            raise KeyLoadError(str(exc)) from None
        data = text.encode()
    else:
        try:
            data = Path(path).read_bytes()  # type: ignore[arg-type]
        except OSError as exc:
            # The path is not echoed: a misplaced password or key body must not reach a log.
            raise KeyLoadError(f"cannot read the key file ATR_SFTP_KEY_FILE ({exc.strerror or 'unreadable'}; "
                               "the value is not shown)") from None
        if b"PuTTY-User-Key-File" in data:
            raise KeyLoadError("the key file is a PuTTY key; convert it with `puttygen key.ppk -O private-openssh -o key`")
    pw = passphrase.encode() if passphrase else None
    loaded: PrivateKeyTypes  # the PEM reader returns more key types than the OpenSSH one
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=pw)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=pw)
    except TypeError:
        raise KeyLoadError("the private key is encrypted: give its passphrase (ATR_SFTP_KEY_PASSPHRASE)") from None
    except (ValueError, UnsupportedAlgorithm, paramiko.SSHException):
        raise KeyLoadError("the private key could not be read (wrong passphrase, or not an OpenSSH/PEM key)") from None
    # Build paramiko's key from the parsed object: paramiko's own OpenSSH parser rejects some
    # valid ECDSA files (e.g. those written by asyncssh), cryptography reads them all.
    try:
        if isinstance(loaded, rsa.RSAPrivateKey):
            return paramiko.RSAKey(key=loaded)
        if isinstance(loaded, ec.EllipticCurvePrivateKey):
            return paramiko.ECDSAKey(vals=(loaded, loaded.public_key()))
        if isinstance(loaded, ed25519.Ed25519PrivateKey):
            plain = loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption())
            return paramiko.Ed25519Key.from_private_key(io.StringIO(plain.decode()))
    except (paramiko.SSHException, ValueError):
        raise KeyLoadError("the private key could not be used (unsupported curve or size)") from None
    raise KeyLoadError("unsupported private key type (use Ed25519, ECDSA or RSA)")


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it: ``SHA256:`` + unpadded base64 of sha256(blob)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def load_known_hosts(path: Path) -> list[paramiko.hostkeys.HostKeyEntry]:
    """Every entry of a known_hosts file; a malformed line is an error naming the file and line.

    paramiko skips short lines silently and raises a bare ``InvalidHostKey`` (with the line) on
    bad base64; an operator needs to know which line to fix. Key types paramiko does not know
    (e.g. ``sk-ssh-ed25519@openssh.com``) are skipped: the server may offer another one.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HostKeyUnknown(f"known_hosts file {path} does not exist; host keys must be pinned (docs/SFTP.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KnownHostsInvalid(f"known_hosts file {path} cannot be read ({getattr(exc, 'strerror', None) or 'not UTF-8 text'})") from None
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        bad = KnownHostsInvalid(f"known_hosts file {path} line {lineno} is not a valid entry (expected "
                                "'host key-type base64-key'; markers such as @cert-authority are not supported)")
        if line.startswith("@") or len(line.split()) < 3:
            raise bad
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, binascii.Error, ValueError, TypeError,
                IndexError, struct.error):
            raise bad from None
        if entry is None:
            raise bad
        if entry.key is not None:
            entries.append(entry)
    return entries


class _PinnedHostKeys(paramiko.MissingHostKeyPolicy):
    """RejectPolicy with messages an operator can act on; tells a new key type from a new host."""

    def __init__(self, cfg: SftpConfig):
        self.cfg = cfg

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        known = client.get_host_keys().lookup(hostname)
        if known:
            raise HostKeyChanged(
                f"host key for {hostname} changed: the server offers {key.get_name()} {fingerprint(key)}, known_hosts "
                f"{self.cfg.known_hosts} holds {', '.join(sorted(known.keys()))}; refusing to connect. Verify the "
                f"new key with the payer out of band before updating known_hosts (docs/SFTP.md)"
            )
        raise HostKeyUnknown(
            f"host {hostname} is not in known_hosts {self.cfg.known_hosts}; refusing to connect. The server offers "
            f"{key.get_name()} {fingerprint(key)}: verify that fingerprint with the payer before pinning it (docs/SFTP.md)"
        )


# OSErrors that say something about a file, not the connection: retrying will not help.
_FILE_ERRORS = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


def _is_transient(exc: BaseException) -> bool:
    """Dropped or refused connections and timeouts; not auth, host keys, or file problems."""
    if isinstance(exc, _SftpTimeout):
        return True
    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException, paramiko.IncompatiblePeer,
                        SftpError, _FILE_ERRORS)):
        return False
    # paramiko reports a dropped server as SSHException('Server connection dropped') or EOFError;
    # refused/reset/timed-out sockets are OSErrors (NoValidConnectionsError, ConnectionError, timeout).
    return isinstance(exc, (paramiko.SSHException, EOFError, OSError))


class _SftpTimeout(SftpConnectionError):
    """A phase overran its timeout (retried like a dropped connection)."""


def describe(exc: BaseException) -> str:
    """A reason in words for a connection-level failure (never a bare exception class name)."""
    if isinstance(exc, SftpError):
        return str(exc)
    if isinstance(exc, socket.gaierror):
        return "host name not found (DNS)"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused (nothing listening on that port)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening on that port)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "banner" in text.lower():
            return "no SSH banner from the server (not an SSH server, or overloaded)"
        if "dropped" in text.lower() or "closed" in text.lower() or "eof" in text.lower():
            return "the connection dropped"
        return "SSH protocol error"
    if isinstance(exc, OSError):
        return exc.strerror or "network error"
    return "unexpected error"


@dataclass(frozen=True)
class SkippedEntry:
    """An inbox entry that is never fetched, with why (``name`` is printable: controls escaped)."""

    name: str
    reason: str


@dataclass
class RemoteListing:
    files: list[RemoteFile] = field(default_factory=list)  # regular files with safe names, sorted
    skipped: list[SkippedEntry] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)  # done-marker names present


@dataclass(frozen=True)
class AfterLandingOutcome:
    action: Literal["left", "archived", "deleted", "gone"]  # gone: another pull moved it first
    remote_path: str | None = None


class _Watchdog:
    """Close the client if a blocking phase runs past ``seconds`` (paramiko has no timeout on
    some waits, e.g. the reply to the SFTP subsystem request)."""

    def __init__(self, client: paramiko.SSHClient, seconds: float):
        self.fired = False
        self._client = client
        self._timer = threading.Timer(max(seconds, 0.001), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self._client.close()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class SftpSource:
    """Context manager over one SSH connection and SFTP session."""

    def __init__(self, config: SftpConfig):
        self.config = config
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._pkey: paramiko.PKey | None = None
        # When the operation under way last made progress (started, or received bytes): the total
        # budget counts from there, so a long download that keeps moving is never cut short.
        self._progress_at: float | None = None
        self._landed_as: RemoteFile | None = None  # name, size, mtime of the last fetched file
        self.connects = 0  # connections opened, for tests and metadata

    def __repr__(self) -> str:
        return f"SftpSource({self.config.where}, inbox={self.config.inbox!r})"

    def __enter__(self) -> SftpSource:
        self._retrying(self._ensure_connected, "connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection -------------------------------------------------------------------------

    def _key(self) -> paramiko.PKey | None:
        c = self.config
        if self._pkey is None and (c.private_key is not None or c.private_key_path is not None):
            self._pkey = load_private_key(
                c.private_key.get_secret_value() if c.private_key else None,
                c.private_key_path,
                c.private_key_passphrase.get_secret_value() if c.private_key_passphrase else None,
            )
        return self._pkey

    def _ensure_connected(self) -> paramiko.SFTPClient:
        if self._sftp is not None and self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._sftp
            self.close()
        c = self.config
        entries = load_known_hosts(c.known_hosts)
        pkey = self._key()
        client = paramiko.SSHClient()
        for entry in entries:
            for name in entry.hostnames:
                client.get_host_keys().add(name, entry.key.get_name(), entry.key)
        client.set_missing_host_key_policy(_PinnedHostKeys(c))
        budget = c.total_timeout if self._progress_at is None else max(
            self._progress_at + c.total_timeout - time.monotonic(), 0.001)
        phase = "connect"
        sub: _Watchdog | None = None
        try:
            with _Watchdog(client, budget) as total:
                try:
                    client.connect(
                        c.host, port=c.port, username=c.username,
                        password=c.password.get_secret_value() if c.password else None,
                        pkey=pkey,
                        timeout=c.connect_timeout, banner_timeout=c.banner_timeout,
                        auth_timeout=c.auth_timeout, channel_timeout=c.sftp_timeout,
                        allow_agent=False, look_for_keys=False,
                        disabled_algorithms=c.disabled_algorithms,
                    )
                    phase = "SFTP subsystem start"
                    sub = _Watchdog(client, c.sftp_timeout)
                    with sub:
                        transport = client.get_transport()
                        assert transport is not None
                        chan = transport.open_session(timeout=c.sftp_timeout)
                        chan.settimeout(c.sftp_timeout)
                        chan.invoke_subsystem("sftp")
                        sftp = paramiko.SFTPClient(chan)  # the version exchange: bounded by the channel timeout
                    chan.settimeout(c.channel_timeout)
                except paramiko.sftp.SFTPError:
                    raise SftpNotStarted(f"the server {c.where} accepted the login but did not start SFTP (it answered "
                                         "with something else, e.g. a shell's message); ask the payer to enable the "
                                         "sftp subsystem for this user") from None
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    if total.fired:
                        raise _SftpTimeout(f"{phase} on {c.where} ran past the total budget of {c.total_timeout:g} s "
                                           "(ATR_SFTP_TOTAL_TIMEOUT)") from None
                    if (sub is not None and sub.fired) or (phase != "connect" and isinstance(exc, (socket.timeout, TimeoutError))):
                        raise _SftpTimeout(f"the SFTP subsystem on {c.where} did not start within {c.sftp_timeout:g} s "
                                           "(the server accepted the login but never answered as SFTP)") from None
                    if isinstance(exc, (socket.timeout, TimeoutError)):
                        raise _SftpTimeout(f"TCP connect to {c.host}:{c.port} timed out after {c.connect_timeout:g} s") from None
                    raise
        except SftpError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            # paramiko's message quotes both keys; name the host, the types and the offered fingerprint.
            raise HostKeyChanged(
                f"host key for {c.known_hosts_name} does not match known_hosts {c.known_hosts}: the server offers "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, known_hosts holds {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)}; refusing to connect. Verify the new key with the payer out of band "
                f"before updating known_hosts (docs/SFTP.md)"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            if "timeout" in str(exc).lower():
                raise AuthenticationTimeout(f"authentication on {c.where} timed out after {c.auth_timeout:g} s; "
                                          "not retried (a slow login may still count against a lockout)") from None
            raise AuthenticationFailed(
                f"authentication failed for {c.where} "
                f"({'private key' if pkey is not None else 'password'}); check ATR_SFTP_USER and its credentials. "
                f"Not retried: the payer may lock the account after repeated failures"
            ) from None
        except paramiko.IncompatiblePeer as exc:
            client.close()
            what = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else "no common algorithm"
            raise WeakAlgorithms(
                f"{c.where} offers no algorithm this client accepts ({what}). Weak ones are off by default "
                f"({', '.join(n for kind in ('ciphers', 'macs', 'kex') for n in WEAK_ALGORITHMS[kind])}); ask the payer "
                f"to enable modern ones, or allow the one it needs with ATR_SFTP_ALLOW_ALGORITHMS (docs/SFTP.md)"
            ) from None
        except BaseException:
            client.close()
            raise
        self._client, self._sftp = client, sftp
        self.connects += 1
        log.info("connected to %s", c.where)
        return sftp

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, EOFError, paramiko.SSHException):  # a dropped connection may fail to close
                pass  # nothing left to release: the client is closed next
        if self._client is not None:
            self._client.close()
        self._sftp = self._client = None

    def _retrying(self, op, what: str):
        """Run ``op`` with reconnects, exponential backoff and jitter on transient failures,
        within ``retries`` attempts and ``total_timeout`` seconds of connecting and waiting."""
        c = self.config
        outer = self._progress_at is None
        if outer:
            self._progress_at = time.monotonic()

        def attempt():
            try:
                return op()
            except BaseException as exc:
                if _is_transient(exc):
                    self.close()  # the next attempt reconnects
                    raise _Transient(describe(exc)) from None
                raise

        def before_sleep(state) -> None:
            # Only called when another attempt follows: "will retry" is never said of the last one.
            log.warning("%s on %s failed (%s); will retry (attempt %d of %d)", what, c.where,
                        state.outcome.exception(), state.attempt_number + 1, c.retries)

        def out_of_budget(state) -> bool:
            return self._progress_at is not None and time.monotonic() - self._progress_at >= c.total_timeout

        retrying = Retrying(
            # tenacity annotates `|` for stop_base only, but stop_any calls every stop as a plain
            # callable and its StopBaseT admits functions: a typing gap, not a misuse.
            stop=stop_after_attempt(c.retries) | out_of_budget,  # type: ignore[operator]
            wait=wait_exponential_jitter(multiplier=c.backoff_initial, max=c.backoff_max, jitter=c.backoff_initial),
            retry=retry_if_exception_type(_Transient),
            before_sleep=before_sleep,
            reraise=False,
        )
        try:
            return retrying(attempt)
        except RetryError as exc:
            n = exc.last_attempt.attempt_number
            raise SftpConnectionError(
                f"{what} on {c.where} failed after {n} attempt(s): {exc.last_attempt.exception()}"
            ) from None
        finally:
            if outer:
                self._progress_at = None

    def _path(self, folder: str, name: str) -> str:
        return posixpath.join(folder, name)

    def negotiated(self) -> tuple[str, str]:
        """(cipher, MAC) of the open connection, for sftp-check's report."""
        transport = self._client.get_transport() if self._client else None
        if transport is None:
            return ("-", "-")
        return (transport.local_cipher, transport.local_mac)

    # -- folders ----------------------------------------------------------------------------

    def check_folder(self, folder: str, what: str) -> None:
        """Raise ``RemoteFolderMissing`` unless ``folder`` is a folder on the server."""

        def op() -> None:
            sftp = self._ensure_connected()
            try:
                attrs = sftp.stat(folder)
            except FileNotFoundError:
                raise RemoteFolderMissing(f"the remote {what} folder {folder!r} does not exist on {self.config.where}") from None
            except PermissionError:
                raise RemoteFolderMissing(f"the remote {what} folder {folder!r} on {self.config.where} is not accessible "
                                          "(permission denied)") from None
            if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
                raise RemoteFolderMissing(f"the remote {what} path {folder!r} on {self.config.where} is not a folder")

        self._retrying(op, f"check of the {what} folder")

    def make_folder(self, folder: str, *, parent_what: str) -> None:
        """Make ``folder`` (one level, owner-only) when missing; its parent must exist
        (``RemoteFolderMissing`` naming it as the ``parent_what`` folder otherwise)."""

        def op() -> None:
            sftp = self._ensure_connected()
            try:
                sftp.stat(folder)
                return
            except FileNotFoundError:
                pass
            try:
                sftp.mkdir(folder, mode=0o700)
            except OSError:
                try:  # made meanwhile by an overlapping run
                    sftp.stat(folder)
                    return
                except FileNotFoundError:
                    pass
                parent = posixpath.dirname(folder.rstrip("/")) or "."
                self.check_folder(parent, parent_what)  # raises when the parent is what is missing
                raise RemoteFolderMissing(f"cannot make the remote folder {folder!r} on {self.config.where}") from None

        self._retrying(op, f"mkdir of {printable(folder)}")

    def check_folders(self, outbox: str | None = None) -> None:
        """The inbox, the archive (when archiving) and the outbox (when given) all exist."""
        self.check_folder(self.config.inbox, "inbox")
        if self.config.after_landing == "archive" and self.config.archive:
            self.check_folder(self.config.archive, "archive")
        if outbox:
            self.check_folder(outbox, "outbox")

    # -- operations -------------------------------------------------------------------------

    def _read_dir(self, sftp: paramiko.SFTPClient, folder: str) -> list[tuple[bytes, SFTPAttributes]]:
        """(raw name, attributes) of every entry: paramiko's listdir_attr decodes names as strict
        UTF-8, so one payer file with a Latin-1 name would fail the whole listing."""
        try:
            _, msg = sftp._request(CMD_OPENDIR, folder)
        except FileNotFoundError:
            raise RemoteFolderMissing(f"the remote inbox folder {folder!r} does not exist on {self.config.where}") from None
        except PermissionError:
            raise RemoteFolderMissing(f"the remote inbox folder {folder!r} on {self.config.where} cannot be listed "
                                      "(permission denied)") from None
        handle = msg.get_binary()
        out: list[tuple[bytes, SFTPAttributes]] = []
        try:
            while True:
                try:
                    _, msg = sftp._request(CMD_READDIR, handle)
                except EOFError:  # SSH_FX_EOF: the end of the folder
                    break
                for _ in range(msg.get_int()):
                    raw = msg.get_string()
                    msg.get_string()  # longname
                    out.append((raw, SFTPAttributes._from_msg(msg)))
        finally:
            sftp._request(CMD_CLOSE, handle)
        return out

    def scan_inbox(self) -> RemoteListing:
        """Every inbox entry judged: regular files to consider, and what is skipped and why.

        Folders, hidden and in-flight names are left out silently (they are normal); symlinks
        and other non-regular entries, names that are not UTF-8 or hold control characters or
        path separators are reported as skipped.
        """
        suffix = self.config.done_suffix

        def op() -> RemoteListing:
            listing = RemoteListing()
            for raw, attrs in self._read_dir(self._ensure_connected(), self.config.inbox):
                try:
                    name = raw.decode("utf-8")
                except UnicodeDecodeError:
                    listing.skipped.append(SkippedEntry(printable(raw.decode("utf-8", "backslashreplace")),
                                                        "the name is not UTF-8; ask the payer to rename it"))
                    continue
                mode = attrs.st_mode or 0
                if name in (".", "..") or stat.S_ISDIR(mode) or is_in_flight(name):
                    continue
                if suffix and name.endswith(suffix):
                    if stat.S_ISREG(mode):
                        listing.markers.add(name)
                    continue
                if stat.S_ISLNK(mode):
                    listing.skipped.append(SkippedEntry(printable(name), "a symbolic link; only regular files are fetched"))
                    continue
                if not stat.S_ISREG(mode):
                    listing.skipped.append(SkippedEntry(printable(name), "not a regular file; only regular files are fetched"))
                    continue
                try:
                    check_name(name)
                except FileRefused as exc:
                    listing.skipped.append(SkippedEntry(printable(name), exc.reason))
                    continue
                listing.files.append(RemoteFile(name, int(attrs.st_size or 0), int(attrs.st_mtime or 0)))
            listing.files.sort()
            listing.skipped.sort(key=lambda s: s.name)
            return listing

        return self._retrying(op, "listing")

    def list_inbox(self) -> list[RemoteFile]:
        """Regular files in the inbox, sorted by name (see ``scan_inbox`` for what is left out)."""
        return self.scan_inbox().files

    def _lstat(self, sftp: paramiko.SFTPClient, name: str) -> SFTPAttributes:
        remote = self._path(self.config.inbox, name)
        try:
            attrs = sftp.lstat(remote)
        except FileNotFoundError:
            raise RemoteFileMissing(f"{printable(name)} is no longer in {self.config.inbox!r} on {self.config.where} "
                                    "(moved or deleted after listing); nothing landed") from None
        except PermissionError:
            raise RemoteFileRefused(f"{printable(name)} on {self.config.where} cannot be read (permission denied)") from None
        mode = attrs.st_mode or 0
        if not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise RemoteFileRefused(f"{printable(name)} on {self.config.where} is {kind}; only regular files are fetched")
        return attrs

    def _download(self, sftp: paramiko.SFTPClient, name: str, first: SFTPAttributes,
                  digest: hashlib._Hash) -> Iterator[bytes]:
        remote = self._path(self.config.inbox, name)
        size, mtime = int(first.st_size or 0), int(first.st_mtime or 0)
        try:
            fh = sftp.open(remote, "rb")
        except FileNotFoundError:
            raise RemoteFileMissing(f"{printable(name)} vanished from {self.config.where} before download; nothing landed") from None
        except PermissionError:
            raise RemoteFileRefused(f"{printable(name)} on {self.config.where} cannot be read (permission denied)") from None
        with fh:
            # The name may have been swapped for a link between lstat and open: the open handle's
            # own attributes must be those of the file judged.
            opened = fh.stat()
            if not stat.S_ISREG(opened.st_mode or 0) or (int(opened.st_size or 0), int(opened.st_mtime or 0)) != (size, mtime):
                raise RemoteFileChanged(f"{printable(name)} on {self.config.where} changed between listing and opening; "
                                        "nothing landed")
            # Pipelined reads: without prefetch paramiko waits one round trip per 32 KiB block.
            _quiet_prefetch(fh)
            fh.prefetch(size, max_concurrent_requests=64)
            got = 0
            while chunk := fh.read(self.config.chunk_size):
                got += len(chunk)
                digest.update(chunk)
                self._progress_at = time.monotonic()
                yield chunk
        if got != size:
            raise RemoteFileChanged(f"{printable(name)} on {self.config.where} changed size during download "
                                    f"({size} bytes listed, {got} read); it is still being written; nothing landed")
        # Raised inside the stream, before land_stream commits: a file written to while we read it
        # (same size, new mtime; or grown past what we read) never lands, and is not archived.
        after = self._lstat(sftp, name)
        if (int(after.st_size or 0), int(after.st_mtime or 0)) != (size, mtime):
            raise RemoteFileChanged(f"{printable(name)} on {self.config.where} was written to during download "
                                    f"(size {size} -> {after.st_size}); it is still being written; nothing landed")

    def fetch(self, name: str, *, spec: MappingSpec, landing_dir: Path, ledger: Ledger,
              expected: RemoteFile | None = None) -> LandingOutcome:
        """Download ``name`` from the inbox into landing; then archive/delete it if configured."""
        return self.fetch_with_sha(name, spec=spec, landing_dir=landing_dir, ledger=ledger, expected=expected)[0]

    def fetch_with_sha(self, name: str, *, spec: MappingSpec, landing_dir: Path, ledger: Ledger,
                       expected: RemoteFile | None = None, after: bool = True) -> tuple[LandingOutcome, str]:
        """``fetch``, also returning the sha256 of the downloaded bytes (duplicates included).

        ``expected``: the size and mtime the file had when it was judged complete (the sensor's
        tags, the pull's listing); a file that differs now is still being written. ``after``:
        archive/delete it now (the pull does that step itself, to report it separately).
        """
        check_name(name)
        c = self.config

        def op() -> tuple[LandingOutcome, str]:
            sftp = self._ensure_connected()
            first = self._lstat(sftp, name)
            now = (int(first.st_size or 0), int(first.st_mtime or 0))
            if expected is not None and now != (expected.size, expected.mtime):
                raise RemoteFileChanged(f"{printable(name)} on {c.where} changed since it was judged complete (size "
                                        f"{expected.size} -> {now[0]}); it is still being written; nothing landed")
            if c.done_suffix:
                try:
                    sftp.stat(self._path(c.inbox, name + c.done_suffix))
                except FileNotFoundError:
                    raise RemoteFileNotReady(f"{printable(name)} has no done marker {printable(name + c.done_suffix)} "
                                             f"on {c.where} yet; not fetched") from None
            digest = hashlib.sha256()
            try:
                outcome = land_stream(self._download(sftp, name, first, digest), original_name=name,
                                      spec=spec, landing_dir=landing_dir, ledger=ledger)
            except FileNotFoundError:
                raise RemoteFileMissing(f"{printable(name)} vanished from {c.where} during download; nothing landed") from None
            except PermissionError:
                raise RemoteFileRefused(f"{printable(name)} on {c.where} cannot be read (permission denied)") from None
            ledger.remember_remote(spec.source_id, name, now[0], now[1], digest.hexdigest())
            self._landed_as = RemoteFile(name, now[0], now[1])
            return outcome, digest.hexdigest()

        outcome, sha = self._retrying(op, f"download of {printable(name)}")
        if after:
            self.after_landing(name, sha, landed_as=self._landed_as)
        return outcome, sha

    def after_landing(self, name: str, sha: str, landed_as: RemoteFile | None = None) -> AfterLandingOutcome:
        """Archive or delete a file whose bytes are safely in landing (and its done marker).

        ``landed_as``: the size and mtime the landed bytes had; a file that differs now was
        written again after landing and stays in the inbox (``RemoteFileChanged``).
        """
        c = self.config
        if c.after_landing == "leave":
            return AfterLandingOutcome("left")
        remote = self._path(c.inbox, name)
        if landed_as is not None:
            def unchanged() -> bool:
                try:
                    attrs = self._ensure_connected().lstat(remote)
                except FileNotFoundError:
                    return True  # gone: the rename/delete below reports it
                return (int(attrs.st_size or 0), int(attrs.st_mtime or 0)) == (landed_as.size, landed_as.mtime)

            if not self._retrying(unchanged, f"check of {printable(name)}"):
                raise RemoteFileChanged(f"{printable(name)} on {c.where} was written again after it landed; left in "
                                        "the inbox (the next poll lands the new version)")
        marker = self._path(c.inbox, name + c.done_suffix) if c.done_suffix else None
        if c.after_landing == "delete":
            def delete() -> AfterLandingOutcome:
                sftp = self._ensure_connected()
                try:
                    sftp.remove(remote)
                except FileNotFoundError:
                    return AfterLandingOutcome("gone")  # another pull deleted it: the bytes are landed
                if marker:
                    try:
                        sftp.remove(marker)
                    except FileNotFoundError:
                        pass
                return AfterLandingOutcome("deleted")

            result = self._retrying(delete, f"delete of {printable(name)}")
            log.info("deleted %s from the remote inbox after landing", printable(name))
            return result
        # A name no other pull can produce: overlapping pulls never overwrite (or delete) each
        # other's archived copy, and SFTP's plain rename never replaces an existing file.
        stamp = f"{sha[:12]}_{datetime.now(UTC):%Y%m%dT%H%M%SZ}_{secrets.token_hex(3)}"
        target = self._path(c.archive or "", short_name(stamp, name))

        def archive() -> AfterLandingOutcome:
            sftp = self._ensure_connected()
            try:
                sftp.rename(remote, target)
            except FileNotFoundError:
                self.check_folder(c.archive or "", "archive")  # raises when the archive is what is missing
                return AfterLandingOutcome("gone")  # another pull archived it first
            if marker:
                try:
                    sftp.rename(marker, target + c.done_suffix)  # type: ignore[operator]
                except FileNotFoundError:
                    pass
            return AfterLandingOutcome("archived", target)

        result = self._retrying(archive, f"archive of {printable(name)}")
        log.info("archived %s on the remote after landing", printable(name))
        return result

    def upload_rejects(self, local_path: Path, remote_outbox: str) -> str:
        """Upload a rejects file to the payer's outbox; returns the remote path.

        Written under a hidden temporary name unique to this upload, then renamed, so the payer
        never picks up half a file and two uploads never write into each other's temporary file.
        """
        local_path = Path(local_path)
        check_name(local_path.name)
        final = self._path(remote_outbox, local_path.name)
        tmp = self._path(remote_outbox, f".{secrets.token_hex(4)}.part")

        def op() -> str:
            sftp = self._ensure_connected()
            try:
                with open(local_path, "rb") as fh:
                    sftp.putfo(fh, tmp, file_size=local_path.stat().st_size, confirm=True)
            except FileNotFoundError:
                raise RemoteFolderMissing(f"the remote outbox folder {remote_outbox!r} does not exist on "
                                          f"{self.config.where}") from None
            try:
                sftp.posix_rename(tmp, final)
            except OSError:
                # Servers without the posix-rename extension: plain rename refuses to overwrite.
                # Only our own earlier rejects file can be in the way.
                try:
                    sftp.remove(final)
                except FileNotFoundError:
                    pass
                sftp.rename(tmp, final)
            return final

        result = self._retrying(op, f"upload of {local_path.name}")
        log.info("uploaded %s to the remote outbox", local_path.name)
        return result


def _quiet_prefetch(fh: paramiko.SFTPFile) -> None:
    """Keep paramiko's prefetch thread from dying loudly when the connection drops.

    The reading side sees the same drop and raises it (and we retry); the thread's own copy of
    the error would only reach ``threading.excepthook`` as noise.
    """
    run = fh._prefetch_thread

    def quiet(chunks, max_concurrent_requests):
        try:
            run(chunks, max_concurrent_requests)
        except (OSError, EOFError, paramiko.SSHException):
            pass

    fh._prefetch_thread = quiet


# -- configuration from the environment ---------------------------------------------------------

# Every ATR_SFTP_* connection variable and the SftpConfig field it fills (docs/SFTP.md lists them).
ENV_VARS: dict[str, str] = {
    "ATR_SFTP_HOST": "host",
    "ATR_SFTP_PORT": "port",
    "ATR_SFTP_USER": "username",
    "ATR_SFTP_PASSWORD": "password",
    "ATR_SFTP_KEY": "private_key",  # key text only (-----BEGIN ...)
    "ATR_SFTP_KEY_FILE": "private_key_path",
    "ATR_SFTP_KEY_PASSPHRASE": "private_key_passphrase",
    "ATR_SFTP_KNOWN_HOSTS": "known_hosts",
    "ATR_SFTP_INBOX": "inbox",
    "ATR_SFTP_ARCHIVE": "archive",
    "ATR_SFTP_AFTER_LANDING": "after_landing",
    "ATR_SFTP_DONE_SUFFIX": "done_suffix",
    "ATR_SFTP_TIMEOUT": "connect_timeout",  # also banner, auth and SFTP-start timeouts
    "ATR_SFTP_CHANNEL_TIMEOUT": "channel_timeout",
    "ATR_SFTP_TOTAL_TIMEOUT": "total_timeout",
    "ATR_SFTP_RETRIES": "retries",
    "ATR_SFTP_ALLOW_ALGORITHMS": "allow_algorithms",
}
SECRET_FIELDS = ("password", "private_key", "private_key_passphrase")
# Not connection settings: where rejects go back to, and how the sensor and pull judge stability.
ENV_OUTBOX = "ATR_SFTP_OUTBOX"
ENV_POLL_SECONDS = "ATR_SFTP_POLL_SECONDS"
ENV_STABLE_POLLS = "ATR_SFTP_STABLE_POLLS"
ENV_QUIET_SECONDS = "ATR_SFTP_QUIET_SECONDS"
ENV_DONE_SUFFIX = "ATR_SFTP_DONE_SUFFIX"


def config_from_values(values: dict[str, str | None]) -> SftpConfig:
    """An SftpConfig from field-name -> text values (empty values are unset).

    ``connect_timeout`` sets the banner, auth and SFTP-start timeouts too;
    ``allow_algorithms`` is a comma-separated list.
    """
    v: dict[str, object] = {k: val for k, val in values.items() if val not in (None, "")}
    if "connect_timeout" in v:
        for other in ("banner_timeout", "auth_timeout", "sftp_timeout"):
            v.setdefault(other, v["connect_timeout"])
    if isinstance(v.get("allow_algorithms"), str):
        v["allow_algorithms"] = tuple(a.strip() for a in str(v["allow_algorithms"]).split(",") if a.strip())
    try:
        return SftpConfig.model_validate(v)
    except ValueError as exc:
        # pydantic quotes input values; a secret must not be echoed back.
        errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
        fields = sorted({".".join(str(p) for p in e["loc"]) or "config" for e in errors})
        msgs = sorted({e["msg"].removeprefix("Value error, ") for e in errors})
        env_of = {name: var for var, name in ENV_VARS.items()}
        named = [f"{f} ({env_of[f]})" if f in env_of else f for f in fields]
        raise SftpSettingsError(f"invalid SFTP settings {', '.join(named)}: {'; '.join(msgs)}") from None


def config_from_env(environ: dict[str, str] | None = None) -> SftpConfig:
    """SftpConfig from the ATR_SFTP_* environment variables."""
    env = os.environ if environ is None else environ
    return config_from_values({field: env.get(var) for var, field in ENV_VARS.items()})


def fetch_one(config: SftpConfig, name: str, mappings: dict[str, MappingSpec], *, landing_dir: Path,
              expected: RemoteFile | None = None) -> LandingOutcome:
    """Open a connection, land one remote file by the mapping its name matches, close."""
    spec = match_mapping(name, mappings)
    if spec is None:
        raise FileRefused(name, "file_name", "no mapping (or more than one) matches this file name")
    with SftpSource(config) as src:
        return src.fetch(name, spec=spec, landing_dir=landing_dir, ledger=Ledger.for_landing(landing_dir),
                         expected=expected)


def fetch_for_run(remote_name: str, *, spec: MappingSpec, settings: Settings, config: SftpConfig | None = None,
                  expected: RemoteFile | None = None) -> LandedFile:
    """Land the remote file a sensor-launched run names (settings from ATR_SFTP_* unless given).

    Re-running the same run is safe: the same bytes under the same name come back as the earlier
    landing. The same bytes under another name are refused as a duplicate delivery.
    """
    ledger = Ledger.for_landing(settings.landing_dir)
    with SftpSource(config or config_from_env()) as src:
        outcome, sha = src.fetch_with_sha(remote_name, spec=spec, landing_dir=settings.landing_dir, ledger=ledger,
                                          expected=expected)
    if outcome.file is not None:
        return outcome.file
    if outcome.duplicate_of != remote_name:
        raise FileRefused(remote_name, "duplicate_delivery", f"same bytes as {outcome.duplicate_of}, which was already delivered")
    entry = ledger.get(sha)
    if entry is None:  # the ledger said duplicate, so the entry exists
        raise FileRefused(remote_name, "ledger", "landing ledger lost the earlier delivery")
    return LandedFile(entry.path, entry.original_name, entry.source_id, entry.month, entry.sha256, entry.size,
                      entry.received_at, entry.supersedes)
