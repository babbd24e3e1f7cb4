"""A payer's SFTP inbox over paramiko: list, fetch into landing, archive, upload rejects.

In:  an ``SftpConfig`` (host, port, user, password or private key, a known_hosts file that
     must already hold the server's key, remote folders, timeouts, retries).
Out: ``list_inbox()`` -> ``RemoteFile`` list; ``fetch(name, ...)`` -> ``LandingOutcome`` (the
     download streams straight into ``land_stream``); ``upload_rejects`` puts a file into the
     payer's outbox under a temporary name and renames it when complete.
Refused: unknown hosts and changed host keys (``HostKeyUnknown`` / ``HostKeyChanged``, never
     trust-on-first-use), failed logins (``AuthenticationFailed``), files that vanish or change
     during download (``RemoteFileMissing`` / ``RemoteFileChanged``).

One connection per ``with SftpSource(cfg) as src:`` block, not per file. Dropped connections
are retried with exponential backoff and jitter, reconnecting each time; an interrupted
download never leaves a partial file in landing. The remote file is archived or deleted only
after it is safely landed. Passwords and keys never appear in repr, logs or exception text:
paramiko's own exceptions are replaced (``from None``), since some carry key material.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from atr_pipeline.errors import AtrError, FileRefused
from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.config import Settings
from atr_pipeline.sources.landing import (
    CHUNK_SIZE,
    LandedFile,
    LandingOutcome,
    Ledger,
    check_name,
    is_in_flight,
    land_stream,
    match_mapping,
)
from atr_pipeline.sources.polling import RemoteFile

log = logging.getLogger(__name__)

AfterLanding = Literal["leave", "archive", "delete"]


class SftpError(AtrError):
    """An SFTP problem the operator can act on. Messages hold host, port, user and file names only."""


class HostKeyUnknown(SftpError):
    pass


class HostKeyChanged(SftpError):
    pass


class AuthenticationFailed(SftpError):
    pass


class KeyLoadError(SftpError):
    pass


class SftpConnectionError(SftpError):
    """The connection failed or dropped, and stayed down through every retry."""


class RemoteFileMissing(SftpError):
    pass


class RemoteFileChanged(SftpError):
    pass


class _Transient(Exception):
    """Internal: a dropped/failed connection worth a reconnect and another try."""


class SftpConfig(BaseModel):
    """Connection settings. ``password``/``private_key`` are SecretStr: repr shows ``**********``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    password: SecretStr | None = None
    private_key: SecretStr | None = None  # OpenSSH or PEM private key text
    private_key_path: Path | None = None
    private_key_passphrase: SecretStr | None = None
    known_hosts: Path  # required: host keys are pinned, never learned on first use
    inbox: str = "."
    archive: str | None = None
    after_landing: AfterLanding = "leave"
    connect_timeout: float = Field(default=15.0, gt=0)
    banner_timeout: float = Field(default=15.0, gt=0)
    auth_timeout: float = Field(default=15.0, gt=0)
    channel_timeout: float = Field(default=60.0, gt=0)  # also the idle timeout of every SFTP read
    retries: int = Field(default=4, ge=1)  # attempts per operation, the first included
    backoff_initial: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    chunk_size: int = Field(default=CHUNK_SIZE, ge=4096)

    @model_validator(mode="after")
    def _check(self) -> SftpConfig:
        if self.password is None and self.private_key is None and self.private_key_path is None:
            raise ValueError("give a password, a private_key or a private_key_path")
        if self.private_key is not None and self.private_key_path is not None:
            raise ValueError("give private_key (text) or private_key_path, not both")
        if self.after_landing == "archive" and not self.archive:
            raise ValueError("after_landing=archive needs an archive folder")
        return self

    @property
    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def load_private_key(text: str | None = None, path: Path | None = None, passphrase: str | None = None) -> paramiko.PKey:
    """An Ed25519, ECDSA or RSA key from OpenSSH or PEM text or a file. Errors never quote the key."""
    try:
        data = text.encode() if text is not None else Path(path).read_bytes()  # type: ignore[arg-type]
    except OSError as exc:
        raise KeyLoadError(f"cannot read private key file {path}: {exc.strerror}") from None
    pw = passphrase.encode() if passphrase else None
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=pw)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=pw)
    except TypeError:
        raise KeyLoadError("the private key is encrypted: give its passphrase (ATR_SFTP_KEY_PASSPHRASE)") from None
    except (ValueError, paramiko.SSHException):
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


