"""Two FHIR clients written elsewhere drive a live `atr serve`: fhirpy (Python) and Medplum's
MedplumClient (@medplum/core, Node; its bulkExport and async polling)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from api_server import (
    ACME_CONTRACT_SYSTEM,
    ClientKey,
    group_ids,
    live_server,
    publish,
    register,
)
from fhir_server_fixture import node_executable
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

CLIENTS_DIR = Path(__file__).resolve().parent / "api_clients"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    publish(home, "2026-08", "2026-09")
    key = ClientKey("ES384")
    register(home, key, f"{ACME_CONTRACT_SYSTEM}|VBC25-0002")
    with live_server(home) as base:
        yield home, base, key


def test_fhirpy_searches_reads_pages_and_follows_references(served):
    home, base, key = served
    client = SyncFHIRClient(base, authorization=f"Bearer {key.token(base)}")
    groups = client.resources("Group").search(identifier=f"{ACME_CONTRACT_SYSTEM}|VBC25-0002").fetch()
    assert [g.id for g in groups] == [group_ids(home, "2026-09")["VBC25-0002"]]
    assert client.resources("Group").search(name="Value-Based").fetch_all()[0].id == groups[0].id
    group = client.reference("Group", groups[0].id).to_resource()
    assert group["meta"]["versionId"] == "2" and group["member"]
    patient = client.reference(reference=group["member"][0]["entity"]["reference"]).to_resource()
    assert patient.resourceType == "Patient"
    other = group_ids(home, "2026-09")["VBC25-0001"]
    with pytest.raises(ResourceNotFound):
        client.reference("Group", other).to_resource()


def test_medplum_client_bulk_exports_the_group(served):
    home, base, key = served
    if not (CLIENTS_DIR / "node_modules" / "@medplum" / "core").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENTS_DIR, check=True, timeout=300)
    node = node_executable()  # the same Node the FHIR test server uses (22 when the machine's is too old)
    env = {**os.environ, "ATR_BASE": base, "ATR_TOKEN": key.token(base), "ATR_IDENTIFIER": f"{ACME_CONTRACT_SYSTEM}|VBC25-0002",
           "ATR_OTHER_GROUP": group_ids(home, "2026-09")["VBC25-0001"]}
    res = subprocess.run([node, "medplum_export.mjs"], cwd=CLIENTS_DIR, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["found"] == 1 and summary["groupId"] == group_ids(home, "2026-09")["VBC25-0002"]
    assert summary["bulk"]["requiresAccessToken"] is True
    assert summary["bulk"]["counts"]["Group"] == 1 and set(summary["bulk"]["counts"]) == {"Group", "Patient", "Coverage"}
    atr = summary["atr"]
    assert atr["requiresAccessToken"] is True and "exportType=hl7.fhir.us.davinci-atr" in atr["request"]
    assert atr["counts"]["Patient"] == summary["bulk"]["counts"]["Patient"] > 0
    assert {"Group", "Patient", "Coverage", "Organization", "PractitionerRole", "Practitioner"} <= set(atr["counts"])
    assert summary["otherGroup"] == "not-found"
