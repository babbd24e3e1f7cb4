"""Deterministic, PHI-free resource ids.

In: a secret key, a resource type and the business-key parts that identify one resource.
Out: a UUID string (version 8, RFC 9562 variant) taken from HMAC-SHA256(key, type + parts).
Refused: an empty key (ids would then be guessable from member ids).

Why a keyed hash: ids reach server audit logs and URLs, so they must not carry member ids or
MBIs, and an unkeyed hash of a 9-character member id is trivially reversed by enumeration.
Why deterministic: a re-run PUTs the same ids, so a FHIR server never gets duplicates.

Each part is length-prefixed and ``None`` has its own marker, so ("ab", "c") and ("a", "bc")
and (None,) and ("",) all hash differently. The business key of each type is documented in
docs/FHIR.md and set in fhir/build.py.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence

import polars as pl

from atr_pipeline.errors import AtrError

_NONE = b"\x00"
_SOME = b"\x01"


def _encode(parts: Sequence[str | None]) -> bytes:
    out = bytearray()
    for part in parts:
        if part is None:
            out += _NONE
        else:
            raw = part.encode("utf-8")
            out += _SOME + len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def resource_id(key: bytes, resource_type: str, *parts: str | None) -> str:
    """The id of one resource: a UUIDv8 string from HMAC-SHA256 over type and key parts."""
    if not key:
        raise AtrError("the id key is empty: set ATR_ID_KEY or let Settings create one before building FHIR")
    digest = hmac.new(key, _encode((resource_type, *parts)), hashlib.sha256).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (custom)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def add_id(
    df: pl.DataFrame,
    key: bytes,
    resource_type: str,
    columns: Sequence[str],
    out: str,
    *,
    prefix: Sequence[str] = (),
    when: pl.Expr | None = None,
) -> pl.DataFrame:
    """Add column ``out`` = resource_id(key, type, *prefix, *row[columns]).

    Only distinct key tuples are hashed (Python runs once per resource, not per row), then the
    ids are joined back. Rows where ``when`` is false get a null id (no such resource).
    """
    cols = list(columns)
    chosen = df if when is None else df.filter(when)
    uniq = chosen.select(cols).unique()
    ids = [resource_id(key, resource_type, *prefix, *row) for row in uniq.iter_rows()]
    table = uniq.with_columns(pl.Series(out, ids, dtype=pl.String))
    joined = df.join(table, on=cols, how="left", nulls_equal=True, maintain_order="left")
    if when is not None:
        joined = joined.with_columns(pl.when(when).then(pl.col(out)).alias(out))
    return joined


def reference(resource_type: str, id_column: str) -> pl.Expr:
    """``Type/<id>`` as a string expression (null when the id is null)."""
    return pl.lit(f"{resource_type}/") + pl.col(id_column)
