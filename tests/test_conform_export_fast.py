"""`atr conform` on a pipeline-built export runs the run's own checks at the run's speed.

By default every cheap rule runs on every resource (column-wise, conform/fast.py, as the run's
stage does) and the R4B structure check on the run's seeded sample (conform/plan.py); ``--full``
checks the structure of every resource. The column reader must give the line reader's report
exactly, or decline to it: planted errors are looked for inside and outside the sample.
"""

from __future__ import annotations

import gzip
import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from atr_cli import atr
from conform_frames import built_frames
from test_perf_conform_fast import MUTATIONS

import atr_pipeline.conform.fast as fast
from atr_pipeline.conform import check_export
from atr_pipeline.conform.checker import frame_order
from atr_pipeline.publish.export import write_bulk_export

SAMPLE = 40
# The run's rule with a small limit, so a 1,500-member export (~3,000 resources) is sampled.
ENV = {"ATR_CONFORM_FULL_MAX": "100", "ATR_CONFORM_SAMPLE_SIZE": str(SAMPLE)}
BIRTH = re.compile(r'"birthDate":"(\d{4})-\d\d')


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return built_frames(members=1500, seed=3)


def export_of(directory: Path, frames: dict[str, pl.DataFrame], gz: bool = False) -> Path:
    # 700 lines per file: several files per bulk type, read one at a time like a staged build.
    write_bulk_export(directory, frames, errors=None, transaction_time=datetime(2026, 9, 5, tzinfo=UTC),
                      request="test", max_lines_per_file=700, gzip=gz)
    return directory


def stream(exp: Path) -> list[tuple[str, int, str]]:
    """(file name, line index, Type/id) of every resource in the order the checks read them."""
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    by_type: dict[str, list[str]] = {}
    for entry in manifest["output"]:
        by_type.setdefault(entry["type"], []).append(entry["url"].rsplit("/", 1)[-1])
    out = []
    for rtype in frame_order(by_type):
        for name in by_type[rtype]:
            for i, line in enumerate((exp / name).read_bytes().splitlines()):
                out.append((name, i, f"{rtype}/{orjson.loads(line)['id']}"))
    return out


def edit_line(exp: Path, name: str, index: int, edit) -> None:
    path = exp / name
    lines = path.read_bytes().split(b"\n")
    changed = edit(lines[index].decode()).encode()
    assert changed != lines[index]
    lines[index] = changed
    path.write_bytes(b"\n".join(lines))


def sampled(exp: Path, size: int = SAMPLE, seed: int = 0) -> set[int]:
    return set(fast._reservoir(len(stream(exp)), size, seed))


def patient_with_birth_date(exp: Path, *, in_sample: bool) -> tuple[str, int, str]:
    picks = sampled(exp)
    for pos, (name, i, key) in enumerate(stream(exp)):
        if key.startswith("Patient/") and (pos in picks) == in_sample:
            if BIRTH.search((exp / name).read_bytes().split(b"\n")[i].decode()):
                return name, i, key
    raise AssertionError("no such patient")


def plant_bad_birth_date(exp: Path, *, in_sample: bool) -> str:
    """A birthDate in month 13: no cheap rule sees it, the R4B models do (r4.structure)."""
    name, i, key = patient_with_birth_date(exp, in_sample=in_sample)
    edit_line(exp, name, i, lambda t: BIRTH.sub(r'"birthDate":"\1-13', t, count=1))
    return key


@pytest.fixture
def spy(monkeypatch):
    """Whether check_export's column-wise proof gave the report (True) or declined (False)."""
    calls: list[bool] = []
    real = fast.fast_report

    def watched(*args, **kwargs):
        report = real(*args, **kwargs)
        calls.append(report is not None)
        return report

    monkeypatch.setattr(fast, "fast_report", watched)
    return calls


def both(exp: Path, **kw):
    kw = {"structural": "sample", "sample_size": SAMPLE, **kw}
    return check_export(exp, **kw), check_export(exp, fast=False, **kw)


@pytest.mark.parametrize("gz", [False, True])
def test_pipeline_export_takes_the_column_path_with_the_line_path_report(tmp_path, frames, spy, gz):
    exp = export_of(tmp_path / "exp", frames, gz=gz)
    quick, lines = both(exp)
    assert spy == [True]
    assert quick == lines
    assert quick.ok and quick.results == []
    assert quick.structurally_checked == SAMPLE
    assert quick.resources_checked == sum(df.height for df in frames.values())


