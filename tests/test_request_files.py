"""Request files through the real `atr run`: a provider without API access sends add / remove /
confirm lines in the layout its mapping describes, next to the payer's file in the inbox; each
line is adjudicated like an API request and answered in a response file in the provider's outbox.

Auto mode (with a bad line, an unauthorised contract, a confirm and a line after it), the same
file sent again (same response, nothing recorded twice), a reused request id, review mode
(queued, then `atr requests accept|reject` rewrite the response), and a broken file refused whole.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import orjson
import pytest
import yaml
from api_server import HOME_ENV, ROOT, atr

from atr_pipeline.layouts.spec import MappingError, parse_mapping
from atr_pipeline.systems import EXT_ATTRIBUTION_LIST_STATUS

CONTRACT = "VBC25-0001"
REMOVED = "M06228576401"  # in contract 1 with PCP 1000011183 (see test_api_requests.py)
ADDED = "M13055652101"  # a member of contract 2
PCP = "1000011183"
PROVIDER = "northside_clinic"
# The request layout a payer documents for this provider (docs/MAPPINGS.md "Request files").
LAYOUT = r"""requests:
  adjudication: MODE
  files:
    - provider: northside_clinic
      contracts: [VBC25-0001]
      file: {pattern: 'ACME_REQ_NORTHSIDE_(?P<yyyymm>\d{6})(?:_\d+)?\.txt'}
      format: {kind: delimited, delimiter: "|", header_row: true}
      columns: {request_id: REQ_ID, operation: OP, contract_id: CONTRACT, member_id: MEMBER_ID,
                provider_npi: PCP_NPI, attribution_start: START_DT, attribution_end: END_DT, plan_id: PLAN}
      operations: {ADD: member-add, REMOVE: member-remove, CONFIRM: confirm}
"""
HEADER = "REQ_ID|OP|CONTRACT|MEMBER_ID|PCP_NPI|START_DT|END_DT|PLAN\n"


def _world(tmp_path: Path, mode: str) -> tuple[Path, Path, Path]:
    """(home, mapping file, inbox holding the payer's August file)."""
    home, mappings, inbox = tmp_path / "home", tmp_path / "mappings", tmp_path / "inbox"
    for d in (home, mappings, inbox):
        d.mkdir()
    text = (ROOT / "mappings/acme_commercial.yaml").read_text()
    (mappings / "acme_commercial.yaml").write_text(text + LAYOUT.replace("MODE", mode))
    shutil.copy(ROOT / "fixtures/acme_commercial/ACME_ATTRIB_202608.csv", inbox)
    HOME_ENV[str(home)] = {"ATR_MAPPINGS_DIR": str(mappings)}
    return home, mappings / "acme_commercial.yaml", inbox


def _run(home: Path, mapping: Path, inbox: Path):
    res = atr(home, "run", "--mapping", str(mapping), "--inbox", str(inbox))
    assert REMOVED not in res.stdout + res.stderr and ADDED not in res.stdout + res.stderr  # no member ids printed
    return res


def _response(home: Path, name: str) -> list[list[str]]:
    path = home / "outbox" / PROVIDER / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    rows = [line.split("|") for line in path.read_text().splitlines()]
    assert rows[0] == ["LINE", "PROVIDER_REQUEST_ID", "OUTCOME", "REASON", "REQUEST_ID"]
    return rows[1:]


def _requests(home: Path) -> list[list[str]]:
    res = atr(home, "requests", "list")
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()[1:]]


def _group(home: Path) -> dict:
    for line in (home / "exports/acme_commercial/2026-08/Group.ndjson").read_bytes().splitlines():
        group = orjson.loads(line)
        if any(i["value"] == CONTRACT for i in group["identifier"]):
            return group
    raise AssertionError(CONTRACT)


def _member_ids(home: Path, group: dict) -> set[str]:
    ids = {}
    for line in (home / "exports/acme_commercial/2026-08/Patient.ndjson").read_bytes().splitlines():
        p = orjson.loads(line)
        ids[p["id"]] = next(i["value"] for i in p["identifier"] if i["system"].endswith("member-id"))
    return {ids[m["entity"]["reference"].split("/")[1]] for m in group["member"] if not m.get("inactive")}


