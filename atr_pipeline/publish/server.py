"""How to talk to one FHIR server: ``ServerConfig`` and the presets per server kind.

In:  a base URL and, optionally, a server kind (``medplum``, ``generic``) whose preset fills
     bundle size, concurrency, mode, Group chunking and request-size limits.
Out: a validated, immutable ``ServerConfig`` the loader uses.
Refused: bundle sizes, concurrency or limits below 1; transaction bundles above 50 entries for
     Medplum (the server refuses them); a base URL with credentials in it; a kind that is not a
     preset (the error lists the valid ones).

Only kinds the test suite runs against a real server of that kind are presets: ``medplum`` (the
Medplum engine the suite starts) and ``generic`` (the same settings, no server-specific claims).
A ``hapi`` preset existed once; it was never run against a HAPI server, so it was removed.
``resolve_kind`` is the one place a kind name is turned into a preset, for the CLI and Dagster.
"""

from __future__ import annotations

import hashlib
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from atr_pipeline.errors import AtrError
from atr_pipeline.publish.auth import AuthKind

ServerKind = Literal["generic", "medplum"]
LoadMode = Literal["batch", "transaction"]


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter, bounded per request and for the whole load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=6, ge=1)  # per request, the first try included
    max_total_retry_seconds: float = Field(default=900.0, gt=0)  # all backoff sleeps of one load
    initial_backoff: float = Field(default=0.5, ge=0)
    max_backoff: float = Field(default=30.0, ge=0)
    max_retry_after: float = Field(default=120.0, ge=0)  # a server's Retry-After is honoured up to this
    # Fail fast: when no request has reached the server for this long (refused, reset, timed out,
    # DNS), the load stops with its checkpoint instead of spending the whole budget on a dead host.
    max_unreachable_seconds: float = Field(default=60.0, gt=0)


class Timeouts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    connect: float = Field(default=10.0, gt=0)
    read: float = Field(default=120.0, gt=0)
    write: float = Field(default=120.0, gt=0)
    pool: float = Field(default=60.0, gt=0)


class ServerConfig(BaseModel):
    """One FHIR server target. Use ``ServerConfig.for_kind`` to start from a tested preset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str
    kind: ServerKind = "generic"
    auth: AuthKind = "none"
    bundle_size: int = Field(default=50, ge=1)
    concurrency: int = Field(default=2, ge=1, le=64)
    mode: LoadMode = "batch"
    # A Group with more members than this is PUT with the first chunk and extended by JSON Patch.
    max_group_members_per_request: int = Field(default=1000, ge=1)
    # Bundles are cut before they exceed this many bytes (Medplum's default JSON body limit is 1 MB).
    max_request_bytes: int = Field(default=900_000, ge=1024)
    retry: RetryPolicy = RetryPolicy()
    timeouts: Timeouts = Timeouts()
    verify_tls: bool = True
    # Read what the server holds first (one search per bundle) and PUT only what differs, so an
    # unchanged resource gets no new version on servers that version every PUT.
    skip_unchanged: bool = True

    @field_validator("base_url")
    @classmethod
    def _clean_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("base_url must be an http(s) URL such as https://fhir.example.org/fhir/R4")
        if parts.username or parts.password:
            raise ValueError("base_url must not carry credentials; use ATR_FHIR_TOKEN or SMART auth")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _server_limits(self) -> ServerConfig:
        if self.kind == "medplum" and self.mode == "transaction" and self.bundle_size > 50:
            raise ValueError("Medplum refuses transactions with more than 50 PUTs; use bundle_size <= 50")
        return self

    @property
    def key(self) -> str:
        """Short stable hash naming this server in checkpoint files (no URL on disk names)."""
        return hashlib.sha256(self.base_url.encode()).hexdigest()[:16]

    @property
    def host_port(self) -> str:
        """``host:port`` of the base URL (the default port spelled out), for error messages."""
        parts = urlsplit(self.base_url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"

    @classmethod
    def for_kind(cls, base_url: str, kind: str = "generic", **overrides) -> ServerConfig:
        """The preset of ``kind`` (see ``resolve_kind``) with every non-None override applied."""
        resolved = resolve_kind(kind)
        settings = {**PRESETS[resolved], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(base_url=base_url, kind=resolved, **settings)


class UnknownServerKind(AtrError):
    """A server kind that is not a preset; the message lists the valid ones."""


def resolve_kind(name: str | None) -> ServerKind:
    """The preset name for ``name`` (case and surrounding blanks ignored; empty means ``generic``).

    The one resolution the CLI (``--kind``) and Dagster (``ATR_FHIR_KIND``) share, so a kind means
    the same settings on both paths."""
    kind = (name or "generic").strip().lower()
    if kind not in PRESETS:
        valid = ", ".join(sorted(PRESETS))
        hint = " (the hapi preset was removed: it was never tested against a HAPI server; start from generic)" if kind == "hapi" else ""
        raise UnknownServerKind(f"unknown server kind {name!r}; valid kinds: {valid}{hint}")
    return kind  # type: ignore[return-value]


# Settings per server kind. Why each value: docs/LOADING.md, "Settings per server kind".
# Each kind here is exercised by the suite against a real server of that kind.
PRESETS: dict[str, dict] = {
    "generic": {"bundle_size": 50, "concurrency": 2, "mode": "batch", "max_group_members_per_request": 1000, "max_request_bytes": 900_000},
    # Production Medplum: <= 50 PUTs per transaction, 1 MB JSON body, ~250-400 creates/s; batches
    # are processed entry by entry so a bad entry does not sink its neighbours.
    "medplum": {"bundle_size": 50, "concurrency": 2, "mode": "batch", "max_group_members_per_request": 1000, "max_request_bytes": 900_000},
}