def test_default_samples_structure_and_full_checks_every_resource(tmp_path, frames):
    outside = export_of(tmp_path / "outside", frames)
    key = plant_bad_birth_date(outside, in_sample=False)
    res = atr("conform", str(outside), "--json-out", env=ENV)
    assert res.returncode == 0, res.stdout + res.stderr
    report = orjson.loads(res.stdout)
    assert report["structurally_checked"] == SAMPLE and report["results"] == []
    assert report["resources_per_second"] > 0 and report["seconds"] > 0

    res = atr("conform", str(outside), "--full", env=ENV)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"R4 structure checked {report['resources_checked']}" in res.stdout
    assert "r4.structure" in res.stdout and key in res.stdout
    assert "resources/s" in res.stdout

    inside = export_of(tmp_path / "inside", frames)
    key = plant_bad_birth_date(inside, in_sample=True)
    res = atr("conform", str(inside), env=ENV)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"R4 structure checked {SAMPLE}" in res.stdout
    assert "r4.structure" in res.stdout and key in res.stdout and "resources/s" in res.stdout


def test_full_is_the_structure_check_of_every_resource(tmp_path, frames):
    exp = export_of(tmp_path / "exp", frames)
    key = plant_bad_birth_date(exp, in_sample=False)
    report = check_export(exp, structural="all")
    assert report.structurally_checked == report.resources_checked
    assert [(r.rule, r.examples) for r in report.results] == [("r4.structure", [key])]


@pytest.mark.parametrize(("rtype", "old", "new", "rule"), [m for m in MUTATIONS if m[3]])
def test_default_reports_every_cheap_rule_outside_the_sample(tmp_path, frames, spy, rtype, old, new, rule):
    exp = export_of(tmp_path / "exp", frames)
    picks = sampled(exp)
    # The last resource of the type that the sample does not hold.
    pos, (name, i, key) = next((p, s) for p, s in reversed(list(enumerate(stream(exp))))
                               if s[2].startswith(f"{rtype}/") and p not in picks)

    def mutate(text: str) -> str:
        return re.sub(old[3:], new, text, count=1) if old.startswith("re:") else text.replace(old, new, 1)

    edit_line(exp, name, i, mutate)
    quick, lines = both(exp)
    assert quick == lines
    fired = {r.rule: r for r in quick.results}
    assert rule in fired
    if rule != "ref.unresolved":  # an unresolved reference names the referrer, not always this one
        assert key in fired[rule].examples


def test_cli_default_catches_a_cheap_rule_outside_the_sample(tmp_path, frames):
    exp = export_of(tmp_path / "exp", frames)
    picks = sampled(exp)
    pos, (name, i, key) = next((p, s) for p, s in enumerate(stream(exp)) if s[2].startswith("Patient/") and p not in picks)
    edit_line(exp, name, i, lambda t: t.replace('"gender":"', '"gender":"x', 1))
    res = atr("conform", str(exp), "--json-out", env=ENV)
    assert res.returncode == 1, res.stdout + res.stderr
    report = orjson.loads(res.stdout)
    assert report["structurally_checked"] == SAMPLE
    assert [(r["rule"], r["examples"]) for r in report["results"]] == [("patient.gender.binding", [key])]


def _blank_line(exp: Path, name: str) -> None:
    path = exp / name
    path.write_bytes(path.read_bytes().replace(b"\n", b"\n\n", 1))


def _whitespace_line(exp: Path, name: str) -> None:
    path = exp / name
    path.write_bytes(path.read_bytes().replace(b"\n", b"\n  \n", 1))


def _bom(exp: Path, name: str) -> None:
    path = exp / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def _crlf(exp: Path, name: str) -> None:
    path = exp / name
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))


def _unit_separator(exp: Path, name: str) -> None:
    path = exp / name
    path.write_bytes(path.read_bytes().replace(b"\n", b"\x1f\n", 1))


def _bad_utf8(exp: Path, name: str) -> None:
    path = exp / name
    path.write_bytes(path.read_bytes().replace(b'"gender":"', b'"gender":"\xff', 1))


def _count(exp: Path, name: str) -> None:
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    next(o for o in manifest["output"] if o["url"].endswith(name))["count"] += 1
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))


def _missing(exp: Path, name: str) -> None:
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    manifest["output"].append({"type": "Patient", "url": "Patient.099.ndjson", "count": 3})
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))


def _unlisted(exp: Path, name: str) -> None:
    (exp / "Extra.ndjson").write_bytes((exp / name).read_bytes())


