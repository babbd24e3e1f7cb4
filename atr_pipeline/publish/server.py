"""How to talk to one FHIR server: ``ServerConfig`` and the presets per server kind.

In:  a base URL and, optionally, a server kind (``medplum``, ``hapi``, ``generic``) whose preset
     fills bundle size, concurrency, mode, Group chunking and request-size limits.
Out: a validated, immutable ``ServerConfig`` the loader uses.
Refused: bundle sizes, concurrency or limits below 1; transaction bundles above 50 entries for
     Medplum (the server refuses them); a base URL with credentials in it.
"""

from __future__ import annotations

import hashlib
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from atr_pipeline.publish.auth import AuthKind

ServerKind = Literal["generic", "medplum", "hapi"]
LoadMode = Literal["batch", "transaction"]


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter, bounded per request and for the whole load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=6, ge=1)  # per request, the first try included
    max_total_retry_seconds: float = Field(default=900.0, gt=0)  # all backoff sleeps of one load
    initial_backoff: float = Field(default=0.5, ge=0)
    max_backoff: float = Field(default=30.0, ge=0)
    max_retry_after: float = Field(default=120.0, ge=0)  # a server's Retry-After is honoured up to this


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

    @classmethod
    def for_kind(cls, base_url: str, kind: ServerKind = "generic", **overrides) -> ServerConfig:
        settings = {**PRESETS[kind], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(base_url=base_url, kind=kind, **settings)


# Settings per server kind. Why each value: docs/LOADING.md, "Settings per server kind".
PRESETS: dict[str, dict] = {
    "generic": {"bundle_size": 50, "concurrency": 2, "mode": "batch", "max_group_members_per_request": 1000, "max_request_bytes": 900_000},
    # Production Medplum: <= 50 PUTs per transaction, 1 MB JSON body, ~250-400 creates/s; batches
    # are processed entry by entry so a bad entry does not sink its neighbours.
    "medplum": {"bundle_size": 50, "concurrency": 2, "mode": "batch", "max_group_members_per_request": 1000, "max_request_bytes": 900_000},
    # HAPI: larger bundles amortise its per-request overhead; a 10k-member Group PUT has been seen to
    # take hours there, so Groups are still chunked and grown by PATCH.
    "hapi": {"bundle_size": 200, "concurrency": 4, "mode": "batch", "max_group_members_per_request": 1000, "max_request_bytes": 5_000_000},
}
