"""Resource ids: keyed, deterministic, UUIDv8, unambiguous, free of member ids and MBIs."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import polars as pl
import pytest
from test_fhir_cases import KEY, ROWS, build, context, members

from atr_pipeline.errors import AtrError
from atr_pipeline.fhir.build import build_resources
from atr_pipeline.fhir.ids import add_id, resource_id

FRAMES = build()


def test_uuid_version_8_and_rfc_variant() -> None:
    value = resource_id(KEY, "Patient", "ACME", "M001")
    parsed = uuid.UUID(value)
    assert str(parsed) == value and parsed.version == 8 and parsed.variant == uuid.RFC_4122


def test_documented_encoding() -> None:
    # Recomputed by hand from the documented encoding (docs/FHIR.md): HMAC-SHA256 over netstrings,
    # "-" for a missing part, first 16 bytes, version 8, RFC variant. A change of encoding would
    # re-key every resource on every server, so it must fail here.
    digest = hmac.new(b"k", b"7:Patient,4:ACME,4:M001,-", hashlib.sha256).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    assert resource_id(b"k", "Patient", "ACME", "M001", None) == str(uuid.UUID(bytes=bytes(raw)))


def test_long_key_and_unicode_parts_match_stdlib_hmac() -> None:
    key = b"x" * 100  # longer than the SHA-256 block: hashed first, as RFC 2104 says
    digest = hmac.new(key, "7:Patient,2:é,".encode(), hashlib.sha256).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    assert resource_id(key, "Patient", "é") == str(uuid.UUID(bytes=bytes(raw)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("ab", "c"), ("a", "bc")),
        ((None,), ("",)),
        (("a", None), ("a",)),
        (("a|b",), ("a", "b")),
    ],
)
def test_parts_are_unambiguous(a: tuple, b: tuple) -> None:
    assert resource_id(KEY, "Patient", *a) != resource_id(KEY, "Patient", *b)


def test_type_and_key_change_the_id() -> None:
    base = resource_id(KEY, "Patient", "ACME", "M001")
    assert resource_id(KEY, "Coverage", "ACME", "M001") != base
    assert resource_id(b"another key", "Patient", "ACME", "M001") != base
    assert resource_id(KEY, "Patient", "ACME", "M002") != base


def test_empty_key_refused() -> None:
    with pytest.raises(AtrError, match="id key is empty"):
        resource_id(b"", "Patient", "x")


def test_add_id_matches_scalar_and_respects_when() -> None:
    df = pl.DataFrame({"a": ["x", "x", None, "y"], "b": ["1", "1", "2", None]})
    out = add_id(df, KEY, "T", ["a", "b"], "id", when=pl.col("a").is_not_null())
    assert out["id"].to_list() == [
        resource_id(KEY, "T", "x", "1"), resource_id(KEY, "T", "x", "1"), None, resource_id(KEY, "T", "y", None)]
    assert out.columns == ["a", "b", "id"]


def test_no_member_identifier_in_any_id_or_reference() -> None:
    secrets = {r[f] for r in ROWS for f in ("member_id", "subscriber_id", "mbi", "ssn", "medicaid_id", "mrn") if r.get(f)}
    assert "M001" in secrets and "1EG4TE5MK73" in secrets
    for rtype, df in FRAMES.items():
        for rid in df["id"].to_list():
            uuid.UUID(rid)
            assert not any(s in rid for s in secrets), rtype
        for text in df["json"].to_list():
            for s in secrets:
                assert f"/{s}" not in text  # references are Type/<uuid>


def test_ids_change_when_the_key_changes() -> None:
    other = build_resources(members(), context(id_key=b"rotated-key"))
    for rtype in FRAMES:
        old, new = set(FRAMES[rtype]["id"].to_list()), set(other[rtype]["id"].to_list())
        assert len(old) == len(new) and old.isdisjoint(new), rtype


def test_patient_id_follows_business_key() -> None:
    changed = members().with_columns(
        pl.when(pl.col("member_id") == "M007").then(pl.lit("M007X")).otherwise(pl.col("member_id")).alias("member_id"))
    ids = set(build_resources(changed, context())["Patient"]["id"].to_list())
    assert resource_id(KEY, "Patient", "ACME", "M007") not in ids
    assert resource_id(KEY, "Patient", "ACME", "M007X") in ids
    assert resource_id(KEY, "Patient", "ACME", "M001") in ids