class _PinnedHostKeys(paramiko.MissingHostKeyPolicy):
    """RejectPolicy with messages an operator can act on; tells a new key type from a new host."""

    def __init__(self, cfg: SftpConfig):
        self.cfg = cfg

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        known = client.get_host_keys().lookup(hostname)
        if known:
            raise HostKeyChanged(
                f"host key for {hostname} changed (server offers a {key.get_name()} key; known_hosts "
                f"{self.cfg.known_hosts} holds {', '.join(sorted(known.keys()))}); refusing to connect. Verify the "
                f"new key with the payer out of band before updating known_hosts (docs/SFTP.md)"
            )
        raise HostKeyUnknown(
            f"host {hostname} is not in known_hosts {self.cfg.known_hosts}; refusing to connect. Fetch its key "
            f"with ssh-keyscan and verify the fingerprint with the payer (docs/SFTP.md)"
        )


# OSErrors that say something about a file, not the connection: retrying will not help.
_FILE_ERRORS = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


def _is_transient(exc: BaseException) -> bool:
    """Dropped or refused connections and timeouts; not auth, host keys, or file problems."""
    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException, SftpError, _FILE_ERRORS)):
        return False
    # paramiko reports a dropped server as SSHException('Server connection dropped') or EOFError;
    # refused/reset/timed-out sockets are OSErrors (NoValidConnectionsError, ConnectionError, timeout).
    return isinstance(exc, (paramiko.SSHException, EOFError, OSError))


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

    fh._prefetch_thread = quiet  # type: ignore[method-assign]


