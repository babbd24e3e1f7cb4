"""What an analyst sees in the Dagster UI, read through a real dagster-webserver's GraphQL API.

One webserver over one temporary DAGSTER_HOME: two good acme_commercial months run in-process
against that instance (the UI must show runs it did not launch itself), an acme month with too
many bad rows (3 of 7, threshold 5%) and the daily lateness checks run in-process too, and a bad
statewide Medicaid month (trailer count 7 vs 5) is launched through the webserver's own launchRun
mutation, as the UI's "Materialize" button does. Every expected number is derived from the
fixture files and fixtures/README.md, not from the pipeline's own code.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from webserver_fixture import Webserver, start_webserver, write_dagster_yaml

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
GOLDEN_GRAPH = Path(__file__).parent / "golden" / "asset_graph.json"

GOOD = "2026-08-01|acme_commercial"
NEXT = "2026-09-01|acme_commercial"
BAD = "2026-08-01|statewide_medicaid"
# fixtures/bad/bad_values delivered as acme's October file: 3 of its 7 rows break rules.
OVER_THRESHOLD = "2026-10-01|acme_commercial"
BAD_VALUES = FIXTURES / "bad" / "bad_values" / "ACME_ATTRIB_202608.csv"
ACME_08 = FIXTURES / "acme_commercial" / "ACME_ATTRIB_202608.csv"
ACME_09 = FIXTURES / "acme_commercial" / "ACME_ATTRIB_202609.csv"
BAD_TRAILER = FIXTURES / "bad" / "trailer_count" / "SWMCD_ME_202608.txt"
LOCATION = "atr_pipeline.definitions"

METADATA = """metadataEntries { __typename label
  ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
  ... on TextMetadataEntry { text } ... on BoolMetadataEntry { boolValue }
  ... on JsonMetadataEntry { jsonString } ... on PathMetadataEntry { path }
  ... on MarkdownMetadataEntry { mdStr } ... on TableMetadataEntry { table { records } } ... on UrlMetadataEntry { url }
  ... on TableSchemaMetadataEntry { schema { columns { name type } } }
  ... on TableColumnLineageMetadataEntry { lineage { columnName columnDeps { assetKey { path } columnName } } } }"""

MATERIALIZATIONS = """query($key: AssetKeyInput!, $partition: String!) { assetOrError(assetKey: $key) {
  ... on Asset { assetMaterializations(partitions: [$partition], limit: 1) { partition runId """ + METADATA + """ } } } }"""

CHECK_EXECUTIONS = """query($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 20) {
    runId status partition evaluation { success partition """ + METADATA + """ } } }"""

ASSET_GRAPH = """{ assetNodes { assetKey { path } groupName isPartitioned
  dependencyKeys { path } assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }"""

LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""

RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status
  stepStats { stepKey status } } } }"""

STEP_FAILURES = """query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection { events { __typename
  ... on ExecutionStepFailureEvent { stepKey error { message } failureMetadata { """ + METADATA + """ } } } } } }"""

PARTITION_STATUSES = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  assetPartitionStatuses { ... on MultiPartitionStatuses { ranges { primaryDimStartKey primaryDimEndKey
  secondaryDim { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } } } } } }"""

PARTITION_KEYS = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  partitionKeysByDimension { name partitionKeys } } } }"""

SCHEDULE_DRY_RUN = """mutation($selector: ScheduleSelector!, $timestamp: Float) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) { __typename
  ... on DryRunInstigationTick { evaluationResult { skipReason error { message } runRequests { runKey tags { key value } } } }
  ... on PythonError { message } } }"""

SENSOR_DRY_RUN = """mutation($selector: SensorSelector!) { sensorDryRun(selectorData: $selector, cursor: null) { __typename
  ... on DryRunInstigationTick { evaluationResult { skipReason error { message errorChain { error { message } } } } }
  ... on PythonError { message } } }"""


