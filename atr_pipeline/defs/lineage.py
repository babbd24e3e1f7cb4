"""Column lineage canonical field -> FHIR element, measured on the FHIR builders themselves.

A hand-written table drifts from the code (it once said ``Group.identifier:npi`` came from the
practitioner NPI; the Group builder takes the provider organization's). So the lineage is not
written anywhere: ``fhir_lineage`` builds one synthetic member entry with the real builders
(``fhir.build_resources``) and the mapping's identifier systems, then changes one canonical field
at a time to another valid value and records which FHIR elements changed. Element names are the
JSON path, with list items named by their ``system`` or ``url`` tail (``identifier[us-npi]``,
``extension[ext-changeType]``). Ids and references are left out: every id is a keyed hash of
business keys, so they would list the keys everywhere. The probe values are invented, not PHI.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import orjson
import polars as pl

from atr_pipeline.canonical import CANONICAL_SCHEMA, LINEAGE_FIELDS
from atr_pipeline.layouts.spec import IdentifierSystems, MappingSpec

# Two valid values per canonical field: the probe's entry, and the one it is changed to.
PROBE: dict[str, tuple[Any, Any]] = {
    "payer_id": ("PAYER1", "PAYER2"),
    "payer_name": ("Probe Payer One", "Probe Payer Two"),
    "contract_id": ("CONTRACT1", "CONTRACT2"),
    "contract_name": ("Probe Contract One", "Probe Contract Two"),
    "contract_start": (date(2026, 1, 1), date(2026, 2, 1)),
    "contract_end": (date(2026, 12, 31), date(2026, 11, 30)),
    "settlement_entity_id": ("SE1", "SE2"),
    "settlement_entity_name": ("Probe ACO One", "Probe ACO Two"),
    "plan_id": ("PLAN1", "PLAN2"),
    "plan_name": ("Probe Plan One", "Probe Plan Two"),
    "product_type": ("commppo", "commhmo"),
    "coverage_start": (date(2026, 1, 1), date(2026, 3, 1)),
    "coverage_end": (date(2026, 12, 31), date(2026, 10, 31)),
    "member_id": ("PROBEM1", "PROBEM2"),
    "subscriber_id": ("PROBES1", "PROBES2"),
    "relationship": ("spouse", "child"),
    "mbi": ("1EG4TE5MK73", "1EG4TE5MK74"),
    "medicaid_id": ("PROBEMCD1", "PROBEMCD2"),
    "mrn": ("PROBEMRN1", "PROBEMRN2"),
    "ssn": ("123456789", "123456788"),
    "family_name": ("Probefamily", "Probefamilytwo"),
    "given_name": ("Probegiven", "Probegiventwo"),
    "middle_name": ("Probemiddle", "Probemiddletwo"),
    "name_prefix": ("Ms", "Dr"),
    "name_suffix": ("Jr", "Sr"),
    "gender": ("female", "male"),
    "birth_date": (date(1950, 1, 2), date(1951, 3, 4)),
    "deceased_date": (date(2026, 5, 1), date(2026, 6, 1)),
    "address_line1": ("1 Probe Street", "2 Probe Street"),
    "address_line2": ("Unit 1", "Unit 2"),
    "city": ("Probeton", "Probeville"),
    "state": ("MA", "NY"),
    "postal_code": ("02134", "10001"),
    "phone": ("6175550100", "6175550101"),
    "provider_npi": ("1234567893", "1245319599"),
    "provider_family_name": ("Probedoc", "Probedoctwo"),
    "provider_given_name": ("Probegivendoc", "Probegivendoctwo"),
    "provider_tin": ("123456789", "987654321"),
    "provider_org_name": ("Probe Clinic One", "Probe Clinic Two"),
    "provider_org_npi": ("1003000126", "1508345035"),
    "attribution_start": (date(2026, 1, 1), date(2026, 4, 1)),
    "attribution_end": (date(2026, 12, 31), date(2026, 9, 30)),
    "change_reason": ("probe", "probe two"),
    "risk_score": (1.5, 2.5),
}
_LEFT_OUT = {"id", "reference", "fullUrl"}
_TRANSACTION_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def _frame(values: dict[str, Any]) -> pl.DataFrame:
    row = {name: values.get(name) for name in CANONICAL_SCHEMA.names()}
    return pl.DataFrame([row], schema=CANONICAL_SCHEMA).with_columns(
        pl.lit("new").alias("change_type"), pl.lit(False).alias("inactive")
    )


def _tail(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, v in value.items():
            if key not in _LEFT_OUT and key != "meta":
                yield from _leaves(v, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            tag = ""
            if isinstance(item, dict):
                if "system" in item:
                    tag = f"[{_tail(str(item['system']))}]"
                elif "url" in item:
                    tag = f"[{_tail(str(item['url']))}]"
            yield from _leaves(item, f"{path}{tag}")
    else:
        yield path, str(value)


def _elements(values: dict[str, Any], systems: IdentifierSystems) -> Counter[tuple[str, str]]:
    from atr_pipeline.fhir.build import BuildContext, build_resources

    ctx = BuildContext(id_key=b"lineage-probe", systems=systems, transaction_time=_TRANSACTION_TIME)
    out: Counter[tuple[str, str]] = Counter()
    for resource_type, frame in build_resources(_frame(values), ctx).items():
        for text in frame.get_column("json").to_list():
            resource = orjson.loads(text)
            for leaf in _leaves(resource, resource_type):
                # the identifier/extension system or url is the element's name, not a value
                if not leaf[0].endswith((".system", ".url")):
                    out[leaf] += 1
    return out


@lru_cache(maxsize=32)
def _measure(fields: tuple[str, ...], systems: IdentifierSystems) -> dict[str, tuple[str, ...]]:
    from atr_pipeline.fhir.rows import _SYSTEM_OF_COLUMN

    usable = [f for f in fields if f in PROBE and (f not in _SYSTEM_OF_COLUMN or getattr(systems, _SYSTEM_OF_COLUMN[f]) is not None)]
    base = {f: PROBE[f][0] for f in usable}
    base.update({f: "probe" for f in LINEAGE_FIELDS if CANONICAL_SCHEMA[f] == pl.String()})
    before = _elements(base, systems)
    deps: dict[str, set[str]] = {}
    for name in usable:
        after = _elements({**base, name: PROBE[name][1]}, systems)
        for element, _ in (before - after) + (after - before):
            deps.setdefault(element, set()).add(name)
    return {element: tuple(sorted(names)) for element, names in sorted(deps.items())}


def fhir_lineage(spec: MappingSpec) -> dict[str, tuple[str, ...]]:
    """FHIR element -> the canonical fields of this mapping whose value it carries, measured on the builders."""
    return _measure(tuple(sorted(spec.fields)), spec.identifier_systems)


def lineage_markdown(lineage: dict[str, tuple[str, ...]], spec: MappingSpec) -> str:
    """One row per FHIR element: the file column(s) and canonical field(s) it comes from."""
    from atr_pipeline.defs.metadata import source_column

    rows = ["| FHIR element | canonical field | file column |", "|---|---|---|"]
    for element, fields in lineage.items():
        columns = []
        for f in fields:
            fs = spec.fields[f]
            columns.append(source_column(fs) or (f"constant `{fs.constant}`" if fs.constant is not None else f"default `{fs.default}`"))
        rows.append(f"| `{element}` | {', '.join(f'`{f}`' for f in fields)} | {', '.join(columns)} |")
    return "\n".join(rows)
