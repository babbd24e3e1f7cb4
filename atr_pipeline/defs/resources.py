"""Dagster resources: thin wrappers that hand the plain stage functions their settings.

Settings come in through ``dg.EnvVar`` (defs/build.py) so the UI shows which variable each one
is read from, and the values are read in the run, not frozen into the code location.
"""

from __future__ import annotations

import dagster as dg

from atr_pipeline.config import Settings, load_settings
from atr_pipeline.layouts.spec import MappingSpec, load_mapping
from atr_pipeline.private import protect_dagster_home


class AtrHome(dg.ConfigurableResource):
    """Where state lives (ATR_HOME), where deliveries arrive (ATR_INBOX) and the mappings folder.

    Empty values fall back to the environment, then to the embedded defaults, so the same
    definitions run locally, in tests and in production without code changes.
    """

    home: str = ""
    inbox: str = ""
    mappings_dir: str = ""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every run: what Dagster wrote under DAGSTER_HOME so far (run and event storage, compute
        # logs, step outputs) becomes owner-only, and this process creates owner-only files.
        protect_dagster_home(context.instance.root_directory if context.instance else None)

    def settings(self) -> Settings:
        return load_settings(self.home or None, inbox=self.inbox or None, mappings_dir=self.mappings_dir or None)

    def mapping(self, source_id: str) -> MappingSpec:
        return load_mapping(self.settings().mappings_dir / f"{source_id}.yaml")


# -- the payer's SFTP inbox --------------------------------------------------------------------


class SftpResource(dg.ConfigurableResource):
    """A payer SFTP inbox. Field meanings: ``sources.sftp.SftpConfig``; variables: docs/SFTP.md.

    Built by ``sftp_resource_from_env`` with every set ATR_SFTP_* variable as a ``dg.EnvVar``:
    Dagster then stores only the variable's name, so a password or key never reaches run
    config, the event log or the run database. The sensor, ``landed_file`` (SFTP runs) and
    ``validated_rows`` (rejects to ATR_SFTP_OUTBOX) connect with it; the CLI reads the same
    variables with ``sources.sftp.config_from_env``.

    host, username and known_hosts may be empty: every run requires this resource, and a run
    from the local inbox must not need SFTP settings. ``sftp_config`` refuses them empty,
    naming the variable (SftpSettingsError), when a connection is actually opened.
    """

    host: str = ""
    port: int = 22
    username: str = ""
    password: str | None = None
    private_key: str | None = None  # key text (-----BEGIN ...), never a path
    private_key_file: str | None = None
    private_key_passphrase: str | None = None
    known_hosts: str = ""
    inbox: str = "."
    archive: str | None = None
    after_landing: str = "leave"
    done_suffix: str | None = None
    connect_timeout: float = 15.0
    channel_timeout: float = 60.0
    total_timeout: float = 120.0
    retries: int = 4
    backoff_initial: float = 1.0
    allow_algorithms: str = ""  # comma-separated opt-ins (docs/SFTP.md, "Algorithms")

    def sftp_config(self, **overrides: object):
        from atr_pipeline.sources.sftp import config_from_values

        values = {
            "host": self.host, "port": str(self.port), "username": self.username,
            "password": self.password, "private_key": self.private_key, "private_key_path": self.private_key_file,
            "private_key_passphrase": self.private_key_passphrase, "known_hosts": self.known_hosts,
            "inbox": self.inbox, "archive": self.archive, "after_landing": self.after_landing,
            "done_suffix": self.done_suffix,
            "connect_timeout": str(self.connect_timeout), "channel_timeout": str(self.channel_timeout),
            "total_timeout": str(self.total_timeout), "retries": str(self.retries),
            "backoff_initial": str(self.backoff_initial), "allow_algorithms": self.allow_algorithms,
        }
        values.update({k: None if v is None else str(v) for k, v in overrides.items()})
        return config_from_values(values)

    def open(self, **overrides: object):
        """``with resource.open() as src:`` one connection for a step."""
        from atr_pipeline.sources.sftp import SftpSource

        return SftpSource(self.sftp_config(**overrides))

    def fetch_one(self, name: str, mappings: dict[str, MappingSpec], *, landing_dir, expected=None):
        from atr_pipeline.sources.sftp import fetch_one

        return fetch_one(self.sftp_config(), name, mappings, landing_dir=landing_dir, expected=expected)


# SftpResource field <- ATR_SFTP_* variable, where the names differ from sources.sftp.ENV_VARS.
_RESOURCE_FIELD = {"private_key_path": "private_key_file"}
_INT_FIELDS = {"port", "retries"}
_FLOAT_FIELDS = {"connect_timeout", "channel_timeout", "total_timeout"}


def sftp_resource_from_env(environ=None) -> SftpResource:
    """An SftpResource whose every set ATR_SFTP_* variable is a ``dg.EnvVar`` (read at run time)."""
    import os

    from atr_pipeline.sources.sftp import ENV_VARS

    env = os.environ if environ is None else environ
    kwargs: dict[str, object] = {}
    for var, name in ENV_VARS.items():
        if not env.get(var):
            continue
        fld = _RESOURCE_FIELD.get(name, name)
        if fld in _INT_FIELDS:
            kwargs[fld] = dg.EnvVar.int(var)
        elif fld in _FLOAT_FIELDS:
            kwargs[fld] = float(env[var])  # not secret; EnvVar has no float form
        else:
            kwargs[fld] = dg.EnvVar(var)
    return SftpResource(**kwargs)  # type: ignore[arg-type]


class FhirServer(dg.ConfigurableResource):
    """The FHIR server server_load PUTs into (ATR_FHIR_URL; ATR_FHIR_KIND and the token stay in the environment)."""

    url: str = ""