def _gz_listed(exp: Path, name: str) -> None:
    manifest = orjson.loads((exp / "manifest.json").read_bytes())
    entry = next(o for o in manifest["output"] if o["url"].endswith(name))
    (exp / (name + ".gz")).write_bytes(gzip.compress((exp / name).read_bytes(), mtime=0))
    (exp / name).unlink()
    entry["url"] += ".gz"
    (exp / "manifest.json").write_bytes(orjson.dumps(manifest))


@pytest.mark.parametrize(("damage", "rule", "column_path"), [
    (_blank_line, "export.blank-line", False),
    (_whitespace_line, "export.blank-line", False),
    (_bom, "json.parse", False),
    (_crlf, None, True),  # the line reader strips \r\n; so does the column reader
    (_unit_separator, "json.parse", False),
    (_bad_utf8, "json.parse", False),
    (_count, "export.count-mismatch", True),
    (_missing, "export.file-missing", True),
    (_unlisted, "export.file-unlisted", True),
    (_gz_listed, None, True),
])
def test_file_level_damage_gives_the_line_path_report(tmp_path, frames, spy, damage, rule, column_path):
    exp = export_of(tmp_path / "exp", frames)
    name = next(n for n in sorted(p.name for p in exp.iterdir()) if n.startswith("Patient."))
    damage(exp, name)
    quick, lines = both(exp)
    assert quick == lines
    assert (spy == [True]) == column_path  # declined: by the reader ([]) or the proof ([False])
    rules = [r.rule for r in quick.results]
    if rule is None:
        assert rules == []
    else:
        assert rule in rules


def test_the_export_gets_the_sample_of_the_run_s_own_stage(tmp_path, frames):
    """Every Patient carries a structure error only the R4B models see: the number found and the
    examples name exactly the sampled Patients, and the run's check of its frames
    (check_ndjson_frames, as pipeline.check_month calls it) and check_export of the written
    export sample the same ones."""
    patients = frames["Patient"].with_columns(pl.col("json").str.replace(BIRTH.pattern, '"birthDate":"${1}-13'))
    broken = dict(frames, Patient=patients)
    exp = export_of(tmp_path / "exp", broken)
    from atr_pipeline.conform import check_ndjson_frames

    run = check_ndjson_frames(broken, structural="sample", sample_size=SAMPLE)
    export = check_export(exp, structural="sample", sample_size=SAMPLE)
    assert export == run
    picks = sampled(exp)
    keys = [key for pos, (_, _, key) in enumerate(stream(exp)) if pos in picks and key.startswith("Patient/")]
    with_birth = patients.filter(pl.col("json").str.contains('"birthDate"'))
    expected = [k for k in keys if k.removeprefix("Patient/") in set(with_birth["id"].to_list())]
    assert expected  # the sample holds some Patients with a birthDate
    assert [(r.rule, r.count) for r in run.results] == [("r4.structure", len(expected))]
    assert set(run.results[0].examples) <= set(expected)


def test_groups_checked_in_chunks_give_the_same_report(frames, monkeypatch):
    """conform/fast.py checks Groups a few hundred MB at a time; with tiny chunks (one Group
    each) a clean set still takes the column path and a broken member is still reported."""
    from atr_pipeline.conform import check_ndjson_frames

    group = frames["Group"]
    gid = group["id"][0]
    copies = [f"{k:08x}" + gid[8:] for k in range(2)]  # two more Groups, other UUIDs, same members
    more = pl.DataFrame({"id": copies, "json": [group["json"][0].replace(gid, c, 1) for c in copies]})
    frames = dict(frames, Group=pl.concat([group, more]).sort("id"))
    assert len(fast._byte_slices(frames["Group"]["json"], len(group["json"][0]))) == 3
    whole = check_ndjson_frames(frames, structural="sample", sample_size=SAMPLE)
    monkeypatch.setattr(fast, "GROUP_CHUNK_BYTES", len(group["json"][0]))  # about one Group a chunk
    chunked = fast.fast_report(frames, frame_order(frames), structural="sample", sample_size=SAMPLE, seed=0,
                               assume_profiles=False, resolve_references=True)
    assert chunked == whole and chunked.ok
    groups = frames["Group"]
    last = groups["json"][-1].replace('"valueCode":"nochange"', '"valueCode":"gone"', 1)
    broken = dict(frames, Group=groups.with_columns(
        pl.when(pl.int_range(0, pl.len()) == groups.height - 1).then(pl.lit(last)).otherwise(pl.col("json")).alias("json")))
    quick = check_ndjson_frames(broken, structural="sample", sample_size=SAMPLE)
    assert quick == check_ndjson_frames(broken, structural="sample", sample_size=SAMPLE, fast=False)
    assert [r.rule for r in quick.results] == ["group.member.changeType.code"]
