"""Deterministic, PHI-free resource ids.

In: a secret key, a resource type and the business-key parts that identify one resource.
Out: a UUID string (version 8, RFC 9562 variant) from the first 16 bytes of
HMAC-SHA256(key, message), where message = the type and each part as a netstring
(``<utf-8 byte length>:<value>,``) and a missing part as ``-``.
Refused: an empty key (ids would then be guessable from member ids).

Why a keyed hash: ids reach server audit logs and URLs, so they must not carry member ids or
MBIs, and an unkeyed hash of a 9-character member id is reversed by enumeration.
Why deterministic: a re-run PUTs the same ids, so a FHIR server never gets duplicates.
Why netstrings: ("ab", "c"), ("a", "bc"), (None,) and ("",) must all differ.

The messages are built column-wise in polars; Python runs one HMAC per distinct key (with the
key's inner and outer SHA-256 states computed once), never per row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import polars as pl

from atr_pipeline.errors import AtrError

_VARIANT = {f"{i:x}": f"{(i & 0x3) | 0x8:x}" for i in range(16)}  # RFC 9562 variant bits 10xx


@lru_cache(maxsize=8)
def _pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    if not key:
        raise AtrError("the id key is empty: set ATR_ID_KEY or let Settings create one")
    block = hashlib.sha256(key).digest() if len(key) > 64 else key
    block = block.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


def _digests(key: bytes, messages: list[bytes]) -> list[bytes]:
    """HMAC-SHA256 (RFC 2104) of each message, first 16 bytes."""
    inner0, outer0 = _pads(key)
    out = []
    for m in messages:
        inner = inner0.copy()
        inner.update(m)
        outer = outer0.copy()
        outer.update(inner.digest())
        out.append(outer.digest()[:16])
    return out


def _netstring(value: str | None) -> str:
    return "-" if value is None else f"{len(value.encode('utf-8'))}:{value},"


def message(resource_type: str, *parts: str | None) -> bytes:
    return "".join(_netstring(p) for p in (resource_type, *parts)).encode("utf-8")


def _uuid_from_hex(h: str) -> str:
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def resource_id(key: bytes, resource_type: str, *parts: str | None) -> str:
    """The id of one resource (scalar form of ``add_id``)."""
    return _uuid_from_hex(_digests(key, [message(resource_type, *parts)])[0].hex())


def _message_expr(resource_type: str, prefix: Sequence[str], columns: Sequence[str]) -> pl.Expr:
    pieces: list[pl.Expr] = [pl.lit(_netstring(resource_type) + "".join(_netstring(p) for p in prefix))]
    for c in columns:
        col = pl.col(c).cast(pl.String)
        pieces.append(
            pl.when(col.is_null())
            .then(pl.lit("-"))
            .otherwise(pl.concat_str([col.str.len_bytes().cast(pl.String), pl.lit(":"), col, pl.lit(",")]))
        )
    return pl.concat_str(pieces)


def _uuid_expr(hex_col: pl.Expr) -> pl.Expr:
    s = hex_col.str
    return pl.concat_str([
        s.slice(0, 8), pl.lit("-"), s.slice(8, 4), pl.lit("-8"), s.slice(13, 3), pl.lit("-"),
        s.slice(16, 1).replace_strict(_VARIANT, return_dtype=pl.String), s.slice(17, 3), pl.lit("-"), s.slice(20, 12),
    ])


def _sort_key(hex_col: pl.Expr) -> pl.Expr:
    """The id's first 16 hex digits as a UInt64, so ordering ids is a numeric sort.

    The UUID text shows digest nibbles 0-11, the version digit ``8``, then nibbles 13-15: the
    same order as the number below. Ties (a 64-bit prefix shared by two ids, ~1e-8 at 1M ids)
    are caught by the check in ``_order`` and fall back to the string sort.
    """
    prefix = hex_col.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64)
    return (prefix & pl.lit(~0xF000 & 0xFFFF_FFFF_FFFF_FFFF, dtype=pl.UInt64)) | pl.lit(0x8000, dtype=pl.UInt64)


def _order(ids: pl.Series, prefix: pl.Series) -> pl.Series:
    """Each (distinct) id's position among the ids in string order, as UInt32."""
    perm = prefix.arg_sort()
    if not ids.gather(perm).is_sorted():  # a shared 64-bit prefix: order those by the full text
        perm = ids.arg_sort()
    return perm.arg_sort().cast(pl.UInt32)  # inverse permutation: rank of each row


def add_id(
    df: pl.DataFrame,
    key: bytes,
    resource_type: str,
    columns: Sequence[str],
    out: str,
    *,
    prefix: Sequence[str] = (),
    when: pl.Expr | None = None,
    order_key: str | None = None,
) -> pl.DataFrame:
    """Add column ``out`` = resource_id(key, type, *prefix, *row[columns]).

    Only distinct key tuples are hashed, then the ids are joined back. Rows where ``when`` is
    false get a null id (the row has no such resource).

    ``order_key``: also add that UInt32 column, the id's rank among this frame's distinct ids in
    string order (equal ids, equal ranks; null where the id is null). Sorting or grouping by it
    orders like the id text at the cost of a number: the builders sort ~1M ids per type.
    """
    cols = list(columns)
    chosen = df if when is None else df.filter(when)
    uniq = chosen.select(cols).unique()
    messages = uniq.select(_message_expr(resource_type, prefix, cols).cast(pl.Binary)).to_series().to_list()
    hexes = pl.Series("_hex", _digests(key, messages), dtype=pl.Binary).bin.encode("hex")
    table = uniq.with_columns(hexes).with_columns(_uuid_expr(pl.col("_hex")).alias(out))
    if order_key is not None:
        # distinct tuples hash to distinct ids, so a row's rank in the table is the id's rank
        rank = _order(table.get_column(out), table.select(_sort_key(pl.col("_hex"))).to_series())
        table = table.with_columns(rank.alias(order_key))
    table = table.drop("_hex")
    attached = [out] if order_key is None else [out, order_key]
    # Join only the key columns and attach the id column: joining the whole (wide) frame copied
    # every column once per id type (9 copies of a ~60-column frame per build).
    ids = df.select(cols).join(table, on=cols, how="left", nulls_equal=True, maintain_order="left").select(attached)
    joined = df.with_columns(ids.get_columns())
    if when is not None:
        joined = joined.with_columns(pl.when(when).then(pl.col(c)).alias(c) for c in attached)
    return joined


def reference(resource_type: str, id_column: str) -> pl.Expr:
    """``Type/<id>`` as a string expression (null when the id is null)."""
    return pl.lit(f"{resource_type}/") + pl.col(id_column)
