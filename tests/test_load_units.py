"""Loader pieces without a server: chunk planning, Group slicing, bundle bytes, sanitising,
Retry-After, checkpoint log, server settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from itertools import pairwise

import orjson
import pytest
from pydantic import ValidationError

from atr_pipeline.publish.checkpoint import Checkpoint
from atr_pipeline.publish.loader import _bundle_bytes, _member_slices, _parse_retry_after, _plan
from atr_pipeline.publish.report import sanitize_outcome
from atr_pipeline.publish.server import ServerConfig, UnknownServerKind, resolve_kind
from atr_pipeline.publish.synthetic import synthetic_resources

BASE = "http://127.0.0.1:9/fhir/R4"


def _lines(resource_type: str, members: int = 120, groups: int = 1) -> list[bytes]:
    frame = synthetic_resources(members, groups=groups)[resource_type]
    return [s.encode() for s in frame["json"].to_list()]


def test_plan_cuts_bundles_by_entry_count():
    config = ServerConfig(base_url=BASE, bundle_size=50)
    chunks = list(_plan(iter(_lines("Patient")), "Patient", config))
    assert [c.index for c in chunks] == [0, 1, 2]
    assert [len(c.entries) for c in chunks] == [50, 50, 20]
    ids = [e.id for c in chunks for e in c.entries]
    assert len(set(ids)) == 120


def test_plan_cuts_bundles_by_bytes_and_bundles_stay_under_the_limit():
    lines = _lines("Coverage")
    config = ServerConfig(base_url=BASE, bundle_size=50, max_request_bytes=8_000)
    chunks = list(_plan(iter(lines), "Coverage", config))
    sizes = [len(_bundle_bytes("batch", c.entries)) for c in chunks]
    assert max(sizes) <= 8_000
    assert sum(len(c.entries) for c in chunks) == 120
    # every bundle but the last is full: one more entry would have crossed the limit
    for chunk, following in pairwise(chunks):
        estimate = sum(len(e.body) + 96 for e in chunk.entries) + len(following.entries[0].body) + 96
        assert estimate > 8_000
    assert len(chunks) > 3


def test_bundle_bytes_is_a_put_by_id_bundle():
    config = ServerConfig(base_url=BASE)
    chunk = next(_plan(iter(_lines("Patient", 3)), "Patient", config))
    bundle = orjson.loads(_bundle_bytes("transaction", chunk.entries))
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    assert [e["request"] for e in bundle["entry"]] == [{"method": "PUT", "url": f"Patient/{e.id}"} for e in chunk.entries]
    assert [e["resource"]["id"] for e in bundle["entry"]] == [e.id for e in chunk.entries]


def test_invalid_lines_are_reported_not_sent():
    good = _lines("Patient", 2)
    bad = [b"not json", b'{"resourceType":"Coverage","id":"abc"}', b'{"resourceType":"Patient","id":"has space"}']
    chunks = list(_plan(iter(good[:1] + bad + good[1:]), "Patient", ServerConfig(base_url=BASE)))
    assert len(chunks) == 1
    assert len(chunks[0].entries) == 2
    assert [(f.id, f.reason) for f in chunks[0].invalid] == [("line-2", "invalid-line"), ("line-3", "invalid-line"), ("line-4", "invalid-line")]


def test_large_group_becomes_its_own_chunk_and_slices_rebuild_the_group():
    lines = _lines("Group", members=2_500, groups=2)  # two Groups of 1,250 members
    small = _lines("Group", members=10, groups=1)
    config = ServerConfig(base_url=BASE, max_group_members_per_request=500)
    chunks = list(_plan(iter(small + lines), "Group", config))
    assert [(len(c.entries), c.group is not None) for c in chunks] == [(1, False), (0, True), (0, True)]
    group = chunks[1].group
    assert len(group.split) == 1_250
    slices = _member_slices(group, config)
    assert slices == [(0, 500), (500, 1000), (1000, 1250)]
    original = orjson.loads(lines[0])
    members = [group.split.member(i) for i in range(len(group.split))]
    rebuilt = orjson.loads(group.head + b',"member":[' + b",".join(members) + b"]}")
    assert rebuilt == original


def test_member_slices_respect_the_request_byte_limit():
    lines = _lines("Group", members=600)
    config = ServerConfig(base_url=BASE, max_group_members_per_request=10_000, max_request_bytes=50_000)
    (chunk,) = list(_plan(iter(lines), "Group", config))  # 600 members are far above 50 kB: large
    slices = _member_slices(chunk.group, config)
    assert slices[0][0] == 0 and slices[-1][1] == 600
    assert all(a[1] == b[0] for a, b in pairwise(slices))
    for start, end in slices:
        ops = (b'{"op":"add","path":"/member/-","value":' + chunk.group.split.member(i) + b"}" for i in range(start, end))
        body = b"[" + b",".join(ops) + b"]"
        assert len(body) <= 50_000


def test_sanitize_outcome_keeps_codes_and_paths_and_drops_values():
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Invalid birthDate 1950-13-01 for member M0001",
                "details": {"text": "M0001 Smith", "coding": [{"system": "http://x.org/cs", "code": "bad-date", "display": "Smith"}]},
                "expression": ["Patient.identifier.where(value='M0001').value", "Patient.birthDate"],
            }
        ],
    }
    (issue,) = sanitize_outcome(outcome)
    assert issue.severity == "error"
    assert issue.code == "invalid"
    assert issue.details == ["http://x.org/cs|bad-date"]
    assert issue.expression == ["Patient.identifier.where(value='?').value", "Patient.birthDate"]
    dumped = issue.model_dump_json()
    assert "M0001" not in dumped and "Smith" not in dumped and "1950" not in dumped
    assert sanitize_outcome({"resourceType": "Patient"}) == []
    assert sanitize_outcome(None) == []


def test_retry_after_seconds_and_http_date():
    assert _parse_retry_after("3") == 3.0
    assert _parse_retry_after(None) is None
    assert _parse_retry_after("soon") is None
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= _parse_retry_after(future) <= 31
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert _parse_retry_after(past) == 0.0


def test_checkpoint_resumes_ignores_torn_line_and_discards_on_change(tmp_path):
    server = {"base_url": BASE, "fhir_version": "4.0.1", "software": "engine 1", "implementation": ""}
    cp = Checkpoint(tmp_path, "srv", "fp-1", server=server)
    assert (cp.resumed, cp.note) == (False, "")
    cp.mark_chunk("Patient", 0, ["p0", "p1", "p2"])
    cp.mark_chunk("Patient", 2, ["p6", "p7"])
    cp.mark_chunk("Group", 0, ["g0", "g1", "g2"])
    cp.mark_type("Organization")
    cp.close()
    with open(cp.path, "ab") as fh:
        fh.write(b'{"t":"Patient","c":')  # a process killed mid-write
    again = Checkpoint(tmp_path, "srv", "fp-1", server=server)
    assert again.resumed is True
    assert [again.chunk_done("Patient", i) for i in range(4)] == [True, False, True, False]
    assert again.type_done("Organization") and not again.type_done("Patient")
    # what a resume checks on the server: counts, the ends of each chunk, every Group id
    assert (again.claimed_count("Patient"), again.sample_ids("Patient")) == (5, ["p0", "p2", "p6", "p7"])
    assert again.sample_ids("Group", limit=None) == ["g0", "g1", "g2"]
    assert again.sample_ids("Patient", limit=2) == ["p0", "p6"]
    again.mark_chunk("Patient", 1, ["p3"])
    again.forget("Group")  # the server lost them: everything logged for the type stops counting
    again.close()
    third = Checkpoint(tmp_path, "srv", "fp-1", server=server)
    assert [third.chunk_done("Patient", i) for i in range(3)] == [True, True, True]
    assert (third.claimed_types(), third.chunk_done("Group", 0)) == (["Organization", "Patient"], False)
    third.close()
    other_server = Checkpoint(tmp_path, "srv", "fp-1", server={**server, "software": "engine 2"})
    assert other_server.resumed is False
    assert other_server.note.startswith("checkpoint discarded: it was written for another server at this URL (engine 1, FHIR 4.0.1)")
    other_server.close()
    changed = Checkpoint(tmp_path, "srv", "fp-2")
    assert (changed.resumed, changed.note) == (False, "checkpoint discarded: the export's files or the chunking settings changed")
    assert not changed.chunk_done("Patient", 0)
    changed.close()
    restarted = Checkpoint(tmp_path, "srv", "fp-2", restart=True)
    assert (restarted.resumed, restarted.note) == (False, "checkpoint ignored (--restart)")
    restarted.close()


def test_server_config_validation_and_presets():
    assert ServerConfig(base_url="http://h:1/fhir/R4/").base_url == "http://h:1/fhir/R4"
    with pytest.raises(ValidationError, match="must not carry credentials"):
        ServerConfig(base_url="https://user:pw@h/fhir")
    with pytest.raises(ValidationError, match="more than 50 PUTs"):
        ServerConfig(base_url=BASE, kind="medplum", mode="transaction", bundle_size=51)
    with pytest.raises(UnknownServerKind, match=r"unknown server kind 'firely'; valid kinds: generic, medplum$"):
        ServerConfig.for_kind(BASE, "firely")
    with pytest.raises(UnknownServerKind, match="never tested against a HAPI server"):
        resolve_kind("hapi")
    assert (resolve_kind(" Medplum "), resolve_kind(""), resolve_kind(None)) == ("medplum", "generic", "generic")
    assert ServerConfig.for_kind(BASE, "medplum", concurrency=None).concurrency == 2
    medplum = ServerConfig.for_kind(BASE, "medplum", bundle_size=20)
    assert (medplum.bundle_size, medplum.mode, medplum.max_group_members_per_request) == (20, "batch", 1000)
    assert ServerConfig(base_url=BASE).key == ServerConfig(base_url=BASE + "/").key
    assert len(ServerConfig(base_url=BASE).key) == 16