def test_auto_mode_answers_every_line_and_sending_it_again_changes_nothing(tmp_path):
    home, mapping, inbox = _world(tmp_path, "auto")
    (inbox / "ACME_REQ_NORTHSIDE_202608.txt").write_text(HEADER + "\n".join([
        f"r1|REMOVE|{CONTRACT}|{REMOVED}||||",
        f"r2|add|{CONTRACT}|{ADDED}|{PCP}|2026-08-15||",
        f"r3|ADD|{CONTRACT}|{ADDED}|{PCP}|2026-13-01||",  # not a date
        f"r4|DELETE|{CONTRACT}|{REMOVED}||||",  # not an operation code
        f"r5|ADD|VBC25-0002|{ADDED}|{PCP}|||",  # not a contract this provider may change
        f"r6|REMOVE|{CONTRACT}|M99999999999||||",  # not on the list: refused by the list rules
        f"r7|CONFIRM|{CONTRACT}|||||",
        f"r8|ADD|{CONTRACT}|{REMOVED}|{PCP}|||",  # after the confirm: the list is final
        "r9|ADD|only three",  # a short line
    ]) + "\n")
    checked = atr(home, "check-mapping", str(mapping))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"request file ACME_REQ_NORTHSIDE_(?P<yyyymm>\\d{{6}})(?:_\\d+)?\\.txt from {PROVIDER} (contracts {CONTRACT})" in checked.stdout
    first = _run(home, mapping, inbox)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"9 request(s) from {PROVIDER}: 3 accepted, 0 queued, 6 rejected" in first.stdout
    rows = _response(home, "ACME_REQ_NORTHSIDE_202608.response.txt")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("2", "r1", "accepted"), ("3", "r2", "accepted"), ("4", "r3", "rejected"), ("5", "r4", "rejected"),
        ("6", "r5", "rejected"), ("7", "r6", "rejected"), ("8", "r7", "accepted"), ("9", "r8", "rejected"),
        ("10", "r9", "rejected")]
    reasons = {r[1]: r[3] for r in rows}
    assert reasons["r3"] == "line 4, field START_DT: not a date in YYYY-MM-DD"
    assert reasons["r4"] == "line 5, field OP: not one of add, remove, confirm"
    assert reasons["r5"] == f"line 6: provider {PROVIDER} may not change the list of contract VBC25-0002"
    assert "no active entry" in reasons["r6"] and "final" in reasons["r8"]
    assert reasons["r9"] == "line 10: 3 fields, the header has 8"
    assert all(r[4] for r in rows if r[1] in ("r1", "r2", "r6", "r7", "r8"))  # recorded: the payer's request id
    assert not any(r[4] for r in rows if r[1] in ("r3", "r4", "r5", "r9"))  # never reached the list rules

    group = _group(home)
    assert next(e["valueCode"] for e in group["extension"] if e["url"] == EXT_ATTRIBUTION_LIST_STATUS) == "final"
    assert group["meta"]["versionId"] == "4"  # August, then remove, add, confirm
    members = _member_ids(home, group)
    assert ADDED in members and REMOVED not in members
    recorded = _requests(home)
    assert len(recorded) == 5 and {(r[7], r[8]) for r in recorded} == {(PROVIDER, "file")}
    assert sorted(r[5] for r in recorded) == ["confirm", "member-add", "member-add", "member-remove", "member-remove"]

    # the same file again (and the payer's, already processed): the same answer, nothing recorded twice
    before = (home / "outbox" / PROVIDER / "ACME_REQ_NORTHSIDE_202608.response.txt").read_bytes()
    again = _run(home, mapping, inbox)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (home / "outbox" / PROVIDER / "ACME_REQ_NORTHSIDE_202608.response.txt").read_bytes() == before
    assert len(_requests(home)) == 5 and _group(home)["meta"]["versionId"] == "4"

    # a request id used again for another request is refused, not taken for the earlier one
    (inbox / "ACME_REQ_NORTHSIDE_202608_2.txt").write_text(HEADER + f"r1|REMOVE|{CONTRACT}|{ADDED}||||\n")
    _run(home, mapping, inbox)
    (row,) = _response(home, "ACME_REQ_NORTHSIDE_202608_2.response.txt")
    assert row[:3] == ["2", "r1", "rejected"] and "different request" in row[3]
    assert len(_requests(home)) == 5


