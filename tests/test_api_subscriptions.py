"""ATR list-change Subscriptions on a live `atr serve`, notified to a real HTTP receiver on 127.0.0.1.

Create -> handshake -> active; a month published by `atr run` -> an id-only notification naming the
Group version, with its event number; heartbeats; a restart that neither loses nor repeats events;
a receiver that is down -> retried, then delivered; a full queue -> the oldest event dropped, status
error, a gap in event numbers; refusals (another's Group 401, bad shapes 400, another client's
Subscription 404) and the CapabilityStatement.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import ACME_CONTRACT_SYSTEM, ClientKey, atr, group_ids, live_server, publish, register
from hook_receiver import Receiver

from atr_pipeline.api.fhir_errors import FhirError
from atr_pipeline.api.subscriptions import check_endpoint, parse_subscription

TOPIC = "http://hl7.org/fhir/us/davinci-atr/SubscriptionTopic/atr-list-change"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
ONE = f"{ACME_CONTRACT_SYSTEM}|VBC25-0001"
TWO = f"{ACME_CONTRACT_SYSTEM}|VBC25-0002"


def subscription(group_id: str, endpoint: str, *, heartbeat: int | None = None, content: str = "id-only",
                 topic: str = TOPIC, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]},
    }
    if headers:
        channel["header"] = list(headers)
    if heartbeat is not None:
        channel["extension"] = [{"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}]
    return {"resourceType": "Subscription", "status": "requested", "reason": "ATR list changes", "criteria": topic,
            "_criteria": {"extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f"Group/{group_id}"}]},
            "channel": channel}


WRITE = "system/*.read system/Subscription.write"  # creating, changing, deleting a Subscription is a write


def auth(base: str, key: ClientKey, scope: str = WRITE) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token(base, scope)}"}


def create(base: str, key: ClientKey, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/Subscription", json=body, headers=auth(base, key), timeout=30)


def read(base: str, key: ClientKey, sub_id: str) -> dict[str, Any]:
    res = httpx.get(f"{base}/Subscription/{sub_id}", headers=auth(base, key), timeout=30)
    assert res.status_code == 200, res.text
    return res.json()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, ClientKey, ClientKey]:
    """2026-08 published by `atr run` and two clients registered, once; each test works on a copy."""
    home = tmp_path_factory.mktemp("template") / "home"
    home.mkdir()
    publish(home, "2026-08")
    one, two = ClientKey(), ClientKey("ES384")
    register(home, one, ONE)
    register(home, two, TWO)
    return home, one, two


@pytest.fixture
def world(template, tmp_path) -> tuple[Path, ClientKey, ClientKey]:
    home, one, two = template
    copy = tmp_path / "home"
    shutil.copytree(home, copy, symlinks=True)
    return copy, one, two


# ---------------------------------------------------------------------- in-process rules


def test_endpoints_must_be_https_or_loopback_http_unless_the_server_allows_http():
    assert check_endpoint("https://hooks.example.org/atr") == "https://hooks.example.org/atr"
    assert check_endpoint("http://127.0.0.1:9000/hook") == "http://127.0.0.1:9000/hook"
    assert check_endpoint("http://[::1]:9000/hook") == "http://[::1]:9000/hook"
    with pytest.raises(FhirError, match="must be https"):
        check_endpoint("http://hooks.example.org/atr")
    assert check_endpoint("http://hooks.example.org/atr", allow_http=True) == "http://hooks.example.org/atr"
    for bad in ("ftp://hooks.example.org/x", "hooks.example.org", "", None, "https://user:pw@hooks.example.org/x"):
        with pytest.raises(FhirError) as refused:
            check_endpoint(bad, allow_http=True)
        assert refused.value.status == 400


def test_only_the_atr_topic_a_group_filter_rest_hook_and_id_only_are_accepted():
    good = subscription("g-1", "https://hooks.example.org/atr", heartbeat=60, headers=("Authorization: Bearer s3cret",))
    parsed = parse_subscription(good)
    assert parsed["group_id"] == "g-1" and parsed["heartbeat"] == 60 and parsed["headers"] == ["Authorization: Bearer s3cret"]
    cases = {
        "topic": subscription("g-1", "https://h.example.org", topic="http://example.org/SubscriptionTopic/other"),
        "full-resource": subscription("g-1", "https://h.example.org", content="full-resource"),
        "heartbeat 0": subscription("g-1", "https://h.example.org", heartbeat=0),
        "header with a newline": subscription("g-1", "https://h.example.org", headers=("X-A: b\r\nX-Evil: c",)),
    }
    no_filter = subscription("g-1", "https://h.example.org")
    del no_filter["_criteria"]
    cases["no filter"] = no_filter
    websocket = subscription("g-1", "https://h.example.org")
    websocket["channel"]["type"] = "websocket"
    cases["websocket"] = websocket
    patient_filter = subscription("g-1", "https://h.example.org")
    patient_filter["_criteria"]["extension"][0]["valueString"] = "Patient/123"
    cases["not a Group"] = patient_filter
    for name, body in cases.items():
        with pytest.raises(FhirError) as refused:
            parse_subscription(body)
        assert refused.value.status == 400, name


# ---------------------------------------------------------------------- on a live server


def test_refusals_capability_and_own_subscriptions_only(world, receiver):
    home, one, two = world
    groups = group_ids(home, "2026-08")
    with live_server(home) as base:
        cs = httpx.get(f"{base}/metadata").json()
        sub_cap = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Subscription")
        assert sub_cap["extension"] == [{"url": f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical", "valueCanonical": TOPIC}]
        assert sub_cap["supportedProfile"] == ["http://hl7.org/fhir/us/davinci-atr/StructureDefinition/atr-list-change-subscription"]
        assert {i["code"] for i in sub_cap["interaction"]} == {"create", "read", "update", "delete", "search-type"}
        assert sub_cap["operation"] == [{"name": "status", "definition":
                                         "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"}]

        # another client's Group and an unknown Group: 401, word for word the same (existence not revealed)
        theirs = create(base, one, subscription(groups["VBC25-0002"], receiver.url))
        unknown = create(base, one, subscription("no-such-group", receiver.url))
        assert theirs.status_code == unknown.status_code == 401
        assert theirs.json()["issue"][0]["diagnostics"].replace(groups["VBC25-0002"], "X") == \
            unknown.json()["issue"][0]["diagnostics"].replace("no-such-group", "X")
        assert httpx.post(f"{base}/Subscription", json=subscription(groups["VBC25-0001"], receiver.url)).status_code == 401
        far = create(base, one, subscription(groups["VBC25-0001"], "http://192.0.2.10/hook"))
        assert far.status_code == 400 and "https" in far.json()["issue"][0]["diagnostics"]
        assert create(base, one, subscription(groups["VBC25-0001"], receiver.url, content="full-resource")).status_code == 400

        read_only = auth(base, one, "system/*.read")
        refused = httpx.post(f"{base}/Subscription", json=subscription(groups["VBC25-0001"], receiver.url), headers=read_only, timeout=30)
        assert refused.status_code == 403 and "write scope" in refused.json()["issue"][0]["diagnostics"]
        created = create(base, one, subscription(groups["VBC25-0001"], receiver.url))
        assert created.status_code == 201, created.text
        sub = created.json()
        assert httpx.delete(f"{base}/Subscription/{sub['id']}", headers=read_only, timeout=30).status_code == 403
        assert httpx.get(f"{base}/Subscription/{sub['id']}", headers=read_only, timeout=30).status_code == 200
        assert sub["status"] == "requested" and created.headers["location"] == f"{base}/Subscription/{sub['id']}"
        receiver.wait(lambda r: len(r.of_kind("handshake")) == 1, "a handshake")
        assert not receiver.refused and httpx.get(f"{base}/Subscription/{sub['id']}").status_code == 401

        # the other client cannot see, search, $status or delete it
        for method, path in (("GET", sub["id"]), ("GET", f"{sub['id']}/$status"), ("DELETE", sub["id"])):
            assert httpx.request(method, f"{base}/Subscription/{path}", headers=auth(base, two), timeout=30).status_code == 404
        assert httpx.get(f"{base}/Subscription", headers=auth(base, two), timeout=30).json()["total"] == 0
        mine = httpx.get(f"{base}/Subscription", params={"status": "active"}, headers=auth(base, one), timeout=30).json()
        assert [e["resource"]["id"] for e in mine["entry"]] == [sub["id"]]
        assert httpx.get(f"{base}/Subscription", params={"criteria": "x"}, headers=auth(base, one), timeout=30).status_code == 400

        assert httpx.delete(f"{base}/Subscription/{sub['id']}", headers=auth(base, one), timeout=30).status_code == 204
        assert httpx.get(f"{base}/Subscription/{sub['id']}", headers=auth(base, one), timeout=30).status_code == 404
        files = list((home / "api" / "subscriptions").iterdir())
        assert files == [] and (home / "api" / "subscriptions").stat().st_mode & 0o777 == 0o700


def test_handshake_refused_leaves_the_subscription_in_error_after_three_tries(world, receiver):
    home, one, _ = world
    receiver.failing = True
    with live_server(home) as base:
        sub = create(base, one, subscription(group_ids(home, "2026-08")["VBC25-0001"], receiver.url)).json()
        wait_for(lambda: read(base, one, sub["id"])["status"] == "error", "status error after the failed handshakes")
        assert "handshake failed (HTTP 503)" in read(base, one, sub["id"])["error"]
        assert receiver.refused == 3 and not receiver.received
        stored = (home / "api" / "subscriptions" / f"{sub['id']}.json")
        assert stored.stat().st_mode & 0o777 == 0o600
        # the endpoint is back: an update with status requested tries the handshake again, 3 tries afresh
        receiver.failing = False
        again = put(base, one, sub["id"], {**subscription(group_ids(home, "2026-08")["VBC25-0001"], receiver.url), "id": sub["id"]})
        assert again.status_code == 200 and again.json()["status"] == "requested" and "error" not in again.json()
        receiver.wait(lambda r: len(r.of_kind("handshake")) == 1, "the handshake after the update")
        wait_for(lambda: read(base, one, sub["id"])["status"] == "active", "active after the new handshake")


def put(base: str, key: ClientKey, sub_id: str, body: dict[str, Any], scope: str = WRITE) -> httpx.Response:
    return httpx.put(f"{base}/Subscription/{sub_id}", json=body, headers=auth(base, key, scope), timeout=30)


def test_update_off_stops_everything_and_on_again_handshakes_without_what_was_missed(world, receiver):
    home, one, _ = world
    groups = group_ids(home, "2026-08")
    with live_server(home) as base:
        body = subscription(groups["VBC25-0001"], receiver.url, heartbeat=1)
        sub_id = create(base, one, body).json()["id"]
        receiver.wait(lambda r: len(r.of_kind("heartbeat")) >= 1, "the handshake and a heartbeat")

        # refusals first: read-only token 403, another id 400, another's Group 401 (ATR §6), unknown status 400
        assert put(base, one, sub_id, {**body, "id": sub_id, "status": "off"}, "system/*.read").status_code == 403
        assert put(base, one, sub_id, {**body, "id": "not-this-one", "status": "off"}).status_code == 400
        theirs = subscription(groups["VBC25-0002"], receiver.url)
        assert put(base, one, sub_id, {**theirs, "id": sub_id}).status_code == 401
        assert put(base, one, sub_id, {**body, "id": sub_id, "status": "error"}).status_code == 400
        assert read(base, one, sub_id)["status"] == "active"

        off = put(base, one, sub_id, {**body, "id": sub_id, "status": "off"})
        assert off.status_code == 200 and off.json()["status"] == "off"
        time.sleep(1)  # a heartbeat already in flight when it turned off may still land
        quiet_from = len(receiver.received)
        publish(home, "2026-09")  # version 2 while off: seconds, several heartbeat periods
        time.sleep(2)  # four dispatcher ticks after the publication
        assert len(receiver.received) == quiet_from, "an off Subscription was sent something"
        assert read(base, one, sub_id)["status"] == "off"

        on = put(base, one, sub_id, {**body, "id": sub_id, "status": "requested"})
        assert on.status_code == 200 and on.json()["status"] == "requested"
        receiver.wait(lambda r: len(r.of_kind("handshake")) == 2, "a second handshake")
        handshakes = len(receiver.received)
        receiver.wait(lambda r: len(r.received) > handshakes and r.received[-1].kind == "heartbeat", "a heartbeat after it")
        # heartbeats go out only with nothing queued: version 2, published while off, is not announced
        assert receiver.event_numbers() == [] and receiver.received[-1].events_since_start == "0"


def test_handshake_event_heartbeat_and_a_restart_that_neither_loses_nor_repeats(world, receiver):
    home, one, _ = world
    group = group_ids(home, "2026-08")["VBC25-0001"]
    with live_server(home) as base:
        created = create(base, one, subscription(group, receiver.url, heartbeat=1, headers=("Authorization: Bearer hook-secret",)))
        sub_id = created.json()["id"]
        receiver.wait(lambda r: len(r.of_kind("handshake")) == 1, "the handshake")
        handshake = receiver.of_kind("handshake")[0]
        assert handshake.bundle["type"] == "history" and handshake.status["resourceType"] == "Parameters"
        assert handshake.params["status"]["valueCode"] == "requested" and handshake.events_since_start == "0"
        assert handshake.params["subscription"]["valueReference"]["reference"] == f"{base}/Subscription/{sub_id}"
        assert handshake.params["topic"]["valueCanonical"] == TOPIC
        assert handshake.headers["Authorization"] == "Bearer hook-secret"
        assert handshake.headers["Content-Type"] == "application/fhir+json"
        wait_for(lambda: read(base, one, sub_id)["status"] == "active", "active after the handshake")

        # Group version 1 was published before the Subscription: nothing is sent for it.
        publish(home, "2026-09")  # the real pipeline, while serving: version 2 of both Groups
        receiver.wait(lambda r: r.event_numbers() == ["1"], "event 1")
        note = receiver.of_kind("event-notification")[0]
        assert note.params["status"]["valueCode"] == "active" and note.events_since_start == "1"
        [event] = note.events()
        assert event["focus"] == {"reference": f"{base}/Group/{group}/_history/2"}  # only this client's Group
        assert b"Patient" not in note.raw and b"member" not in note.raw  # id-only: no member data on the wire
        receiver.wait(lambda r: any(h.events_since_start == "1" for h in r.of_kind("heartbeat")), "a heartbeat after event 1")
        heartbeat = receiver.of_kind("heartbeat")[-1]
        assert heartbeat.params["status"]["valueCode"] == "active" and not heartbeat.events()
        status = httpx.get(f"{base}/Subscription/{sub_id}/$status", headers=auth(base, one), timeout=30).json()
        params = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
        assert params["type"]["valueCode"] == "query-status" and params["events-since-subscription-start"]["valueString"] == "1"

    publish(home, "2026-10")  # while the server is down: version 3
    with live_server(home) as base:
        receiver.wait(lambda r: r.event_numbers() == ["1", "2"], "event 2 after the restart")
        assert receiver.of_kind("event-notification")[-1].events()[0]["focus"]["reference"].endswith(f"/Group/{group}/_history/3")
        # heartbeats go out only with nothing queued: one after event 2 means no event is waiting to be repeated
        after = len(receiver.of_kind("heartbeat"))
        receiver.wait(lambda r: len(r.of_kind("heartbeat")) > after, "a heartbeat after event 2")
        assert receiver.event_numbers() == ["1", "2"]

    with live_server(home):  # nothing new published: nothing to send but heartbeats
        after = len(receiver.of_kind("heartbeat"))
        receiver.wait(lambda r: len(r.of_kind("heartbeat")) > after, "a heartbeat after the second restart")
        assert receiver.event_numbers() == ["1", "2"]
        assert receiver.of_kind("heartbeat")[-1].events_since_start == "2"
        # a list made final is a new Group version too (the same path as an accepted request or a confirm)
        assert atr(home, "finalize", "--source", "acme_commercial", "--contract", "VBC25-0001").returncode == 0
        res = atr(home, "publish", "--mapping", "mappings/acme_commercial.yaml", "--month", "2026-10")
        assert res.returncode == 0, res.stdout + res.stderr
        receiver.wait(lambda r: r.event_numbers() == ["1", "2", "3"], "event 3 after finalize")
        assert receiver.of_kind("event-notification")[-1].events()[0]["focus"]["reference"].endswith(f"/Group/{group}/_history/4")


def test_receiver_down_is_retried_then_delivered_and_a_full_queue_drops_the_oldest(world, receiver, monkeypatch):
    monkeypatch.setenv("ATR_API_NOTIFY_QUEUE", "1")  # read by the server subprocess
    home, one, _ = world
    group = group_ids(home, "2026-08")["VBC25-0001"]
    with live_server(home) as base:
        sub_id = create(base, one, subscription(group, receiver.url)).json()["id"]
        wait_for(lambda: read(base, one, sub_id)["status"] == "active", "active after the handshake")
        receiver.failing = True
        publish(home, "2026-09")  # event 1
        receiver.wait(lambda r: r.refused >= 2, "event 1 tried twice")
        sub = read(base, one, sub_id)
        assert sub["status"] == "error" and "not being delivered (HTTP 503); retrying" in sub["error"]
        publish(home, "2026-10")  # event 2: the queue holds one, so event 1 is dropped
        wait_for(lambda: "dropped" in read(base, one, sub_id).get("error", ""), "the overflow reported")
        assert "1 event(s) dropped" in read(base, one, sub_id)["error"]
        receiver.failing = False
        receiver.wait(lambda r: r.event_numbers() == ["2"], "event 2 once the receiver is back")
        note = receiver.of_kind("event-notification")[0]
        assert note.events_since_start == "2"  # 2 events happened, only event 2 arrives: the gap says re-read the Group
        assert note.events()[0]["focus"]["reference"] == f"{base}/Group/{group}/_history/3"
        assert "dropped" in note.params["error"]["valueCodeableConcept"]["text"]
        wait_for(lambda: read(base, one, sub_id)["status"] == "active", "active again after a delivery")
        assert "error" not in read(base, one, sub_id)