# ---------------------------------------------------------------- the running UI


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    import dagster as dg

    base = tmp_path_factory.mktemp("ui")
    home, inbox, dagster_home, mappings = base / "home", base / "inbox", base / "dagster", base / "mappings"
    inbox.mkdir()
    shutil.copytree(ROOT / "mappings", mappings)
    for f in (ACME_08, ACME_09, BAD_TRAILER):
        shutil.copy2(f, inbox / f.name)
    shutil.copy2(BAD_VALUES, inbox / "ACME_ATTRIB_202610.csv")
    write_dagster_yaml(dagster_home)
    env = {
        "ATR_HOME": str(home),
        "ATR_INBOX": str(inbox),
        "ATR_ID_KEY": "ui-test-key",
        "ATR_MAPPINGS_DIR": str(mappings),
        "DAGSTER_HOME": str(dagster_home),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from atr_pipeline.definitions import defs

        job = defs.resolve_job_def("attribution_job")
        instance = dg.DagsterInstance.get()
        try:
            for key in (GOOD, NEXT, OVER_THRESHOLD):
                month, source = key.split("|")
                result = job.execute_in_process(
                    partition_key=dg.MultiPartitionKey({"month": month, "source": source}), instance=instance,
                    raise_on_error=False,
                )
                assert result.success is (key != OVER_THRESHOLD)
                if key == OVER_THRESHOLD:
                    threshold_run = result.run_id
            # the daily lateness checks, as their schedule runs them
            assert defs.resolve_job_def("delivery_check_job").execute_in_process(instance=instance).success
        finally:
            instance.dispose()
    server = start_webserver(dagster_home, env)
    server.mappings = mappings  # type: ignore[attr-defined]
    try:
        server.threshold_run_id = threshold_run  # type: ignore[attr-defined]
        server.bad_run_id = launch_partition(server, BAD)  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()
    assert server.process.returncode is not None


def launch_partition(server: Webserver, key: str, timeout: float = 150) -> str:
    """launchRun for one partition of attribution_job, as the UI's Materialize button does; wait for its end."""
    month, source = key.split("|")
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": "attribution_job"},
        "runConfigData": {},
        "executionMetadata": {"tags": [
            {"key": "dagster/partition", "value": key},
            {"key": "dagster/partition/month", "value": month},
            {"key": "dagster/partition/source", "value": source},
        ]},
    }
    launched = server.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = server.graphql(RUN_STATUS, {"id": run_id})["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run_id
        time.sleep(1)
    raise AssertionError(f"run {run_id} for {key} still {run['status']} after {timeout} s:\n{server.log_tail()}")


# ---------------------------------------------------------------- reading GraphQL answers


def entry_value(e: dict[str, Any]) -> Any:
    kind = e["__typename"]
    if kind == "IntMetadataEntry":
        return e["intValue"]
    if kind == "FloatMetadataEntry":
        return e["floatValue"]
    if kind == "TextMetadataEntry":
        return e["text"]
    if kind == "BoolMetadataEntry":
        return e["boolValue"]
    if kind == "JsonMetadataEntry":
        return json.loads(e["jsonString"])
    if kind == "PathMetadataEntry":
        return e["path"]
    if kind == "UrlMetadataEntry":
        return e["url"]
    if kind == "MarkdownMetadataEntry":
        return e["mdStr"]
    if kind == "TableMetadataEntry":
        return [json.loads(r) for r in e["table"]["records"]]
    if kind == "TableSchemaMetadataEntry":
        return [c["name"] for c in e["schema"]["columns"]]
    if kind == "TableColumnLineageMetadataEntry":
        return {c["columnName"]: sorted((d["assetKey"]["path"][-1], d["columnName"]) for d in c["columnDeps"]) for c in e["lineage"]}
    raise AssertionError(f"unexpected metadata entry type {kind} for {e['label']}")


def metadata(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["label"]: entry_value(e) for e in entries}


def materialization(server: Webserver, asset: str, partition: str) -> dict[str, Any] | None:
    """The latest materialization's metadata of one asset partition, or None when it never materialized."""
    found = server.graphql(MATERIALIZATIONS, {"key": {"path": [asset]}, "partition": partition})["assetOrError"]
    mats = found["assetMaterializations"]
    return metadata(mats[0]["metadataEntries"]) if mats else None


def check_results(server: Webserver, asset: str, check: str) -> dict[str, dict[str, Any]]:
    """partition -> {success, status, metadata} of the latest evaluation of a check per partition."""
    execs = server.graphql(CHECK_EXECUTIONS, {"key": {"path": [asset]}, "check": check})["assetCheckExecutions"]
    out: dict[str, dict[str, Any]] = {}
    for ex in execs:  # newest first
        ev = ex["evaluation"]
        if ev is None or ev["partition"] in out:
            continue
        out[ev["partition"]] = {"success": ev["success"], "status": ex["status"], "run": ex["runId"], "metadata": metadata(ev["metadataEntries"])}
    return out


def step_failures(server: Webserver, run_id: str) -> dict[str, dict[str, Any]]:
    """step -> {message, metadata} of every step failure event of a run."""
    events = server.graphql(STEP_FAILURES, {"id": run_id})["logsForRun"]["events"]
    return {e["stepKey"]: {"message": e["error"]["message"], "metadata": metadata(e["failureMetadata"]["metadataEntries"]) if e["failureMetadata"] else {}}
            for e in events if e["__typename"] == "ExecutionStepFailureEvent"}


def partition_statuses(server: Webserver, asset: str) -> dict[str, set[str]]:
    """{"materialized": {...}, "failed": {...}} as month|source keys: what the asset's partition bar shows."""
    ranges = server.graphql(PARTITION_STATUSES, {"key": {"path": [asset]}})["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
    out: dict[str, set[str]] = {"materialized": set(), "failed": set()}
    for r in ranges:
        months = {r["primaryDimStartKey"], r["primaryDimEndKey"]}  # the fixtures' ranges span at most two months
        for kind in out:
            out[kind] |= {f"{m}|{s}" for m in months for s in r["secondaryDim"][f"{kind}Partitions"]}
    return out


def table_counts(records: list[dict[str, Any]], key: str) -> dict[str, int]:
    return {r[key]: r["count"] for r in records}


# ---------------------------------------------------------------- what the fixtures say


def read_fixture(path: Path, source: str) -> pl.DataFrame:
    from atr_pipeline.layouts.read import read_file
    from atr_pipeline.layouts.spec import load_mapping

    return read_file(path, load_mapping(ROOT / "mappings" / f"{source}.yaml")).rows


def expected_resource_counts(rows: pl.DataFrame) -> dict[str, int]:
    """Resource counts by the identity rules of docs/FHIR.md, counted straight from the rows."""
    return {
        "Group": rows.select("payer_id", "contract_id").n_unique(),
        "Patient": rows.select("payer_id", "member_id").n_unique(),
        "Coverage": rows.select("payer_id", "member_id", "plan_id").n_unique(),
        "RelatedPerson": rows.filter(pl.col("relationship") != "self").select("payer_id", "subscriber_id", "member_id").n_unique(),
        "Practitioner": rows.filter(pl.col("provider_family_name").is_not_null()).select("provider_npi").n_unique(),
        # the payer + one per provider organization NPI (the fixtures name no settlement entity)
        "Organization": 1 + rows.select("provider_org_npi").n_unique(),
        "PractitionerRole": rows.select("provider_npi", "provider_org_npi").n_unique(),
    }


README_ROW = re.compile(r"^\| (\d{4}-\d{2}) \| ([a-z ]+) \| `(\w+)` \| (.*) \|$")


def readme_changes(source: str, month: str) -> list[tuple[str, str]]:
    section = (FIXTURES / "README.md").read_text().split(f"## {source}\n", 1)[1].split("\n## ", 1)[0]
    return [(m.group(2), m.group(3)) for line in section.splitlines() if (m := README_ROW.match(line)) and m.group(1) == month]


def expected_change_types(before: pl.DataFrame, after: pl.DataFrame, changes: list[tuple[str, str]]) -> dict[str, int]:
    """Entry keys only in `after` are new, only in `before` dropped; README 'changed' members' entries changed."""
    key = ["member_id", "payer_id", "contract_id", "plan_id", "provider_npi"]
    old = set(before.select(key).iter_rows())
    new = set(after.select(key).iter_rows())
    changed_members = {m for change, m in changes if change == "changed"}
    kept = old & new
    changed = {k for k in kept if k[0] in changed_members}
    # The README names exactly the members whose entries appear or disappear.
    moved = {m for change, m in changes if change in ("new", "dropped", "provider switch", "plan change")}
    assert {k[0] for k in (old ^ new)} == moved
    return {"new": len(new - old), "changed": len(changed), "nochange": len(kept - changed), "dropped": len(old - new)}


# ---------------------------------------------------------------- the asset graph


def test_asset_graph_in_the_ui_matches_the_snapshot(ui: Webserver) -> None:
    nodes = ui.graphql(ASSET_GRAPH)["assetNodes"]
    shown = {
        n["assetKey"]["path"][-1]: {
            "group": n["groupName"],
            "deps": sorted(d["path"][-1] for d in n["dependencyKeys"]),
            "checks": sorted(c["name"] for c in n["assetChecksOrError"]["checks"]),
            "partitioned": n["isPartitioned"],
        }
        for n in nodes
    }
    golden = json.loads(GOLDEN_GRAPH.read_text())["assets"]
    assert shown == {k: {f: v[f] for f in ("group", "deps", "checks", "partitioned")} for k, v in golden.items()}
    assert sorted(shown) == ["attribution_snapshot", "bulk_export", "canonical_rows", "fhir_resources",
                             "landed_file", "server_load", "validated_rows"]
    assert shown["bulk_export"]["deps"] == ["fhir_resources", "validated_rows"]
    blocking = {c["name"]: c["blocking"] for n in nodes for c in n["assetChecksOrError"]["checks"]}
    assert blocking == {"control_totals_match": True, "rejects_under_threshold": True, "history_consistent": True,
                        "conformance_passed": True, "load_complete": False,
                        "acme_commercial_delivered_on_time": False, "statewide_medicaid_delivered_on_time": False}


# ---------------------------------------------------------------- a good month


def test_good_month_counts(ui: Webserver) -> None:
    rows = read_fixture(ACME_08, "acme_commercial")
    data_lines = len(ACME_08.read_text().splitlines()) - 1  # one column-name line
    assert data_lines == 42 == rows.height

    landed = materialization(ui, "landed_file", GOOD)
    assert landed is not None
    assert landed["file_name"] == ACME_08.name
    assert landed["size_bytes"] == ACME_08.stat().st_size
    assert landed["sha256"] == rows["file_sha256"][0]
    assert landed["reporting_month"] == "2026-08"
    # links: the mapping file, the analyst guide, the IG
    assert landed["mapping_file"] == str(ui.mappings / "acme_commercial.yaml")  # type: ignore[attr-defined]
    assert landed["docs"] == str(ROOT / "docs" / "ANALYST.md")
    assert landed["ig"].startswith("https://hl7.org/fhir/us/davinci-atr")

    canonical = materialization(ui, "canonical_rows", GOOD)
    assert canonical is not None
    assert (canonical["records_read"], canonical["dagster/row_count"], canonical["structural_rejects"]) == (42, 42, 0)
    assert canonical["mapping"] == "acme_commercial"

    validated = materialization(ui, "validated_rows", GOOD)
    assert validated is not None
    assert (validated["rows_read"], validated["rows_accepted"], validated["rows_rejected"]) == (42, 42, 0)
    assert validated["rejects_by_rule"] == []
    assert validated["rejects_csv"].endswith("rejects/acme_commercial/2026-08/ACME_ATTRIB_202608.rejects.csv")

    snapshot = materialization(ui, "attribution_snapshot", GOOD)
    assert snapshot is not None
    assert snapshot["members"] == 42
    assert {k: snapshot[k] for k in ("new", "changed", "nochange", "dropped")} == {"new": 42, "changed": 0, "nochange": 0, "dropped": 0}
    assert table_counts(snapshot["change_types"], "change_type") == {"new": 42}
    assert snapshot["previous_month"] == "none (first month)"
    assert [(d["file_name"], d["file_sha256"], d["rows"]) for d in snapshot["deliveries"]] == [(ACME_08.name, landed["sha256"], 42)]

    want = expected_resource_counts(rows)
    assert want == {"Group": 2, "Patient": 40, "Coverage": 40, "RelatedPerson": 16, "Practitioner": 6,
                    "Organization": 3, "PractitionerRole": 6}
    fhir = materialization(ui, "fhir_resources", GOOD)
    assert fhir is not None
    assert table_counts(fhir["resources_by_type"], "resource_type") == want
    assert {t: fhir[f"resources_{t}"] for t in want} == want  # one int entry per type: Dagster plots them
    assert fhir["dagster/row_count"] == sum(want.values()) == 113
    assert fhir["ig_group_profile"] == "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/atr-group"

    export = materialization(ui, "bulk_export", GOOD)
    assert export is not None
    assert table_counts(export["resources_by_type"], "resource_type") == want
    assert {t: export[f"resources_{t}"] for t in want} == want
    assert (export["files"], export["operation_outcomes"]) == (7, 0)
    # The folder the UI points at holds exactly those NDJSON lines.
    folder = Path(export["export_dir"])
    assert {p.stem: len(p.read_bytes().splitlines()) for p in folder.glob("*.ndjson")} == want


def test_good_month_checks_passed(ui: Webserver) -> None:
    control = check_results(ui, "canonical_rows", "control_totals_match")[GOOD]
    # A CSV with no trailer declares no totals: the check compares what it can.
    assert control["success"] is True and control["status"] == "SUCCEEDED"
    assert control["metadata"]["actual_records"] == 42
    assert control["metadata"]["expected_records"] == "not declared"

    threshold = check_results(ui, "validated_rows", "rejects_under_threshold")[GOOD]
    assert threshold["success"] is True
    assert (threshold["metadata"]["rows_read"], threshold["metadata"]["rows_rejected"]) == (42, 0)
    assert threshold["metadata"]["threshold"] == yaml.safe_load((ROOT / "mappings" / "acme_commercial.yaml").read_text())["reject_threshold"]

    history = check_results(ui, "attribution_snapshot", "history_consistent")[GOOD]
    assert history["success"] is True
    assert history["metadata"] == {"duplicate_member_entries": 0, "entries_dropped_twice": 0}

    conformance = check_results(ui, "fhir_resources", "conformance_passed")[GOOD]
    assert conformance["success"] is True
    assert conformance["metadata"]["errors"] == 0
    assert conformance["metadata"]["resources_checked"] == 113


def test_next_month_change_types_match_the_fixture_readme(ui: Webserver) -> None:
    before = read_fixture(ACME_08, "acme_commercial")
    after = read_fixture(ACME_09, "acme_commercial")
    want = expected_change_types(before, after, readme_changes("acme_commercial", "2026-09"))
    assert want == {"new": 3, "changed": 1, "nochange": 36, "dropped": 5}

    snapshot = materialization(ui, "attribution_snapshot", NEXT)
    assert snapshot is not None
    assert {k: snapshot[k] for k in want} == want
    assert table_counts(snapshot["change_types"], "change_type") == want
    assert snapshot["previous_month"] == "2026-08"
    # a dropped entry stays in the month's list (inactive) once, so the list is 40 + 5
    assert snapshot["members"] == after.height + want["dropped"] == 45
    fhir = materialization(ui, "fhir_resources", NEXT)
    assert fhir is not None and {k: fhir[k] for k in want} == want
    assert check_results(ui, "attribution_snapshot", "history_consistent")[NEXT]["success"] is True


# ---------------------------------------------------------------- a refused month


def test_refused_file_fails_the_asset_that_refused_it(ui: Webserver) -> None:
    run = ui.graphql(RUN_STATUS, {"id": ui.bad_run_id})["runOrError"]  # type: ignore[attr-defined]
    assert run["status"] == "FAILURE"
    steps = {s["stepKey"]: s["status"] for s in run["stepStats"]}
    assert steps["landed_file"] == "SUCCESS"
    assert steps["canonical_rows"] == "FAILURE"  # the asset that refused the file is the red one
    for later in ("validated_rows", "attribution_snapshot", "fhir_resources", "bulk_export"):
        assert steps.get(later, "SKIPPED") == "SKIPPED", later  # not run, not red

    # The header record declares 7 detail records; the file has 5 (fixtures/README.md).
    lines = BAD_TRAILER.read_text(encoding="latin-1").splitlines()
    assert (int(lines[0][30:39]), sum(1 for line in lines if line.startswith("ME"))) == (7, 5)

    failure = step_failures(ui, ui.bad_run_id)["canonical_rows"]  # type: ignore[attr-defined]
    assert "refused (trailer_count)" in failure["message"]
    assert "header says 7 detail records, the file has 5" in failure["message"]
    assert failure["metadata"]["rule"] == "trailer_count"
    assert failure["metadata"]["file"] == BAD_TRAILER.name

    # its own check, on its own partition, in that run, says the same
    control = check_results(ui, "canonical_rows", "control_totals_match")[BAD]
    assert control["success"] is False and control["status"] == "FAILED"
    assert control["run"] == ui.bad_run_id  # type: ignore[attr-defined]
    assert control["metadata"]["rule"] == "trailer_count"
    assert control["metadata"]["reason"] == "header says 7 detail records, the file has 5"
    assert control["metadata"]["what_to_do"].startswith("Ask the sender for a corrected file")

    # nothing materialized from the refused file, the refusing asset included
    for asset in ("canonical_rows", "validated_rows", "attribution_snapshot", "fhir_resources", "bulk_export"):
        assert materialization(ui, asset, BAD) is None, asset
    assert materialization(ui, "landed_file", BAD) is not None


def test_file_over_the_reject_threshold_fails_validated_rows_with_the_numbers(ui: Webserver) -> None:
    run_id = ui.threshold_run_id  # type: ignore[attr-defined]
    steps = {s["stepKey"]: s["status"] for s in ui.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["stepStats"]}
    assert (steps["landed_file"], steps["canonical_rows"], steps["validated_rows"]) == ("SUCCESS", "SUCCESS", "FAILURE")
    assert steps.get("attribution_snapshot", "SKIPPED") == "SKIPPED"

    rows = len(BAD_VALUES.read_text().splitlines()) - 1
    failure = step_failures(ui, run_id)["validated_rows"]
    assert failure["metadata"]["rule"] == "reject_threshold"
    assert (failure["metadata"]["rows_read"], failure["metadata"]["rows_rejected"]) == (rows, 3) == (7, 3)
    assert failure["metadata"]["threshold"] == 0.05
    assert "3 of 7 rows rejected (42.9%)" in failure["message"]

    threshold = check_results(ui, "validated_rows", "rejects_under_threshold")[OVER_THRESHOLD]
    assert threshold["success"] is False and threshold["status"] == "FAILED" and threshold["run"] == run_id
    assert (threshold["metadata"]["rows_read"], threshold["metadata"]["rows_rejected"]) == (7, 3)
    assert sum(r["rows"] for r in threshold["metadata"]["failures"]) == 3
    assert check_results(ui, "canonical_rows", "control_totals_match")[OVER_THRESHOLD]["success"] is True
    assert materialization(ui, "canonical_rows", OVER_THRESHOLD) is not None
    assert materialization(ui, "validated_rows", OVER_THRESHOLD) is None

    # the partition bars: red on the asset that refused each file, never green
    canonical, validated = partition_statuses(ui, "canonical_rows"), partition_statuses(ui, "validated_rows")
    assert canonical["failed"] == {BAD}
    assert OVER_THRESHOLD in canonical["materialized"]
    assert OVER_THRESHOLD in validated["failed"] and OVER_THRESHOLD not in validated["materialized"]
    # Dagster also paints a step that a failed run never reached red in the bar (BAD here); the
    # run's own view shows it as not run (test_refused_file_fails_the_asset_that_refused_it).
    assert validated["failed"] == {BAD, OVER_THRESHOLD} and validated["materialized"] == {GOOD, NEXT}


# ---------------------------------------------------------------- a late month


def test_late_month_turns_the_sources_delivery_check_red(ui: Webserver) -> None:
    from datetime import date

    today = date.today()
    # acme delivered 2026-08 and 2026-09 (its 2026-10 file was refused); due on day 5 of the next month
    first_of_this = today.replace(day=1)
    prev = date(first_of_this.year - (first_of_this.month == 1), (first_of_this.month - 2) % 12 + 1, 1)
    latest_due = prev if today.day >= 5 else date(prev.year - (prev.month == 1), (prev.month - 2) % 12 + 1, 1)
    assert latest_due > date(2026, 9, 1), "this test's fixtures assume a date after 2026-10-05"
    acme = check_results(ui, "landed_file", "acme_commercial_delivered_on_time")[None]
    assert acme["success"] is False and acme["status"] == "FAILED"
    assert acme["metadata"]["latest_due_month"] == f"{latest_due:%Y-%m}"
    assert acme["metadata"]["due_date"] == f"{latest_due.year + (latest_due.month == 12)}-{latest_due.month % 12 + 1:02d}-05"
    assert acme["metadata"]["first_delivered_month"] == "2026-08"
    missing = acme["metadata"]["missing_months"].split(", ")
    assert missing[0] == "2026-10" and missing[-1] == f"{latest_due:%Y-%m}"
    assert acme["metadata"]["months_missing"] == len(missing)
    assert acme["metadata"]["days_late"] == (today - date.fromisoformat(acme["metadata"]["due_date"])).days
    assert (acme["metadata"]["first_month"], acme["metadata"]["counted_from"]) == ("2026-08", "first_month in the mapping")
    # statewide's only file (2026-08) was refused: nothing delivered, yet late from its first_month on
    statewide = check_results(ui, "landed_file", "statewide_medicaid_delivered_on_time")[None]
    assert statewide["success"] is False
    assert statewide["metadata"]["first_delivered_month"] == "none yet"
    assert statewide["metadata"]["first_month"] == "2026-08"
    assert statewide["metadata"]["missing_months"].split(", ")[0] == "2026-08"
    assert statewide["metadata"]["latest_due_month"] == f"{latest_due:%Y-%m}"


# ---------------------------------------------------------------- column lineage


def mapped_columns(source: str) -> dict[str, str]:
    """canonical field -> source column, straight from the mapping YAML (column-mapped fields only)."""
    fields = yaml.safe_load((ROOT / "mappings" / f"{source}.yaml").read_text())["fields"]
    return {name: str(f["column"]) for name, f in fields.items() if isinstance(f, dict) and "column" in f}


def test_canonical_rows_column_lineage(ui: Webserver) -> None:
    canonical = materialization(ui, "canonical_rows", GOOD)
    assert canonical is not None
    columns = mapped_columns("acme_commercial")
    assert len(columns) == 36
    assert canonical["dagster/column_lineage"] == {name: [("landed_file", col)] for name, col in columns.items()}
    assert canonical["dagster/column_lineage"]["birth_date"] == [("landed_file", "DOB")]
    from atr_pipeline.canonical import FIELDS

    assert canonical["dagster/column_schema"] == [f.name for f in FIELDS]


def test_fhir_resources_column_lineage(ui: Webserver) -> None:
    fhir = materialization(ui, "fhir_resources", GOOD)
    assert fhir is not None
    lineage = fhir["dagster/column_lineage"]
    assert lineage["Patient.birthDate"] == [("canonical_rows", "birth_date")]
    assert lineage["Coverage.class.value"] == [("canonical_rows", "plan_id")]
    assert lineage["Group.identifier[contract-id].value"] == [("canonical_rows", "contract_id")]
    # the Group's NPI identifier is the provider organization's NPI, not the practitioner's
    assert lineage["Group.identifier[us-npi].value"] == [("canonical_rows", "provider_org_npi")]
    assert lineage["Practitioner.identifier[us-npi].value"] == [("canonical_rows", "provider_npi")]
    # shown where an analyst looks: a markdown table in the asset's metadata
    table = fhir["column_lineage"]
    assert "| `Group.identifier[us-npi].value` | `provider_org_npi` | PCP_GROUP_NPI |" in table.splitlines()
    fields = yaml.safe_load((ROOT / "mappings" / "acme_commercial.yaml").read_text())["fields"]
    assert {f for deps in lineage.values() for _, f in deps} <= set(fields)


def test_column_lineage_table_names_column_field_and_element(ui: Webserver) -> None:
    canonical = materialization(ui, "canonical_rows", GOOD)
    fhir = materialization(ui, "fhir_resources", GOOD)
    assert canonical is not None and fhir is not None
    table = canonical["column_lineage_table"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    by_field = {r[1].strip("`"): (r[0], r[2]) for r in rows}
    fields = yaml.safe_load((ROOT / "mappings" / "acme_commercial.yaml").read_text())["fields"]
    assert set(by_field) == set(fields)
    carried: dict[str, set[str]] = {}
    for element, deps in fhir["dagster/column_lineage"].items():
        for _, f in deps:
            carried.setdefault(f, set()).add(element)
    for name, column in mapped_columns("acme_commercial").items():
        elements = {e.strip("` ") for e in by_field[name][1].split(",")} if name in carried else {"(not in FHIR)"}
        assert by_field[name][0] == column, name
        assert elements == carried.get(name, {"(not in FHIR)"}), name
    assert by_field["payer_id"][0] == "constant `ACME01`"
    assert by_field["birth_date"] == ("DOB", "`Patient.birthDate`")


# ---------------------------------------------------------------- a broken mapping


def test_broken_mapping_fails_the_mapping_errors_sensor_tick(ui: Webserver) -> None:
    """The UI's "Test sensor" (sensorDryRun) on mapping_errors_sensor: green, then red naming the file and key."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "sensorName": "mapping_errors_sensor"}
    ok = ui.graphql(SENSOR_DRY_RUN, {"selector": selector})["sensorDryRun"]["evaluationResult"]
    assert ok["error"] is None and ok["skipReason"].startswith("all 2 mapping(s)")
    broken = ui.mappings / "broken_payer.yaml"  # type: ignore[attr-defined]
    broken.write_text((ui.mappings / "acme_commercial.yaml").read_text().replace("reject_threshold: 0.05", "reject_threshold: lots"))  # type: ignore[attr-defined]
    try:
        for _ in range(2):  # every tick, not once
            tick = ui.graphql(SENSOR_DRY_RUN, {"selector": selector})["sensorDryRun"]["evaluationResult"]
            assert tick["error"] is not None
            # what the UI shows under the failed tick: Dagster's wrapper, then our error
            message = "\n".join([tick["error"]["message"], *(c["error"]["message"] for c in tick["error"]["errorChain"])])
            assert "MappingErrors" in message
            assert "broken_payer.yaml" in message and "reject_threshold" in message
            assert "2 valid mapping(s) keep running" in message
    finally:
        broken.unlink()


# ---------------------------------------------------------------- partitions and schedules


def test_partition_bar_starts_at_the_sources_first_month(ui: Webserver) -> None:
    """The month axis an analyst sees starts at the mappings' first_month (2026-08), not at a fixed 2025-01."""
    from datetime import date

    node = ui.graphql(PARTITION_KEYS, {"key": {"path": ["landed_file"]}})["assetNodeOrError"]
    dims = {d["name"]: d["partitionKeys"] for d in node["partitionKeysByDimension"]}
    assert dims["source"] == ["acme_commercial", "statewide_medicaid"]
    today = date.today()
    months, month = [], date(2026, 8, 1)
    while month <= today:  # through the current month (its file is being delivered)
        months.append(f"{month:%Y-%m-%d}")
        month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    assert dims["month"] == months


@pytest.mark.parametrize(("tick", "requested"), [
    ("2026-10-05T06:00:00+00:00", "2026-09-01|{source}"),
    ("2026-08-05T06:00:00+00:00", None),  # July: before the sources' first month
])
def test_test_schedule_in_the_ui_shows_the_month_it_would_run(ui: Webserver, tick: str, requested: str | None) -> None:
    """The UI's "Test schedule" (scheduleDryRun) for a chosen tick: the previous month of that source, or why not."""
    from datetime import datetime

    for source in ("acme_commercial", "statewide_medicaid"):
        selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                    "scheduleName": f"{source}_monthly_schedule"}
        result = ui.graphql(SCHEDULE_DRY_RUN, {"selector": selector, "timestamp": datetime.fromisoformat(tick).timestamp()})
        evaluation = result["scheduleDryRun"]["evaluationResult"]
        assert evaluation["error"] is None
        if requested is None:
            assert evaluation["runRequests"] == []
            assert evaluation["skipReason"] == (f"{source}: 2026-07 is before its first month 2026-08 "
                                                "(first_month in its mapping, else ATR_PARTITIONS_START)")
        else:
            (request,) = evaluation["runRequests"]
            tags = {t["key"]: t["value"] for t in request["tags"]}
            assert tags["dagster/partition"] == requested.format(source=source)
            assert request["runKey"] == f"schedule:{source}:2026-09"
