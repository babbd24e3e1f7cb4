"""The column lineage is measured on the FHIR builders, so it says what a built resource holds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest

from atr_pipeline.defs.lineage import fhir_lineage, lineage_markdown
from atr_pipeline.fhir.build import BuildContext, build_resources
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import load_mapping
from atr_pipeline.systems import SYS_NPI

ROOT = Path(__file__).resolve().parents[1]
ACME = load_mapping(ROOT / "mappings" / "acme_commercial.yaml")


@pytest.fixture(scope="module")
def built() -> tuple[pl.DataFrame, dict[str, list[dict]]]:
    rows = read_file(ROOT / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202608.csv", ACME).rows
    members = rows.drop("_issues", strict=False).with_columns(pl.lit("new").alias("change_type"), pl.lit(False).alias("inactive"))
    ctx = BuildContext(id_key=b"lineage-test", systems=ACME.identifier_systems, transaction_time=datetime(2026, 9, 1, tzinfo=UTC))
    resources = {t: [orjson.loads(j) for j in f.get_column("json").to_list()] for t, f in build_resources(members, ctx).items()}
    return rows, resources


def test_group_npi_identifier_comes_from_the_organization_npi(built) -> None:
    rows, resources = built
    lineage = fhir_lineage(ACME)
    assert lineage["Group.identifier[us-npi].value"] == ("provider_org_npi",)
    # the built Groups carry exactly the organization NPIs of their rows, not the practitioners'
    group_npis = {i["value"] for g in resources["Group"] for i in g.get("identifier", []) if i.get("system") == SYS_NPI}
    assert group_npis == set(rows.get_column("provider_org_npi").drop_nulls().unique().to_list())
    assert not group_npis & set(rows.get_column("provider_npi").drop_nulls().unique().to_list())


def test_every_measured_element_holds_its_fields_value_in_a_built_resource(built) -> None:
    """For plain copied values: the element's values in the built resources are the field's values."""
    rows, resources = built
    checked = 0
    for element, fields in fhir_lineage(ACME).items():
        if len(fields) != 1 or rows.schema[fields[0]] != pl.String() or "coding" in element:
            continue  # dates are reformatted, codes are mapped: compared by the property tests elsewhere
        resource_type, *path = element.split(".")
        values = set(_values(resources[resource_type], path))
        expected = set(rows.get_column(fields[0]).drop_nulls().str.strip_chars().unique().to_list())
        if values and values <= expected:
            checked += 1
        else:
            assert values <= expected, (element, sorted(values - expected)[:3])
    assert checked >= 15


def _values(resources: list[dict], path: list[str]) -> list[str]:
    out: list[str] = []
    for r in resources:
        out.extend(_walk(r, path))
    return out


def _walk(value, path: list[str]) -> list[str]:
    if not path:
        return [str(value)] if not isinstance(value, (dict, list)) else []
    if isinstance(value, list):
        return [v for item in value for v in _walk(item, path)]
    head, rest = path[0], path[1:]
    tag = None
    if "[" in head:
        head, tag = head[:-1].split("[")
    item = value.get(head) if isinstance(value, dict) else None
    if item is None:
        return []
    if tag is not None:
        items = item if isinstance(item, list) else [item]
        item = [i for i in items if str(i.get("system") or i.get("url") or "").rstrip("/").rsplit("/", 1)[-1] == tag]
    return _walk(item, rest)


def test_unmapped_fields_are_not_in_the_lineage() -> None:
    fields = {f for deps in fhir_lineage(ACME).values() for f in deps}
    assert fields <= set(ACME.fields)
    assert "ssn" not in ACME.fields or "ssn" in fields


def test_markdown_table_lists_file_column_per_element() -> None:
    table = lineage_markdown(fhir_lineage(ACME), ACME)
    assert "| `Group.identifier[us-npi].value` | `provider_org_npi` | PCP_GROUP_NPI |" in table.splitlines()
    assert "| `Patient.birthDate` | `birth_date` | DOB |" in table.splitlines()
