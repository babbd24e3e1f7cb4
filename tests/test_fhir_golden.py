"""Golden NDJSON for the hand-made member frame, determinism, R4B structure, no nulls or empties.

Regenerate the golden files after an intended change with
``ATR_REGEN_GOLDEN=1 pytest tests/test_fhir_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir_refs import references
from test_fhir_cases import build, context, members, parse

from atr_pipeline.fhir.build import build_resources
from atr_pipeline.systems import PROFILE_BY_TYPE

GOLDEN = Path(__file__).parent / "golden" / "fhir"
TYPES = ("Organization", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Coverage", "Group")
FRAMES = build()


def ndjson(frames: dict, rtype: str) -> str:
    return "".join(j + "\n" for j in frames[rtype]["json"].to_list())


@pytest.mark.parametrize("rtype", TYPES)
def test_matches_golden(rtype: str) -> None:
    path = GOLDEN / f"{rtype}.ndjson"
    text = ndjson(FRAMES, rtype)
    if os.environ.get("ATR_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_output_types_and_order() -> None:
    assert list(FRAMES) == list(TYPES)
    for rtype, df in FRAMES.items():
        assert df.columns == ["id", "json"]
        ids = df["id"].to_list()
        assert ids == sorted(ids) and len(set(ids)) == len(ids), rtype


def test_byte_identical_across_builds_and_row_order() -> None:
    again = build_resources(members().reverse(), context())
    for rtype in TYPES:
        assert ndjson(again, rtype) == ndjson(FRAMES, rtype)


@pytest.mark.parametrize("rtype", TYPES)
def test_every_resource_validates_in_r4b(rtype: str) -> None:
    model = get_fhir_model_class(rtype)
    for rid, text in FRAMES[rtype].iter_rows():
        resource = model.model_validate_json(text)
        assert resource.id == rid
        assert resource.meta.profile == [PROFILE_BY_TYPE[rtype]]


def _walk(value: Any, path: str, problems: list[str]) -> None:
    if value is None or value == "" or value == [] or value == {}:
        problems.append(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(v, f"{path}.{k}", problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]", problems)


def test_no_nulls_or_empty_containers() -> None:
    problems: list[str] = []
    for rtype, resources in parse(FRAMES).items():
        for rid, res in resources.items():
            _walk(res, f"{rtype}/{rid}", problems)
    assert problems == []


def test_references_resolve() -> None:
    parsed = parse(FRAMES)
    known = {f"{t}/{i}" for t, res in parsed.items() for i in res}
    refs = references(parsed)
    assert len(refs) > 50 and sorted(set(refs) - known) == []


def test_json_is_compact_single_line() -> None:
    for rtype in TYPES:
        for text in FRAMES[rtype]["json"].to_list():
            assert "\n" not in text and text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
