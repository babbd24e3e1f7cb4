"""Materialization metadata and check results, built from stage outputs.

Everything here is counts, rule names, line numbers, file provenance and schema: never a value
from a member row (tests/test_privacy.py checks the whole event log for that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from atr_pipeline.canonical import FIELDS
from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.spec import FieldSpec, MappingSpec

MAX_EXAMPLE_LINES = 5


DOCS = Path(__file__).resolve().parents[2] / "docs"
IG_URL = "https://hl7.org/fhir/us/davinci-atr/"


def links(spec: MappingSpec | None = None, settings: Any = None) -> dict[str, Any]:
    """Where an analyst reads more: the mapping file, the analyst guide, the ATR IG (paths and urls)."""
    out: dict[str, Any] = {"ig": dg.MetadataValue.url(IG_URL)}
    if (DOCS / "ANALYST.md").is_file():
        out["docs"] = dg.MetadataValue.path(str(DOCS / "ANALYST.md"))
    if spec is not None and settings is not None:
        out["mapping_file"] = dg.MetadataValue.path(str(settings.mappings_dir / f"{spec.source_id}.yaml"))
    return out


def provenance(landed: Any, spec: MappingSpec | None = None, settings: Any = None) -> dict[str, Any]:
    return {
        "file_name": landed.original_name,
        "sha256": landed.sha256,
        "size_bytes": dg.MetadataValue.int(landed.size),
        "received_at": landed.received_at.isoformat(),
        "source": landed.source_id,
        "reporting_month": f"{landed.month:%Y-%m}",
        "supersedes_sha256": landed.supersedes or "",
        "landed_path": dg.MetadataValue.path(str(landed.path)),
        **links(spec, settings),
    }


def counts_table(counts: dict[str, int], key: str) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({key: k, "count": int(v)}) for k, v in counts.items()],
        schema=dg.TableSchema(columns=[dg.TableColumn(key, "string"), dg.TableColumn("count", "int")]),
    )


def canonical_schema() -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(f.name, str(f.dtype), description=f.description) for f in FIELDS]
    )


def source_column(spec: FieldSpec) -> str | None:
    """A readable name of where a field comes from in the file (None for constants/defaults)."""
    if spec.constant is not None:
        return None
    if spec.is_fixed:
        return f"pos {spec.start}-{spec.start + spec.length - 1}"  # type: ignore[operator]
    if spec.column is not None:
        return str(spec.column) if isinstance(spec.column, str) else f"column {spec.column}"
    return None


def mapping_lineage_markdown(spec: MappingSpec) -> str:
    """Source column -> canonical field -> FHIR elements, one line per mapped field.

    The elements are measured on the FHIR builders (defs/lineage.py), not copied from a table.
    """
    from atr_pipeline.defs.lineage import fhir_lineage

    elements: dict[str, list[str]] = {}
    for element, fields in fhir_lineage(spec).items():
        for f in fields:
            elements.setdefault(f, []).append(element)
    rows = ["| source column | canonical field | FHIR elements |", "|---|---|---|"]
    for name, fspec in spec.fields.items():
        src = source_column(fspec) or (f"constant `{fspec.constant}`" if fspec.constant is not None else f"default `{fspec.default}`")
        carried = ", ".join(f"`{e}`" for e in elements.get(name, [])) or "(not in FHIR)"
        rows.append(f"| {src} | `{name}` | {carried} |")
    return "\n".join(rows)


def canonical_lineage(spec: MappingSpec) -> dg.TableColumnLineage:
    deps = {}
    for name, f in spec.fields.items():
        src = source_column(f)
        if src:
            deps[name] = [dg.TableColumnDep(asset_key=dg.AssetKey("landed_file"), column_name=src)]
    return dg.TableColumnLineage(deps_by_column=deps)


def read_metadata(read: Any, spec: MappingSpec, settings: Any) -> dict[str, Any]:
    structural = read.structural_rejects.get_column("line_number").n_unique() if read.structural_rejects.height else 0
    meta: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(read.rows.height),
        "records_read": dg.MetadataValue.int(read.records_read),
        "structural_rejects": dg.MetadataValue.int(structural),
        "control_actual_records": dg.MetadataValue.int(read.control.actual_records),
        "mapping": spec.source_id,
        "dagster/column_schema": canonical_schema(),
        "dagster/column_lineage": canonical_lineage(spec),
        "column_lineage_table": dg.MetadataValue.md(mapping_lineage_markdown(spec)),
        **links(spec, settings),
    }
    if read.control.expected_records is not None:
        meta["control_expected_records"] = dg.MetadataValue.int(read.control.expected_records)
    return meta


def control_check(read: Any, refused: FileRefused | None) -> dg.AssetCheckResult:
    if refused is not None:
        return dg.AssetCheckResult(
            check_name="control_totals_match",
            asset_key="canonical_rows",
            passed=False,
            metadata={"rule": refused.rule, "reason": refused.reason, "line": refused.line_number or 0,
                      "what_to_do": "Ask the sender for a corrected file; nothing from this one was used."},
        )
    c = read.control
    return dg.AssetCheckResult(
        check_name="control_totals_match",
        asset_key="canonical_rows",
        passed=True,
        metadata={
            "expected_records": c.expected_records if c.expected_records is not None else "not declared",
            "actual_records": c.actual_records,
            "expected_hash": str(c.expected_hash) if c.expected_hash is not None else "not declared",
            "actual_hash": str(c.actual_hash) if c.actual_hash is not None else "not computed",
        },
    )


def rejects_table(failure_rows: list[dict[str, Any]]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({"rule": r["rule"], "rows": int(r["count"]), "example_lines": ", ".join(str(x) for x in r["example_lines"][:MAX_EXAMPLE_LINES])})
            for r in failure_rows
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn("rule", "string"), dg.TableColumn("rows", "int"), dg.TableColumn("example_lines", "string")]),
    )


def _failure_rows(rejects: Any) -> list[dict[str, Any]]:
    from atr_pipeline.validate.rejects import failure_table

    return failure_table(rejects, max_examples=MAX_EXAMPLE_LINES)


def validate_metadata(validated: Any, csv_path: Path) -> dict[str, Any]:
    return {
        "dagster/row_count": dg.MetadataValue.int(validated.rows_accepted),
        "rows_read": dg.MetadataValue.int(validated.records_read),
        "rows_accepted": dg.MetadataValue.int(validated.rows_accepted),
        "rows_rejected": dg.MetadataValue.int(validated.rows_rejected),
        "rejects_by_rule": rejects_table(_failure_rows(validated.rejects)),
        "warnings_by_rule": counts_table(validated.warnings_by_rule, "rule"),
        "rejects_csv": dg.MetadataValue.path(str(csv_path)),
    }


def threshold_check(validated: Any, refused: FileRefused | None, spec: MappingSpec) -> dg.AssetCheckResult:
    share = validated.rows_rejected / validated.records_read if validated.records_read else 0.0
    return dg.AssetCheckResult(
        check_name="rejects_under_threshold",
        asset_key="validated_rows",
        passed=refused is None,
        metadata={
            "rows_read": validated.records_read,
            "rows_rejected": validated.rows_rejected,
            "rejected_share": dg.MetadataValue.float(round(share, 6)),
            "threshold": dg.MetadataValue.float(spec.reject_threshold),
            "failures": rejects_table(_failure_rows(validated.rejects)),
        },
    )


CHANGE_TYPES = ("new", "changed", "nochange", "dropped")


def change_type_counts(change_types: dict[str, int]) -> dict[str, Any]:
    """One int entry per change type (0 when absent), so Dagster plots each one over the months."""
    return {name: dg.MetadataValue.int(int(change_types.get(name, 0))) for name in CHANGE_TYPES}


def history_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    lineage = summary["lineage"]
    return {
        "dagster/row_count": dg.MetadataValue.int(summary["member_entries"]),
        "members": dg.MetadataValue.int(summary["member_entries"]),
        **change_type_counts(summary["change_types"]),
        "change_types": counts_table(summary["change_types"], "change_type"),
        "previous_month": summary.get("previous_month") or "none (first month)",
        "deliveries": dg.MetadataValue.table(
            records=[dg.TableRecord({"file_name": str(d.get("file_name")), "file_sha256": str(d.get("file_sha256")), "rows": int(d.get("rows") or 0)})
                     for d in lineage],
            schema=dg.TableSchema(columns=[dg.TableColumn("file_name", "string"), dg.TableColumn("file_sha256", "string"), dg.TableColumn("rows", "int")]),
        ),
        "trends": dg.MetadataValue.md(summary["trends_markdown"]),
        "trend_chart": dg.MetadataValue.md(summary["trend_bars"]),
        "trend_chart_vega_lite": dg.MetadataValue.json(summary["trend_chart"]),
    }


def history_check(summary: dict[str, Any]) -> dg.AssetCheckResult:
    dup = summary["duplicate_entries"]
    redropped = summary["dropped_twice"]
    return dg.AssetCheckResult(
        check_name="history_consistent",
        asset_key="attribution_snapshot",
        passed=dup == 0 and redropped == 0,
        metadata={"duplicate_member_entries": dup, "entries_dropped_twice": redropped},
    )


def resource_counts(counts: dict[str, int]) -> dict[str, Any]:
    """One int entry per resource type (``resources_Patient``...) plus the table of all of them."""
    out: dict[str, Any] = {f"resources_{t}": dg.MetadataValue.int(int(n)) for t, n in sorted(counts.items())}
    out["resources_by_type"] = counts_table(dict(sorted(counts.items())), "resource_type")
    return out


def fhir_metadata(built: Any, spec: MappingSpec) -> dict[str, Any]:
    from atr_pipeline.defs.lineage import fhir_lineage, lineage_markdown
    from atr_pipeline.systems import PROFILE_GROUP

    lineage = fhir_lineage(spec)
    return {
        "dagster/row_count": dg.MetadataValue.int(sum(built.resources_by_type.values())),
        **resource_counts(built.resources_by_type),
        "members": dg.MetadataValue.int(built.member_entries),
        **change_type_counts(built.change_types),
        "group_versions": counts_table({c: int(v) for c, v in sorted(built.group_versions.items())}, "contract_id"),
        "transaction_time": built.transaction_time.isoformat(),
        "dagster/column_lineage": dg.TableColumnLineage(deps_by_column={
            element: [dg.TableColumnDep(asset_key=dg.AssetKey("canonical_rows"), column_name=f) for f in fields]
            for element, fields in lineage.items()
        }),
        "column_lineage": dg.MetadataValue.md(lineage_markdown(lineage, spec)),
        "ig_group_profile": dg.MetadataValue.url(PROFILE_GROUP),
        **links(),
    }


def conformance_check(report: Any) -> dg.AssetCheckResult:
    errors = [r for r in report.results if r.severity == "error"]
    table = dg.MetadataValue.table(
        records=[dg.TableRecord({"rule": r.rule, "severity": r.severity, "count": r.count, "examples": ", ".join(r.examples)}) for r in report.results],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("rule", "string"), dg.TableColumn("severity", "string"),
            dg.TableColumn("count", "int"), dg.TableColumn("examples", "string"),
        ]),
    )
    return dg.AssetCheckResult(
        check_name="conformance_passed",
        asset_key="fhir_resources",
        passed=not errors,
        metadata={
            "resources_checked": report.resources_checked,
            "structurally_checked": report.structurally_checked,
            "errors": sum(r.count for r in errors),
            "results": table,
        },
    )


def export_metadata(export_dir: Path) -> dict[str, Any]:
    from atr_pipeline.publish.export import read_manifest

    manifest = read_manifest(export_dir)
    counts: dict[str, int] = {}
    for out in manifest.output:
        counts[out.type] = counts.get(out.type, 0) + out.count
    errors = sum(e.count for e in manifest.error)
    return {
        "export_dir": dg.MetadataValue.path(str(export_dir)),
        "manifest": dg.MetadataValue.path(str(export_dir / "manifest.json")),
        "transaction_time": manifest.transaction_time,
        **resource_counts(counts),
        "files": dg.MetadataValue.int(len(manifest.output)),
        "operation_outcomes": dg.MetadataValue.int(errors),
    }


def load_metadata(report: Any, server_counts: dict[str, int]) -> dict[str, Any]:
    return {
        "status": report.status,
        "server": report.server_url,
        "by_type": dg.MetadataValue.json({t: c.model_dump() for t, c in report.counts.items()}),
        "server_counts": dg.MetadataValue.json(server_counts),
        "failed_entries": report.total("failed"),
        "retries": report.retries,
        "elapsed_seconds": dg.MetadataValue.float(round(report.elapsed_seconds, 2)),
    }


def load_check(report: Any, server_counts: dict[str, int]) -> dg.AssetCheckResult:
    short = {t: (c.total, server_counts.get(t)) for t, c in report.counts.items()}
    missing = {t: v for t, v in short.items() if v[1] is not None and v[1] < v[0]}
    return dg.AssetCheckResult(
        check_name="load_complete",
        asset_key="server_load",
        passed=report.ok and report.total("failed") == 0 and not missing,
        metadata={"export_vs_server": dg.MetadataValue.json({t: {"export": e, "server": s} for t, (e, s) in short.items()}),
                  "failed_entries": report.total("failed")},
    )
