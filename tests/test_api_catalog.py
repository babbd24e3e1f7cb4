"""The API's index of published exports: Group heads without holding member arrays, odd shapes, skipped folders."""

from __future__ import annotations

from pathlib import Path

import orjson

from atr_pipeline.api.catalog import CHUNK, Catalog


def _month(folder: Path, groups: list[dict], extra: dict[str, list[dict]] | None = None) -> None:
    folder.mkdir(parents=True)
    files = {"Group": groups, **(extra or {})}
    output = []
    for t, rows in files.items():
        (folder / f"{t}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        output.append({"type": t, "url": f"{t}.ndjson", "count": len(rows)})
    manifest = {"transactionTime": "2026-11-01T00:00:00.000Z", "request": "t", "requiresAccessToken": True, "output": output, "error": []}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))


def _member(n: int) -> dict:
    return {"entity": {"reference": f"Patient/p{n}"}, "extension": [{"url": "x", "valueReference": {"reference": f"Coverage/c{n}"}}]}


def test_heads_references_and_member_not_last(tmp_path):
    last = {"resourceType": "Group", "id": "g1", "meta": {"versionId": "3"}, "identifier": [{"system": "s", "value": "v"}],
            "name": "Big", "member": [_member(n) for n in range(30_000)]}  # a line of several chunks
    first = {"resourceType": "Group", "id": "g2", "member": [_member(1)], "name": "Member first"}
    _month(tmp_path / "exports" / "src" / "2026-11", [last, first])
    (tmp_path / "exports" / "src" / ".2026-12.partial-1").mkdir()  # a publication in progress is not a month
    view = Catalog(tmp_path / "exports").snapshot()
    assert [m.month for m in view.months] == ["2026-11"]
    g1, g2 = view.groups["g1"][-1], view.groups["g2"][-1]
    assert g1.length > CHUNK and g1.members_last and "member" not in g1.head
    assert g1.version_id == "3" and g1.identifiers == (("s", "v"),) and g1.last_updated == "2026-11-01T00:00:00.000Z"
    refs = list(g1.references())
    assert len(refs) == 60_000 and refs[-1] == ("Coverage", "c29999") and ("Patient", "p12345") in refs
    assert orjson.loads(g1.line()) == last
    assert not g2.members_last and g2.head == {"resourceType": "Group", "id": "g2", "name": "Member first"}
    assert list(g2.references()) == [("Patient", "p1"), ("Coverage", "c1")]


def test_a_gzipped_export_is_skipped_and_the_rest_served(tmp_path):
    _month(tmp_path / "exports" / "a" / "2026-11", [{"resourceType": "Group", "id": "g"}])
    gz = tmp_path / "exports" / "b" / "2026-11"
    gz.mkdir(parents=True)
    (gz / "manifest.json").write_bytes(orjson.dumps({"transactionTime": "2026-11-01T00:00:00.000Z", "request": "t",
                                                     "output": [{"type": "Group", "url": "Group.ndjson.gz", "count": 1}]}))
    view = Catalog(tmp_path / "exports").snapshot()
    assert [(m.source, m.month) for m in view.months] == [("a", "2026-11")]
