"""Shared encoding helpers: polars expressions that write FHIR JSON text with no nulls or empties.

In: polars expressions. Out: expressions whose value is a piece of compact JSON text (or null,
meaning "leave this element out"). Refused: nothing.

Why text and not ``struct(...).struct.json_encode()``: json_encode writes ``"k":null`` for every
missing field (FHIR forbids nulls) and, in polars 1.44, mis-encodes struct lists after
``list.drop_nulls`` (``"coding":[null]``), while ``concat_list`` of structs costs ~20 us a row.
Building the text with ``concat_str(..., ignore_nulls=True)`` is fast and null-free by
construction:

* ``text`` quotes and escapes a string column (escaping is polars' own JSON encoder);
* ``obj``/``arr`` join the present members/items and become null when none is present, so an
  empty ``{}`` or ``[]`` is never written; absent values simply disappear.

``compact``/``dumps`` do the same for the few Python dicts (Group headers, one per contract).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from atr_pipeline.fhir.ids import reference as reference_string
from atr_pipeline.systems import CS_V2_0203, ID_TYPE_DISPLAY, PROFILE_BY_TYPE

Json = pl.Expr  # an expression whose value is JSON text, or null for "absent"


def text(value: pl.Expr | str) -> Json:
    """A JSON string for a String expression (``"..."``, escaped); null stays null."""
    expr = pl.col(value) if isinstance(value, str) else value
    encoded = pl.struct(v=expr).struct.json_encode().str.slice(5).str.strip_suffix("}")  # {"v":...}
    return pl.when(expr.is_not_null()).then(encoded)


def safe_text(value: pl.Expr | str) -> Json:
    """A JSON string for a value that cannot need escaping; null stays null.

    Only for values whose alphabet the pipeline itself fixes: UUID ids, ``YYYY-MM-DD`` dates
    (fhir/rows.py formats them), codes already checked against a code system. Quoting without
    the encoder is ~4x cheaper. Names, addresses and payer identifiers go through ``text``.
    """
    expr = pl.col(value) if isinstance(value, str) else value
    return pl.concat_str([pl.lit('"'), expr, pl.lit('"')])


def const(value: Any) -> Json:
    """A constant JSON value (string, number, boolean, list or dict) as a literal."""
    return pl.lit(dumps(value))


def boolean(value: pl.Expr) -> Json:
    return pl.when(value).then(pl.lit("true")).when(~value).then(pl.lit("false"))


def integer(value: pl.Expr) -> Json:
    return value.cast(pl.Int64()).cast(pl.String())


def obj(**members: Json | None) -> Json:
    """``{"k":v,...}`` of the members whose value is not null; null when none is."""
    pieces = [pl.concat_str([pl.lit(f'"{key}":'), value]) for key, value in members.items() if value is not None]
    inner = pl.concat_str(pieces, separator=",", ignore_nulls=True)
    return pl.concat_str([pl.lit("{"), inner, pl.lit("}")]).replace("{}", None)


def arr(*elements: Json) -> Json:
    """``[a,b,...]`` of the non-null elements; null when every element is null."""
    inner = pl.concat_str(list(elements), separator=",", ignore_nulls=True)
    return pl.concat_str([pl.lit("["), inner, pl.lit("]")]).replace("[]", None)


def template(*pieces: str | Json) -> Json:
    """Literal text and JSON pieces in one ``concat_str``; a null piece is left out.

    The flat form of ``obj``/``arr`` for elements whose shape is known: each nullable piece
    carries its own key and leading comma (see ``opt``), neighbouring literals are merged, so a
    resource is one pass over its columns instead of one nested string copy per JSON level.
    """
    merged: list[str | Json] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in merged], ignore_nulls=True)


def opt(prefix: str, value: Json, suffix: str = "") -> Json:
    """``prefix + value + suffix``, or null when ``value`` is null."""
    return pl.concat_str([pl.lit(prefix), value, pl.lit(suffix)])


def when(condition: pl.Expr, value: Json) -> Json:
    return pl.when(condition).then(value)


def resource(resource_type: str, id_column: str, **members: Json | None) -> Json:
    """A whole resource: resourceType, id, meta.profile, then ``members`` in order."""
    profile = dumps({"profile": [PROFILE_BY_TYPE[resource_type]]})
    # ids are UUIDs (fhir/ids.py): quoted without the encoder, one concat for the whole head
    head = pl.concat_str([pl.lit(f'{{"resourceType":"{resource_type}","id":"'), pl.col(id_column), pl.lit(f'","meta":{profile}')])
    pieces = [pl.concat_str([pl.lit(f'"{key}":'), value]) for key, value in members.items() if value is not None]
    return pl.concat_str([pl.concat_str([head, *pieces], separator=",", ignore_nulls=True), pl.lit("}")])


def reference(resource_type: str, id_column: str) -> Json:
    """``{"reference":"Type/<id>"}``; null when the id is null (ids are UUIDs: no escaping)."""
    return reference_text(reference_string(resource_type, id_column))


def reference_text(reference_string: pl.Expr) -> Json:
    """``{"reference":...}`` from an expression already holding ``Type/<id>``."""
    return pl.concat_str([pl.lit('{"reference":"'), reference_string, pl.lit('"}')])


def period(start: pl.Expr, end: pl.Expr) -> Json:
    """``,"period":{...}`` of the present dates; null when neither is (dates need no escaping)."""
    inner = pl.concat_str([opt('"start":"', start, '"'), opt('"end":"', end, '"')], separator=",", ignore_nulls=True)
    return when(start.is_not_null() | end.is_not_null(), template(',"period":{', inner, "}"))


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with exactly one coding (a Python dict for ``const``)."""
    return {"coding": [coding(system, code, display)]}