class SftpSource:
    """Context manager over one SSH connection and SFTP session."""

    def __init__(self, config: SftpConfig):
        self.config = config
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._pkey: paramiko.PKey | None = None
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
        if not c.known_hosts.is_file():
            raise HostKeyUnknown(f"known_hosts file {c.known_hosts} does not exist; host keys must be pinned (docs/SFTP.md)")
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(c.known_hosts))
        except (OSError, paramiko.SSHException):
            raise HostKeyUnknown(f"known_hosts file {c.known_hosts} cannot be read") from None
        client.set_missing_host_key_policy(_PinnedHostKeys(c))
        try:
            client.connect(
                c.host, port=c.port, username=c.username,
                password=c.password.get_secret_value() if c.password else None,
                pkey=self._key(),
                timeout=c.connect_timeout, banner_timeout=c.banner_timeout,
                auth_timeout=c.auth_timeout, channel_timeout=c.channel_timeout,
                allow_agent=False, look_for_keys=False,
            )
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(c.channel_timeout)
        except SftpError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            # paramiko's message quotes both keys; name the host and the key types only.
            raise HostKeyChanged(
                f"host key for {c.known_hosts_name} does not match known_hosts {c.known_hosts} (server offers a "
                f"{exc.key.get_name()} key, known_hosts holds {exc.expected_key.get_name()}); refusing to connect. "
                f"Verify the new key with the payer out of band before updating known_hosts (docs/SFTP.md)"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise AuthenticationFailed(
                f"authentication failed for {c.where} "
                f"({'private key' if self._pkey is not None else 'password'}); check ATR_SFTP_USER and its credentials"
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
            except Exception:  # a dropped connection may fail to close; nothing left to release
                pass
        if self._client is not None:
            self._client.close()
        self._sftp = self._client = None

    def _retrying(self, op, what: str):
        """Run ``op`` with reconnects, exponential backoff and jitter on transient failures."""
        c = self.config

        def attempt():
            try:
                return op()
            except BaseException as exc:
                if _is_transient(exc):
                    self.close()  # the next attempt reconnects
                    log.warning("%s on %s failed (%s); will retry", what, c.where, type(exc).__name__)
                    raise _Transient(type(exc).__name__) from None
                raise

        retrying = Retrying(
            stop=stop_after_attempt(c.retries),
            wait=wait_exponential_jitter(multiplier=c.backoff_initial, max=c.backoff_max, jitter=c.backoff_initial),
            retry=retry_if_exception_type(_Transient),
            reraise=False,
        )
        try:
            return retrying(attempt)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise SftpConnectionError(
                f"{what} on {c.where} failed after {c.retries} attempt(s): {cause}"
            ) from None

    def _path(self, folder: str, name: str) -> str:
        return posixpath.join(folder, name)

    # -- operations -------------------------------------------------------------------------

    def list_inbox(self) -> list[RemoteFile]:
        """Regular files in the inbox, sorted by name; hidden and in-flight names are left out."""

        def op() -> list[RemoteFile]:
            sftp = self._ensure_connected()
            try:
                attrs = sftp.listdir_attr(self.config.inbox)
            except FileNotFoundError:
                raise SftpError(f"remote inbox {self.config.inbox!r} does not exist on {self.config.where}") from None
            return sorted(
                RemoteFile(a.filename, int(a.st_size or 0), int(a.st_mtime or 0))
                for a in attrs
                if a.st_mode is not None and stat.S_ISREG(a.st_mode) and not is_in_flight(a.filename)
            )

        return self._retrying(op, "listing")

    def _download(self, name: str, size: int, digest: hashlib._Hash) -> Iterator[bytes]:
        sftp = self._ensure_connected()
        remote = self._path(self.config.inbox, name)
        with sftp.open(remote, "rb") as fh:
            # Pipelined reads: without prefetch paramiko waits one round trip per 32 KiB block.
            _quiet_prefetch(fh)
            fh.prefetch(size, max_concurrent_requests=64)
            got = 0
            while chunk := fh.read(self.config.chunk_size):
                got += len(chunk)
                digest.update(chunk)
                yield chunk
        if got != size:
            # Raised inside the stream: land_stream drops its temporary file.
            raise RemoteFileChanged(f"{name} on {self.config.where} changed size during download "
                                    f"({size} bytes listed, {got} read); it is still being written")

    def fetch(self, name: str, *, spec: MappingSpec, landing_dir: Path, ledger: Ledger) -> LandingOutcome:
        """Download ``name`` from the inbox into landing; then archive/delete it if configured."""
        return self.fetch_with_sha(name, spec=spec, landing_dir=landing_dir, ledger=ledger)[0]

    def fetch_with_sha(self, name: str, *, spec: MappingSpec, landing_dir: Path, ledger: Ledger) -> tuple[LandingOutcome, str]:
        """``fetch``, also returning the sha256 of the downloaded bytes (duplicates included)."""
        check_name(name)
        remote = self._path(self.config.inbox, name)

        def op() -> tuple[LandingOutcome, str]:
            sftp = self._ensure_connected()
            try:
                attrs = sftp.stat(remote)
            except FileNotFoundError:
                raise RemoteFileMissing(f"{name} is no longer in {self.config.inbox!r} on {self.config.where} "
                                        f"(moved or deleted after listing); nothing landed") from None
            digest = hashlib.sha256()
            try:
                outcome = land_stream(self._download(name, int(attrs.st_size or 0), digest), original_name=name,
                                      spec=spec, landing_dir=landing_dir, ledger=ledger)
                return outcome, digest.hexdigest()
            except FileNotFoundError:
                raise RemoteFileMissing(f"{name} vanished from {self.config.where} during download; nothing landed") from None

        outcome, sha = self._retrying(op, f"download of {name}")
        self._after_landing(name, sha)
        return outcome, sha

    def _after_landing(self, name: str, sha: str) -> None:
        c = self.config
        if c.after_landing == "leave":
            return
        remote = self._path(c.inbox, name)
        if c.after_landing == "delete":
            self._retrying(lambda: self._ensure_connected().remove(remote), f"delete of {name}")
            log.info("deleted %s from the remote inbox after landing", name)
            return
        # The sha prefix keeps two deliveries under one name apart in the archive (duplicates too).
        target = self._path(c.archive or "", f"{sha[:12]}_{name}")
        self._retrying(lambda: self._rename(remote, target), f"archive of {name}")
        log.info("archived %s on the remote after landing", name)

    def _rename(self, src: str, dst: str) -> None:
        sftp = self._ensure_connected()
        try:
            sftp.posix_rename(src, dst)
        except OSError:
            # Servers without the posix-rename extension: plain rename refuses to overwrite.
            try:
                sftp.remove(dst)
            except FileNotFoundError:
                pass
            sftp.rename(src, dst)

    def upload_rejects(self, local_path: Path, remote_outbox: str) -> str:
        """Upload a rejects file to the payer's outbox; returns the remote path.

        Written as ``.<name>.part`` then renamed, so the payer never picks up half a file.
        """
        local_path = Path(local_path)
        check_name(local_path.name)
        final = self._path(remote_outbox, local_path.name)
        tmp = self._path(remote_outbox, f".{local_path.name}.part")

        def op() -> str:
            sftp = self._ensure_connected()
            with open(local_path, "rb") as fh:
                sftp.putfo(fh, tmp, file_size=local_path.stat().st_size, confirm=True)
            self._rename(tmp, final)
            return final

        result = self._retrying(op, f"upload of {local_path.name}")
        log.info("uploaded %s to the remote outbox", local_path.name)
        return result


# -- configuration from the environment ---------------------------------------------------------

# Every ATR_SFTP_* variable and the SftpConfig field it fills (docs/SFTP.md lists them).
ENV_VARS: dict[str, str] = {
    "ATR_SFTP_HOST": "host",
    "ATR_SFTP_PORT": "port",
    "ATR_SFTP_USER": "username",
    "ATR_SFTP_PASSWORD": "password",
    "ATR_SFTP_KEY": "private_key",  # key text (-----BEGIN ...) or a path to the key file
    "ATR_SFTP_KEY_PASSPHRASE": "private_key_passphrase",
    "ATR_SFTP_KNOWN_HOSTS": "known_hosts",
    "ATR_SFTP_INBOX": "inbox",
    "ATR_SFTP_ARCHIVE": "archive",
    "ATR_SFTP_AFTER_LANDING": "after_landing",
    "ATR_SFTP_TIMEOUT": "connect_timeout",  # also banner and auth timeouts
    "ATR_SFTP_CHANNEL_TIMEOUT": "channel_timeout",
    "ATR_SFTP_RETRIES": "retries",
}
# Not connection settings: where rejects go back to, and how the sensor polls.
ENV_OUTBOX = "ATR_SFTP_OUTBOX"
ENV_POLL_SECONDS = "ATR_SFTP_POLL_SECONDS"
ENV_STABLE_POLLS = "ATR_SFTP_STABLE_POLLS"
ENV_DONE_SUFFIX = "ATR_SFTP_DONE_SUFFIX"


def config_from_values(values: dict[str, str | None]) -> SftpConfig:
    """An SftpConfig from field-name -> text values (empty values are unset).

    ``private_key`` may hold key text or a path; ``connect_timeout`` sets the banner and auth
    timeouts too.
    """
    v = {k: val for k, val in values.items() if val not in (None, "")}
    key = v.pop("private_key", None)
    if key is not None:
        if "-----BEGIN" in key:
            v["private_key"] = key
        else:
            v["private_key_path"] = key
    if "connect_timeout" in v:
        v.setdefault("banner_timeout", v["connect_timeout"])
        v.setdefault("auth_timeout", v["connect_timeout"])
    try:
        return SftpConfig.model_validate(v)
    except ValueError as exc:
        # pydantic quotes input values; a secret must not be echoed back.
        fields = sorted({".".join(str(p) for p in e["loc"]) or "config" for e in getattr(exc, "errors", lambda: [])()})
        msgs = sorted({e["msg"] for e in getattr(exc, "errors", lambda: [])()})
        env_of = {name: var for var, name in ENV_VARS.items()}
        named = [f"{f} ({env_of[f]})" if f in env_of else f for f in fields]
        raise SftpError(f"invalid SFTP settings {', '.join(named)}: {'; '.join(msgs)}") from None


def config_from_env(environ: dict[str, str] | None = None) -> SftpConfig:
    """SftpConfig from the ATR_SFTP_* environment variables."""
    env = os.environ if environ is None else environ
    return config_from_values({field: env.get(var) for var, field in ENV_VARS.items()})


def fetch_one(config: SftpConfig, name: str, mappings: dict[str, MappingSpec], *, landing_dir: Path) -> LandingOutcome:
    """Open a connection, land one remote file by the mapping its name matches, close."""
    spec = match_mapping(name, mappings)
    if spec is None:
        raise FileRefused(name, "file_name", "no mapping (or more than one) matches this file name")
    with SftpSource(config) as src:
        return src.fetch(name, spec=spec, landing_dir=landing_dir, ledger=Ledger.for_landing(landing_dir))


def fetch_for_run(remote_name: str, *, spec: MappingSpec, settings: Settings, config: SftpConfig | None = None) -> LandedFile:
    """Land the remote file a sensor-launched run names (settings from ATR_SFTP_* unless given).

    Re-running the same run is safe: the same bytes under the same name come back as the earlier
    landing. The same bytes under another name are refused as a duplicate delivery.
    """
    ledger = Ledger.for_landing(settings.landing_dir)
    with SftpSource(config or config_from_env()) as src:
        outcome, sha = src.fetch_with_sha(remote_name, spec=spec, landing_dir=settings.landing_dir, ledger=ledger)
    if outcome.file is not None:
        return outcome.file
    if outcome.duplicate_of != remote_name:
        raise FileRefused(remote_name, "duplicate_delivery", f"same bytes as {outcome.duplicate_of}, which was already delivered")
    entry = ledger.get(sha)
    if entry is None:  # the ledger said duplicate, so the entry exists
        raise FileRefused(remote_name, "ledger", "landing ledger lost the earlier delivery")
    return LandedFile(entry.path, entry.original_name, entry.source_id, entry.month, entry.sha256, entry.size,
                      entry.received_at, entry.supersedes)
