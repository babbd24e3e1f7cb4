"""check_export on hand-written export directories, check_ndjson_frames, sampling, the CLI, and the
report's promises (no PHI, deterministic, every rule documented)."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path

import orjson
import polars as pl
import pytest
from test_conform_rules import valid_set
from typer.testing import CliRunner

from atr_pipeline import systems as S
from atr_pipeline.conform import RULES, check_export, check_ndjson_frames, check_resources
from atr_pipeline.conform.cli import app
from atr_pipeline.errors import AtrError

DOCS = Path(__file__).parent.parent / "docs" / "CONFORMANCE.md"


def fired(report) -> dict:
    return {r.rule: r for r in report.results}


def by_type(resources: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in resources:
        out.setdefault(r["resourceType"], []).append(r)
    return out


def write_export(directory: Path, resources: list[dict], *, counts: dict[str, int] | None = None) -> Path:
    """Manifest + one NDJSON per type; Patient gzipped; Organization listed by an absolute url."""
    directory.mkdir(parents=True, exist_ok=True)
    output = []
    for rtype, items in sorted(by_type(resources).items()):
        name = f"{rtype}.ndjson.gz" if rtype == "Patient" else f"{rtype}.ndjson"
        body = b"".join(orjson.dumps(r) + b"\n" for r in items)
        if name.endswith(".gz"):
            (directory / name).write_bytes(gzip.compress(body, mtime=0))
        else:
            (directory / name).write_bytes(body)
        url = f"https://fhir.example.org/bulk/job-1/{name}" if rtype == "Organization" else name
        output.append({"type": rtype, "url": url, "count": (counts or {}).get(rtype, len(items))})
    manifest = {"transactionTime": "2026-10-01T00:00:00Z", "request": "Group/grp-1/$davinci-data-export",
                "requiresAccessToken": True, "output": output, "error": []}
    (directory / "manifest.json").write_bytes(orjson.dumps(manifest))
    return directory


def test_valid_export_passes(tmp_path):
    report = check_export(write_export(tmp_path / "exp", valid_set()))
    assert report.results == []
    assert report.ok is True
    assert report.resources_checked == 10
    assert report.structurally_checked == 10
    assert report.by_type["Patient"] == 2  # read from the .ndjson.gz file


def test_manifest_count_mismatch_names_the_file(tmp_path):
    report = check_export(write_export(tmp_path / "exp", valid_set(), counts={"Coverage": 3}))
    assert [(r.rule, r.count, r.examples) for r in report.results] == [
        ("export.count-mismatch", 1, ["Coverage.ndjson"])
    ]
    assert report.ok is False


def test_missing_listed_file_and_unlisted_file(tmp_path):
    exp = write_export(tmp_path / "exp", valid_set())
    (exp / "Practitioner.ndjson").rename(exp / "Stray.ndjson")
    hits = fired(check_export(exp))
    assert hits["export.file-missing"].examples == ["Practitioner.ndjson"]
    assert hits["export.file-unlisted"].examples == ["Stray.ndjson"]
    assert hits["export.file-unlisted"].severity == "error"  # a file the manifest does not list fails the export
    # the Practitioner is gone, so the PractitionerRole and the Group member point nowhere
    assert hits["ref.unresolved"].count == 2
    assert set(hits) == {"export.file-missing", "export.file-unlisted", "ref.unresolved"}


def test_resource_in_the_wrong_file_and_blank_lines(tmp_path):
    exp = write_export(tmp_path / "exp", valid_set())
    coverage = exp / "Coverage.ndjson"
    patient = orjson.dumps(dict(valid_set()[4], id="pat-9"))
    coverage.write_bytes(coverage.read_bytes() + b"\n" + patient + b"\n")
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    next(o for o in manifest["output"] if o["type"] == "Coverage")["count"] = 3
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))
    hits = fired(check_export(exp))
    assert hits["export.type-mismatch"].examples == ["Patient/pat-9"]
    assert (hits["export.blank-line"].count, hits["export.blank-line"].examples) == (1, ["Coverage.ndjson"])
    assert set(hits) == {"export.type-mismatch", "export.blank-line"}


def test_manifest_listing_nothing_fails(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "manifest.json").write_bytes(orjson.dumps({"output": []}))
    report = check_export(exp)
    hits = fired(report)
    assert hits["export.output-empty"].examples == ["manifest.json"]
    assert hits["export.type-absent"].examples == ["Group", "Patient", "Coverage"]
    assert report.ok is False


@pytest.mark.parametrize("missing", ["Group", "Patient", "Coverage"])
def test_export_without_a_required_type_fails(tmp_path, missing):
    """The type's file is gone from the manifest (and the folder): not an attribution list."""
    exp = write_export(tmp_path / "exp", [r for r in valid_set() if r["resourceType"] != missing])
    report = check_export(exp)
    hits = fired(report)
    assert hits["export.type-absent"].examples == [missing]
    assert hits["export.type-absent"].severity == "error"
    assert report.ok is False