def concept_column(system: str, code: pl.Expr, display: pl.Expr | None = None) -> Json:
    """A one-coding CodeableConcept whose code (and display) come from columns."""
    return when(
        code.is_not_null(),
        obj(coding=arr(obj(system=const(system), code=text(code), display=text(display) if display is not None else None))),
    )


def typed_identifier(type_code: str, system: str, value: str) -> Json:
    """An identifier with one v2-0203 type coding; null when the value column is null."""
    head = dumps({"type": concept(CS_V2_0203, type_code, ID_TYPE_DISPLAY[type_code]), "system": system})
    return pl.concat_str([pl.lit(head[:-1] + ',"value":'), text(value), pl.lit("}")])


def system_identifier(system: str, value: pl.Expr | str) -> Json:
    """``{"system":...,"value":...}``; null when the value is null."""
    return pl.concat_str([pl.lit(f'{{"system":{dumps(system)},"value":'), text(value), pl.lit("}")])


def to_frame(df: pl.DataFrame | pl.LazyFrame, id_column: str, json: Json) -> pl.DataFrame:
    """(id, json) sorted by id, one row per row of ``df``.

    Rows usually arrive in id order already (rows.representative): a linear check then replaces
    the sort, which would compare ~1M 36-byte ids and move every JSON text once more.
    """
    out = df.lazy().select(pl.col(id_column).alias("id"), json.alias("json")).collect(engine="streaming")
    ids = out.get_column("id")
    if ids.null_count() == 0 and ids.is_sorted():
        return out.with_columns(ids.set_sorted())
    return out.sort("id")


@dataclass(frozen=True)
class Encoding:
    """One type's resources, not yet encoded: the rows the JSON is made from (only the columns
    ``json`` reads, in id order) and the expression. ``parts`` encodes a slice at a time, so a
    caller that writes each part away (publish.export.stage_resources) never holds the type's
    JSON text, which is 3-5x the size of its inputs (a Coverage is ~800 bytes of text).

    The templates are row-wise (no window or aggregate), so encoding slices gives the same text
    as encoding the whole (tests/test_fhir_encoding.py).
    """

    inputs: pl.DataFrame
    id_column: str
    json: Json

    @property
    def height(self) -> int:
        return self.inputs.height

    def parts(self, rows: int) -> Iterator[pl.DataFrame]:
        """(id, json) frames of at most ``rows`` rows, in id order."""
        for start in range(0, self.height, rows):
            yield self._encode(self.inputs.slice(start, rows))

    def to_frame(self) -> pl.DataFrame:
        """The whole type as (id, json), sorted by id (what ``to_frame`` returns)."""
        return self._encode(self.inputs)

    def _encode(self, inputs: pl.DataFrame) -> pl.DataFrame:
        return inputs.lazy().select(pl.col(self.id_column).alias("id"), self.json.alias("json")).collect(engine="streaming")


def encode(df: pl.DataFrame | pl.LazyFrame, id_column: str, json: Json) -> Encoding:
    """``to_frame`` without the text: the inputs ``json`` reads, one row per resource, in id order."""
    columns = list(dict.fromkeys([id_column, *json.meta.root_names()]))
    inputs = df.lazy().select(columns).collect(engine="streaming")
    ids = inputs.get_column(id_column)
    if ids.null_count() == 0 and ids.is_sorted():
        inputs = inputs.with_columns(ids.set_sorted())
    else:
        inputs = inputs.sort(id_column)
    return Encoding(inputs, id_column, json)


def empty_resources() -> pl.DataFrame:
    return pl.DataFrame(schema={"id": pl.String(), "json": pl.String()})


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def compact(value: Any) -> Any:
    """Drop None, empty strings, empty lists and empty dicts, recursively."""
    if isinstance(value, dict):
        return {k: c for k, c in ((k, compact(v)) for k, v in value.items()) if _present(c)}
    if isinstance(value, list):
        return [c for c in (compact(v) for v in value) if _present(c)]
    return value


def dumps(value: Any) -> str:
    """Compact JSON text of a Python value after ``compact``; key order as given."""
    return orjson.dumps(compact(value)).decode("utf-8")
