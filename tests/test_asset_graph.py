"""Snapshot of every asset key, group, dependency, kind and check: lineage drift shows in review.

Regenerate after an intended change with ATR_REGEN_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

GOLDEN = Path(__file__).parent / "golden" / "asset_graph.json"


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "kinds": sorted(node.kinds),
            "owners": sorted(node.owners),
            "partitioned": node.partitions_def is not None,
            "checks": sorted(c.name for c in node.check_keys),
            "has_description": bool(node.description),
        }
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    return {"assets": assets, "jobs": jobs}


def test_asset_graph_matches_snapshot():
    from atr_pipeline.definitions import defs

    snap = graph_snapshot(defs)
    if os.environ.get("ATR_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    assert snap == json.loads(GOLDEN.read_text())


def test_every_asset_is_described_and_owned():
    from atr_pipeline.definitions import defs

    snap = graph_snapshot(defs)
    for key, node in snap["assets"].items():
        assert node["has_description"], key
        assert node["owners"] == ["team:data-engineering"], key
        assert node["partitioned"], key
