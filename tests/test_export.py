"""Bulk export writer: layout, split, gzip determinism, manifest shape and counts, atomic publish."""

from __future__ import annotations

import gzip
import hashlib
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import polars as pl
import pytest

from atr_pipeline.errors import AtrError
from atr_pipeline.publish import export as export_module
from atr_pipeline.publish.export import (
    ATR_EXPORT_TYPE,
    MANIFEST_NAME,
    iter_ndjson,
    read_manifest,
    write_bulk_export,
)
from atr_pipeline.publish.synthetic import synthetic_errors, synthetic_resources
from atr_pipeline.systems import LOAD_ORDER

T0 = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
REQUEST = "Group/x/$davinci-data-export?exportType=hl7.fhir.us.davinci-atr"


def _export(tmp_path: Path, name: str = "run1", **kwargs) -> tuple[Path, object]:
    resources = kwargs.pop("resources", None) or synthetic_resources(25, groups=2)
    errors = kwargs.pop("errors", synthetic_errors(3))
    out = tmp_path / name
    manifest = write_bulk_export(out, resources, errors=errors, transaction_time=T0, request=REQUEST, **kwargs)
    return out, manifest


def _lines(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return data.splitlines()


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_layout_one_file_per_type_in_load_order(tmp_path):
    out, manifest = _export(tmp_path)
    names = sorted(p.name for p in out.iterdir())
    expected_types = [t for t in LOAD_ORDER]  # synthetic data has every type
    assert names == sorted([f"{t}.ndjson" for t in expected_types] + ["OperationOutcome.ndjson", MANIFEST_NAME])
    assert [f.type for f in manifest.output] == expected_types
    counts = {f.type: f.count for f in manifest.output}
    # 25 members: 25 patients and coverages, every tenth member has a RelatedPerson (m=9, 19)
    assert counts == {
        "Organization": 2,
        "Practitioner": 3,
        "PractitionerRole": 3,
        "Patient": 25,
        "RelatedPerson": 2,
        "Coverage": 25,
        "Group": 2,
    }
    assert [(f.type, f.url, f.count) for f in manifest.error] == [("OperationOutcome", "OperationOutcome.ndjson", 3)]


def test_manifest_counts_equal_file_lines_and_lines_are_sorted_by_id(tmp_path):
    out, manifest = _export(tmp_path)
    for item in manifest.output + manifest.error:
        lines = _lines(out / item.url)
        assert len(lines) == item.count, item.url
        if item.type != "OperationOutcome":
            ids = [orjson.loads(line)["id"] for line in lines]
            assert ids == sorted(ids)
            assert {orjson.loads(line)["resourceType"] for line in lines} == {item.type}


def test_manifest_shape_matches_bulk_data_fields(tmp_path):
    out, _ = _export(tmp_path)
    raw = orjson.loads((out / MANIFEST_NAME).read_bytes())
    assert set(raw) == {"transactionTime", "request", "requiresAccessToken", "output", "error", "extension"}
    assert raw["transactionTime"] == "2026-11-01T06:30:00.000Z"
    assert raw["request"] == REQUEST
    assert raw["requiresAccessToken"] is True
    assert all(set(item) == {"type", "url", "count"} for item in raw["output"] + raw["error"])
    assert all("/" not in item["url"] for item in raw["output"])  # relative to the manifest
    assert raw["extension"]["exportType"] == ATR_EXPORT_TYPE
    assert set(raw["extension"]["sha256"]) == {item["url"] for item in raw["output"] + raw["error"]}
    for url, digest in raw["extension"]["sha256"].items():
        assert hashlib.sha256((out / url).read_bytes()).hexdigest() == digest
    # manifest bytes are stable: sorted keys, trailing newline
    text = (out / MANIFEST_NAME).read_bytes()
    assert text.endswith(b"}\n")
    assert text == orjson.dumps(raw, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def test_transaction_time_is_normalised_to_utc_and_naive_is_refused(tmp_path):
    resources = synthetic_resources(2)
    local = datetime(2026, 11, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))
    manifest = write_bulk_export(tmp_path / "a", resources, errors=None, transaction_time=local, request=REQUEST)
    assert manifest.transaction_time == "2026-11-01T06:30:00.000Z"
    assert manifest.error == []
    with pytest.raises(AtrError, match="timezone-aware"):
        write_bulk_export(tmp_path / "b", resources, errors=None, transaction_time=datetime(2026, 11, 1), request=REQUEST)
    assert not (tmp_path / "b").exists()


def test_split_at_max_lines_per_file(tmp_path):
    out, manifest = _export(tmp_path, resources=synthetic_resources(25), max_lines_per_file=10)
    patient_files = [(f.url, f.count) for f in manifest.output if f.type == "Patient"]
    assert patient_files == [("Patient.000.ndjson", 10), ("Patient.001.ndjson", 10), ("Patient.002.ndjson", 5)]
    organization_files = [(f.url, f.count) for f in manifest.output if f.type == "Organization"]
    assert organization_files == [("Organization.ndjson", 2)]
    # iter_ndjson stitches the parts back together in id order
    ids = [orjson.loads(line)["id"] for line in iter_ndjson(out, "Patient")]
    assert len(ids) == 25
    assert ids == sorted(ids)
    assert [orjson.loads(x)["resourceType"] for x in iter_ndjson(out, "OperationOutcome")] == ["OperationOutcome"] * 3


def test_gzip_output_is_deterministic_and_readable(tmp_path):
    resources = synthetic_resources(30, groups=3)
    out1, m1 = _export(tmp_path, "a", resources=resources, gzip=True, max_lines_per_file=7)
    out2, m2 = _export(tmp_path, "b", resources=resources, gzip=True, max_lines_per_file=7)
    assert _tree_digest(out1) == _tree_digest(out2)
    assert m1 == m2
    first = out1 / "Patient.000.ndjson.gz"
    header = first.read_bytes()[:10]
    assert header[:2] == b"\x1f\x8b"
    assert header[3] == 0  # FLG: no FNAME, no FEXTRA
    assert header[4:8] == b"\x00\x00\x00\x00"  # MTIME = 0
    plain_out, _ = _export(tmp_path, "plain", resources=resources, max_lines_per_file=7)
    assert list(iter_ndjson(out1, "Coverage")) == list(iter_ndjson(plain_out, "Coverage"))
    assert len(list(iter_ndjson(out1, "Coverage"))) == 30


def test_same_input_in_any_row_order_gives_identical_bytes(tmp_path):
    resources = synthetic_resources(40, groups=2)
    shuffled = {t: f.sample(fraction=1.0, shuffle=True, seed=7) for t, f in resources.items()}
    out1, _ = _export(tmp_path, "a", resources=resources)
    out2, _ = _export(tmp_path, "b", resources=shuffled)
    assert _tree_digest(out1) == _tree_digest(out2)


def test_refuses_bad_inputs_without_leaving_a_folder(tmp_path):
    good = synthetic_resources(3)
    dup = pl.concat([good["Patient"], good["Patient"].head(1)])
    with pytest.raises(AtrError, match="Patient: 1 duplicate id"):
        _export(tmp_path, "dup", resources={**good, "Patient": dup})
    with pytest.raises(AtrError, match="not in systems.LOAD_ORDER"):
        _export(tmp_path, "loc", resources={**good, "Location": good["Organization"]})
    newline = good["Patient"].with_columns(pl.col("json").str.replace("}$", "}\n"))
    with pytest.raises(AtrError, match="raw newline"):
        _export(tmp_path, "nl", resources={**good, "Patient": newline})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_crash_mid_write_leaves_no_out_dir_and_no_partial(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = export_module._open_for_write

    def crash_on_third_file(path, gz):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(path, gz)

    monkeypatch.setattr(export_module, "_open_for_write", crash_on_third_file)
    with pytest.raises(OSError, match="No space left"):
        _export(tmp_path, "run1")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leftover_is_swept_and_never_looks_complete(tmp_path):
    # A SIGKILLed writer leaves its hidden partial folder behind (no cleanup runs).
    dead_pid = 2**22 + 12345  # above the default pid_max range: no such process
    leftover = tmp_path / f".run1.partial-{dead_pid}-deadbeef"
    leftover.mkdir()
    (leftover / "Patient.ndjson").write_bytes(b'{"resourceType":"Patient","id":"half"}\n')
    with pytest.raises(AtrError, match="not a complete bulk export"):
        read_manifest(tmp_path / "run1")
    out, manifest = _export(tmp_path, "run1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1"]
    assert manifest.count_of("Patient") == 25


def test_existing_export_is_replaced_atomically(tmp_path):
    out, first = _export(tmp_path, "run1", resources=synthetic_resources(5))
    inode_before = os.stat(out).st_ino
    out2, second = _export(tmp_path, "run1", resources=synthetic_resources(8))
    assert out2 == out
    assert os.stat(out).st_ino != inode_before  # a new folder swapped in, not rewritten in place
    assert second.count_of("Patient") == 8
    assert first.count_of("Patient") == 5
    assert read_manifest(out).count_of("Patient") == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1"]


def test_iter_ndjson_detects_truncated_file(tmp_path):
    out, _ = _export(tmp_path)
    path = out / "Coverage.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))
    with pytest.raises(AtrError, match="Coverage.ndjson: manifest says 25 lines, file has 23"):
        list(iter_ndjson(out, "Coverage"))


def test_with_base_url_gives_absolute_urls(tmp_path):
    _, manifest = _export(tmp_path)
    absolute = manifest.with_base_url("https://exports.example.org/atr/run1/")
    assert absolute.output[0].url == "https://exports.example.org/atr/run1/Organization.ndjson"
    assert absolute.error[0].url == "https://exports.example.org/atr/run1/OperationOutcome.ndjson"
    assert manifest.output[0].url == "Organization.ndjson"


# ---------------------------------------------------------------- staged builds (pipeline.build_month)


def test_staged_resources_read_back_the_frames_in_id_order_and_publish_the_same_bytes(tmp_path):
    import pickle

    from atr_pipeline.publish.export import publish_staged, stage_resources, staging_dir

    resources = synthetic_resources(25, groups=2)
    out = tmp_path / "staged"
    staged = stage_resources(out, ((t, resources[t]) for t in LOAD_ORDER), max_lines_per_file=10)
    assert not out.exists() and staging_dir(out).is_dir()  # nothing visible before publishing
    assert staged.heights == {t: resources[t].height for t in LOAD_ORDER}
    for t in LOAD_ORDER:
        assert staged[t].equals(resources[t].sort("id").select("id", "json")), t
    assert len(pickle.dumps(staged)) < 10_000  # paths, counts and digests, never the JSON
    manifest = publish_staged(staged, errors=synthetic_errors(3), transaction_time=T0, request=REQUEST, max_lines_per_file=10)
    assert not staging_dir(out).exists()
    reference, _ = _export(tmp_path, "direct", resources=resources, errors=synthetic_errors(3), max_lines_per_file=10)
    assert _tree_digest(out) == _tree_digest(reference)
    # A retried publish of the same build is a no-op; reading it after publishing is refused.
    assert publish_staged(staged, errors=synthetic_errors(3), transaction_time=T0, request=REQUEST) == manifest
    with pytest.raises(AtrError, match="gone or was replaced"):
        staged["Patient"]


def test_a_newer_staged_build_replaces_an_older_one_which_can_no_longer_publish(tmp_path):
    from atr_pipeline.publish.export import publish_staged, stage_resources, staging_dir

    out = tmp_path / "month"
    old = stage_resources(out, synthetic_resources(25, groups=2))
    new = stage_resources(out, synthetic_resources(30, groups=2))
    assert not old.is_staged() and new.is_staged()
    with pytest.raises(AtrError, match="gone or was replaced"):
        publish_staged(old, errors=None, transaction_time=T0, request=REQUEST)
    old.discard()  # not ours any more: the newer build stays
    assert staging_dir(out).is_dir()
    new.discard()
    assert not staging_dir(out).exists() and not out.exists()


def test_staging_refuses_a_bad_frame_and_leaves_nothing_behind(tmp_path):
    from atr_pipeline.publish.export import stage_resources

    resources = synthetic_resources(25, groups=2)
    patients = resources["Patient"]
    resources["Patient"] = pl.concat([patients, patients.head(1)])
    with pytest.raises(AtrError, match="1 duplicate id"):
        stage_resources(tmp_path / "m", resources)
    assert list(tmp_path.iterdir()) == []


def test_an_export_folder_is_readable_by_its_owner_only(tmp_path):
    """The NDJSON holds names, birth dates and member ids: like the landing folder (0700)."""
    import stat

    out, _ = _export(tmp_path)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