def test_review_mode_queues_and_a_decision_rewrites_the_response_and_a_broken_file_is_refused(tmp_path):
    home, mapping, inbox = _world(tmp_path, "review")
    (inbox / "ACME_REQ_NORTHSIDE_202608.txt").write_text(HEADER + "\n".join([
        f"a1|REMOVE|{CONTRACT}|{REMOVED}||||",
        f"a2|ADD|{CONTRACT}|{ADDED}|{PCP}|||",
        f"a3|ADD|{CONTRACT}||{PCP}|||",  # no member id
    ]) + "\n")
    (inbox / "ACME_REQ_NORTHSIDE_202608_9.txt").write_text(HEADER + f'b1|ADD|{CONTRACT}|"{ADDED}|{PCP}|||\n')
    res = _run(home, mapping, inbox)
    assert res.returncode == 1, res.stdout  # the broken file is refused (exit 1), the good one answered
    assert "2 request(s)" not in res.stdout and f"3 request(s) from {PROVIDER}: 0 accepted, 2 queued, 1 rejected" in res.stdout
    assert "ACME_REQ_NORTHSIDE_202608_9.txt: request file from northside_clinic: line 2: a record cannot be split" in res.stdout
    (refused,) = _response(home, "ACME_REQ_NORTHSIDE_202608_9.response.txt")
    assert refused[:3] == ["2", "", "rejected"] and refused[3].startswith("file refused, no request in it was taken")

    rows = _response(home, "ACME_REQ_NORTHSIDE_202608.response.txt")
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("a1", "queued", "waiting for the payer's review"), ("a2", "queued", "waiting for the payer's review"),
        ("a3", "rejected", "line 4, field MEMBER_ID: empty; member-add needs the member id")]
    ids = {r[1]: r[4] for r in rows}
    assert {r[0] for r in _requests(home)} == {ids["a1"], ids["a2"]}  # the broken file recorded nothing
    assert _group(home)["meta"]["versionId"] == "1"

    accepted = atr(home, "requests", "accept", ids["a1"])
    assert accepted.returncode == 0, accepted.stderr
    rejected = atr(home, "requests", "reject", ids["a2"], "--reason", "not a patient of this clinic")
    assert rejected.returncode == 0, rejected.stderr
    rows = _response(home, "ACME_REQ_NORTHSIDE_202608.response.txt")
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("a1", "accepted", ""), ("a2", "rejected", "not a patient of this clinic"),
        ("a3", "rejected", "line 4, field MEMBER_ID: empty; member-add needs the member id")]
    group = _group(home)
    assert group["meta"]["versionId"] == "2" and REMOVED not in _member_ids(home, group)

    # the provider took the response away; a later send of the same file answers with the decisions
    (home / "outbox" / PROVIDER / "ACME_REQ_NORTHSIDE_202608.response.txt").unlink()
    _run(home, mapping, inbox)
    assert [r[2] for r in _response(home, "ACME_REQ_NORTHSIDE_202608.response.txt")] == ["accepted", "rejected", "rejected"]
    assert len(_requests(home)) == 2


def test_a_request_layout_error_names_its_key():
    data = yaml.safe_load((ROOT / "mappings/acme_commercial.yaml").read_text() + LAYOUT.replace("MODE", "auto"))
    assert parse_mapping(data).requests.files[0].provider == PROVIDER
    data["requests"]["files"][0]["columns"].pop("request_id")
    with pytest.raises(MappingError, match=r"requests\.files\[0\]\.columns: required request field\(s\) not mapped: \['request_id'\]"):
        parse_mapping(data)
    data["requests"]["files"][0]["columns"]["request_id"] = "REQ_ID"
    data["requests"]["files"][0]["format"]["header_row"] = False
    with pytest.raises(MappingError, match=r"requests\.files\[0\]: format: a request file is delimited with a header row"):
        parse_mapping(data)
