"""Shared encoding helpers: polars expressions that build FHIR JSON without nulls or empties.

In: polars expressions (struct fields, optional values). Out: one compact JSON string per row.
Refused: nothing; but FHIR forbids ``null`` and empty strings, arrays and objects, so:

* ``encode`` runs ``struct.json_encode`` (which writes ``"k":null`` for every null field) and
  then removes null members with three anchored regular expressions. They are safe on string
  content: inside a JSON string every ``"`` is escaped as ``\\"``, so the patterns ``,"k":null``
  and ``{"k":null`` (with a bare quote right after ``,`` or ``{``) can only match real members.
* Empty arrays and objects are avoided where they are made: ``items`` drops null list items and
  turns an empty list into null; ``some`` turns a struct into null unless a required part is
  present. Builders must use them for every optional list or object (tests walk every resource).

``compact`` does the same for the few Python dicts (Group headers: one per contract).
"""

from __future__ import annotations

from typing import Any

import orjson
import polars as pl

from atr_pipeline.systems import CS_V2_0203, ID_TYPE_DISPLAY, PROFILE_BY_TYPE


def encode(struct: pl.Expr) -> pl.Expr:
    """One compact JSON object per row, with null members removed."""
    return (
        struct.struct.json_encode()
        .str.replace_all(r',"\w+":null', "")  # a null member after another member
        .str.replace_all(r'\{"\w+":null,', "{")  # a null first member
        .str.replace_all(r'\{"\w+":null\}', "{}")  # an object whose members were all null
    )


def items(*elements: pl.Expr) -> pl.Expr:
    """A JSON array of the non-null ``elements``; null (so omitted) when none is present."""
    lst = pl.concat_list(list(elements)).list.drop_nulls()
    return pl.when(lst.list.len() > 0).then(lst)


def some(present: pl.Expr, **fields: pl.Expr | str | Any) -> pl.Expr:
    """``struct(**fields)`` where ``present`` holds, else null (so the element is omitted)."""
    return pl.when(present).then(pl.struct(**fields))


def any_present(*columns: str) -> pl.Expr:
    return pl.any_horizontal([pl.col(c).is_not_null() for c in columns])


def meta(resource_type: str) -> pl.Expr:
    return pl.struct(profile=pl.lit([PROFILE_BY_TYPE[resource_type]]))


def ref(reference: pl.Expr) -> pl.Expr:
    """``{"reference": ...}``; null when the reference string is null."""
    return pl.when(reference.is_not_null()).then(pl.struct(reference=reference))


def coding(system: str, code: pl.Expr | str, display: pl.Expr | str | None = None) -> pl.Expr:
    code_expr = pl.lit(code) if isinstance(code, str) else code
    fields: dict[str, pl.Expr] = {"system": pl.lit(system), "code": code_expr}
    if display is not None:
        fields["display"] = pl.lit(display) if isinstance(display, str) else display
    return pl.struct(**fields)


def concept(system: str, code: pl.Expr | str, display: pl.Expr | str | None = None) -> pl.Expr:
    """A CodeableConcept with exactly one coding."""
    return pl.struct(coding=pl.concat_list(coding(system, code, display)))


def typed_identifier(type_code: str, system: str, value: str) -> pl.Expr:
    """An identifier with a v2-0203 type (one coding), or null when the value column is null."""
    return some(
        pl.col(value).is_not_null(),
        type=concept(CS_V2_0203, type_code, ID_TYPE_DISPLAY[type_code]),
        system=pl.lit(system),
        value=pl.col(value),
    )


def system_identifier(system: str, value: str | pl.Expr) -> pl.Expr:
    value_expr = pl.col(value) if isinstance(value, str) else value
    return some(value_expr.is_not_null(), system=pl.lit(system), value=value_expr)


def to_frame(df: pl.DataFrame, id_column: str, struct: pl.Expr) -> pl.DataFrame:
    """(id, json) sorted by id, one row per row of ``df``."""
    return df.select(pl.col(id_column).alias("id"), encode(struct).alias("json")).sort("id")


def empty_resources() -> pl.DataFrame:
    return pl.DataFrame(schema={"id": pl.String(), "json": pl.String()})


def compact(value: Any) -> Any:
    """Drop None, empty strings, empty lists and empty dicts, recursively."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            c = compact(v)
            if c is not None and c != "" and c != [] and c != {}:
                out[k] = c
        return out
    if isinstance(value, list):
        return [c for c in (compact(v) for v in value) if c is not None and c != "" and c != [] and c != {}]
    return value


def dumps(value: Any) -> str:
    """Compact JSON text of a Python value after ``compact``; key order as given."""
    return orjson.dumps(compact(value)).decode("utf-8")