def test_file_removed_from_manifest_fails(tmp_path):
    exp = write_export(tmp_path / "exp", valid_set())
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    manifest["output"] = [o for o in manifest["output"] if o["type"] != "Group"]
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))
    report = check_export(exp)
    hits = fired(report)
    assert hits["export.file-unlisted"].examples == ["Group.ndjson"]
    assert hits["export.type-absent"].examples == ["Group"]
    assert report.ok is False


def test_export_without_manifest_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AtrError, match="no manifest.json"):
        check_export(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text('{"output": "nope"}')
    with pytest.raises(AtrError, match="'output' list"):
        check_export(tmp_path / "empty")


def frames_of(resources: list[dict]) -> dict[str, pl.DataFrame]:
    return {
        rtype: pl.DataFrame({"id": [r["id"] for r in items], "json": [orjson.dumps(r).decode() for r in items]})
        for rtype, items in by_type(resources).items()
    }


def test_frames_fast_path_matches_the_dict_path():
    resources = valid_set()
    resources[-1]["member"][0]["extension"][0]["valueCode"] = "add"
    from_frames = check_ndjson_frames(frames_of(resources), structural="none")
    from_dicts = check_resources(resources, structural="none")
    assert from_frames.results == from_dicts.results
    assert [r.rule for r in from_frames.results] == ["group.member.changeType.code"]


def test_frames_id_and_type_mismatch():
    frames = frames_of(valid_set())
    frames["Patient"] = frames["Patient"].with_columns(pl.Series("id", ["pat-1", "pat-x"]))
    frames["Practitioner"] = frames["Organization"].head(1)
    del frames["Organization"]
    hits = fired(check_ndjson_frames(frames, structural="none"))
    assert hits["export.id-mismatch"].examples == ["Patient/pat-2"]
    assert hits["export.type-mismatch"].examples == ["Organization/org-payer"]


def many_patients(n: int, broken_every: int = 0) -> list[dict]:
    base = valid_set()[4]
    out = []
    for i in range(n):
        p = copy.deepcopy(base)
        p["id"] = f"pat-g{i}"
        if broken_every and i % broken_every == 0:
            p["unknownElement"] = True  # only the R4 structure check sees this
        out.append(p)
    return out


def test_sample_mode_checks_a_seeded_sample():
    resources = many_patients(200, broken_every=4)  # 50 structurally broken
    full = check_resources(resources, structural="all")
    assert fired(full)["r4.structure"].count == 50
    first = check_resources(resources, structural="sample", sample_size=20, seed=7)
    again = check_resources(resources, structural="sample", sample_size=20, seed=7)
    assert first.structurally_checked == 20
    assert first.to_dict() == again.to_dict()
    sampled = fired(first).get("r4.structure")
    assert sampled is not None and 0 < sampled.count <= 20
    everything = check_resources(resources, structural="sample", sample_size=1000)
    assert everything.structurally_checked == 200
    assert fired(everything)["r4.structure"].count == 50
    none = check_resources(resources, structural="none")
    assert none.structurally_checked == 0
    assert none.results == []


def test_invalid_structural_mode_is_refused():
    with pytest.raises(ValueError, match="structural"):
        check_resources([], structural="some")


def test_report_never_carries_phi_values():
    resources = valid_set()
    pat = resources[4]
    pat["name"][0]["family"] = "Zebulonsky"
    pat["identifier"][0]["value"] = "MEMBER-77731"
    pat["birthDate"] = ""  # json.empty on a PHI element
    pat["gender"] = "Zebulonsky"  # binding failure whose value is PHI-like
    pat["identifier"][0]["type"]["coding"].append({"system": "http://example.org/t", "code": "MEMBER-77731"})
    report = check_resources(resources, structural="all")
    text = orjson.dumps(report.to_dict()).decode() + report.to_markdown()
    assert {"json.empty", "patient.gender.binding", "patient.identifier.slice.coding-count"} <= set(fired(report))
    for secret in ("Zebulonsky", "MEMBER-77731", "Synthetic1"):
        assert secret not in text


def test_report_output_is_deterministic_and_sorted():
    resources = valid_set()
    resources[-1]["type"] = "animal"
    resources[4]["gender"] = "F"
    one = check_resources(resources).to_markdown()
    two = check_resources(copy.deepcopy(resources)).to_markdown()
    assert one == two
    rules = [r.rule for r in check_resources(resources).results]
    assert rules == sorted(rules) == ["group.type.fixed", "patient.gender.binding"]
    assert "| `group.type.fixed` | error | 1 | Group/grp-1 | Group.type |" in one


def generated_set(n_members: int) -> list[dict]:
    """A valid ATR set with one Group of n_members (one Patient and Coverage each)."""
    base = valid_set()
    orgs, prac, role = base[:2], base[2], base[3]
    pat0, cov0, group = base[4], base[7], base[9]
    patients, coverages, members = [], [], []
    member0 = group["member"][0]
    for i in range(n_members):
        p = copy.deepcopy(pat0)
        p["id"] = f"pat-{i:07d}"
        c = copy.deepcopy(cov0)
        c["id"] = f"cov-{i:07d}"
        c["beneficiary"] = c["subscriber"] = {"reference": f"Patient/{p['id']}"}
        m = copy.deepcopy(member0)
        m["entity"] = {"reference": f"Patient/{p['id']}"}
        m["extension"][1]["valueReference"] = {"reference": f"Coverage/{c['id']}"}
        patients.append(p)
        coverages.append(c)
        members.append(m)
    group = dict(group, member=members, quantity=n_members)
    return [*orgs, prac, role, *patients, *coverages, group]


def test_generated_set_of_3000_members_passes_through_frames_and_export(tmp_path):
    resources = generated_set(3000)
    report = check_ndjson_frames(frames_of(resources), structural="sample", sample_size=50)
    assert report.results == []
    assert report.resources_checked == 6005
    assert report.structurally_checked == 50
    exp = write_export(tmp_path / "big", resources)
    assert check_export(exp, structural="none").to_dict() == dict(
        report.to_dict(), structurally_checked=0
    )


runner = CliRunner()


def test_cli_passes_a_valid_export(tmp_path):
    exp = write_export(tmp_path / "exp", valid_set())
    result = runner.invoke(app, [str(exp), "--structural", "sample", "--sample-size", "3"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    assert "R4 structure checked 3" in result.output


def test_cli_fails_with_rule_table_and_json(tmp_path):
    resources = valid_set()
    resources[-1]["member"][0]["extension"][0]["valueCode"] = "add"
    exp = write_export(tmp_path / "exp", resources)
    result = runner.invoke(app, [str(exp)])
    assert result.exit_code == 1
    assert "group.member.changeType.code" in result.output
    assert "Group/grp-1" in result.output
    as_json = runner.invoke(app, [str(exp), "--json-out"])
    assert as_json.exit_code == 1
    payload = orjson.loads(as_json.output)
    assert payload["ok"] is False
    assert [(r["rule"], r["count"], r["examples"]) for r in payload["results"]] == [
        ("group.member.changeType.code", 1, ["Group/grp-1"])
    ]


def test_cli_usage_errors_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    assert runner.invoke(app, [str(tmp_path / "empty")]).exit_code == 2
    exp = write_export(tmp_path / "exp", valid_set())
    assert runner.invoke(app, [str(exp), "--structural", "some"]).exit_code == 2


def test_every_rule_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    missing = [rule for rule in RULES if f"`{rule}`" not in text]
    assert missing == []
    assert "assume_profiles" in text
    assert S.PROFILE_GROUP in text


def test_error_files_in_the_manifest_are_listed_and_counted_but_not_checked_as_atr(tmp_path):
    exp = write_export(tmp_path / "exp", valid_set())
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}
    (exp / "OperationOutcome.ndjson").write_bytes(orjson.dumps(outcome) + b"\n" + orjson.dumps(outcome) + b"\n")
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    manifest["error"] = [{"type": "OperationOutcome", "url": "OperationOutcome.ndjson", "count": 2}]
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))
    report = check_export(exp)
    assert report.results == []
    assert report.resources_checked == 10
    manifest["error"][0]["count"] = 5
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))
    assert [(r.rule, r.examples) for r in check_export(exp).results] == [
        ("export.count-mismatch", ["OperationOutcome.ndjson"])
    ]
