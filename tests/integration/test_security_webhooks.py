"""Signed webhooks: a good signature starts a run; a wrong secret, a tampered body, an old or future
timestamp, a replay or a bad header each answer 401 and start nothing; rotation keeps the previous
secret valid for the overlap; the secret is shown once and stored nowhere."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import create_engine, text

from orchestrator.webhooks import signature_header
from tests.integration.conftest import Api, publish

TICKETS = {
    "name": "tickets from outside",
    "input_schema": {"type": "object", "required": ["ticket"], "properties": {"ticket": {"type": "string"}}},
    "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "{{ input.ticket }}"}}],
}


def deliver(api: Api, workflow: str, secret: str, body: bytes, t: int | None = None, header: str | None = None):
    headers = {"X-Switchyard-Signature": header or signature_header(secret, t or int(time.time()), body),
               "Content-Type": "application/json"}
    return api.client.post(f"/api/v1/hooks/{workflow}", data=body, headers=headers)


def runs_of(api: Api, workflow: str) -> list[dict]:
    return api.get(f"/runs?workflow_id={workflow}&limit=500").get_json()["runs"]


@pytest.fixture
def hook(api):
    workflow = publish(api, TICKETS)
    created = api.post(f"/workflows/{workflow}/webhook-secrets")
    assert created.status_code == 201, created.get_json()
    return workflow, created.get_json()


def test_a_good_signature_starts_a_run_once(api, hook, database_url):
    workflow, secret = hook
    assert secret["secret"].startswith("whsec_") and secret["id"].startswith("whs_")
    body = json.dumps({"ticket": "printer on fire"}).encode()
    header = signature_header(secret["secret"], int(time.time()), body)
    answer = deliver(api, workflow, "", body, header=header)
    assert answer.status_code == 201, answer.get_json()
    run = answer.get_json()
    assert run["trigger_type"] == "webhook" and run["triggered_by"] == secret["id"]
    assert run["input"] == {"ticket": "printer on fire"}

    replay = deliver(api, workflow, "", body, header=header)
    assert replay.status_code == 401 and "used already" in replay.get_json()["error"]["message"]
    assert [r["id"] for r in runs_of(api, workflow)] == [run["id"]]

    # The secret is shown once: not in the listing, not in the database.
    listing = api.get(f"/workflows/{workflow}/webhook-secrets")
    assert listing.status_code == 200 and secret["secret"] not in listing.get_data(as_text=True)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM webhook_secrets")).mappings().all()
        deliveries = conn.execute(text("SELECT * FROM webhook_deliveries")).mappings().all()
    engine.dispose()
    assert rows and secret["secret"] not in json.dumps([dict(r) for r in rows + deliveries], default=str)


def test_bad_deliveries_answer_401_and_start_nothing(api, hook):
    workflow, secret = hook
    body = json.dumps({"ticket": "x"}).encode()
    now = int(time.time())
    good = signature_header(secret["secret"], now, body)
    bad = {
        "wrong secret": signature_header("whsec_" + "0" * 64, now, body),
        "tampered body": None,  # signed `body`, sends another
        "old timestamp": signature_header(secret["secret"], now - 3600, body),
        "future timestamp": signature_header(secret["secret"], now + 3600, body),
        "timestamp changed": good.replace(f"t={now}", f"t={now - 1}"),
        "one hex digit changed": good[:-1] + ("0" if good[-1] != "0" else "1"),
        "no v1": f"t={now}",
        "garbage": "hello",
        "missing": "",
    }
    for name, header in bad.items():
        sent = body.replace(b"x", b"y") if name == "tampered body" else body
        headers = {"Content-Type": "application/json"}
        if name != "missing":
            headers["X-Switchyard-Signature"] = header or good
        answer = api.client.post(f"/api/v1/hooks/{workflow}", data=sent, headers=headers)
        assert answer.status_code == 401, (name, answer.get_json())
        error = answer.get_json()["error"]
        assert error["code"] == "unauthorized" and secret["secret"] not in json.dumps(error), name
    assert runs_of(api, workflow) == []
    # Unknown workflow, or one without secrets: 401 as well, never a hint that it exists.
    assert deliver(api, "no-such-workflow", secret["secret"], body).status_code == 401


def test_a_signed_body_that_fails_the_input_schema_is_400_and_starts_nothing(api, hook):
    workflow, secret = hook
    for body in (b'{"ticket": 5}', b"not json"):
        answer = deliver(api, workflow, secret["secret"], body)
        assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_request"
    assert runs_of(api, workflow) == []


def test_rotation_keeps_the_previous_secret_for_the_overlap(api, hook):
    workflow, first = hook
    second = api.post(f"/workflows/{workflow}/webhook-secrets", json={"overlap_s": 600}).get_json()
    listed = {s["id"]: s for s in api.get(f"/workflows/{workflow}/webhook-secrets").get_json()["webhook_secrets"]}
    assert listed[first["id"]]["expires_at"] is not None and listed[second["id"]]["expires_at"] is None
    for n, secret in enumerate((first, second)):
        answer = deliver(api, workflow, secret["secret"], json.dumps({"ticket": f"t{n}"}).encode())
        assert answer.status_code == 201, answer.get_json()
        assert answer.get_json()["triggered_by"] == secret["id"]

    third = api.post(f"/workflows/{workflow}/webhook-secrets", json={"overlap_s": 0}).get_json()
    for gone in (first, second):
        assert deliver(api, workflow, gone["secret"], b'{"ticket": "late"}').status_code == 401
    assert deliver(api, workflow, third["secret"], b'{"ticket": "new"}').status_code == 201
    assert len(runs_of(api, workflow)) == 3


def test_the_signature_picks_the_tenant(api, tokens):
    """Two tenants with a workflow of the same id: each secret starts its own tenant's run only."""
    other = api.as_(tokens["other_tenant"])
    workflow = publish(api, TICKETS)
    publish(other, TICKETS, workflow)
    mine = api.post(f"/workflows/{workflow}/webhook-secrets").get_json()["secret"]
    theirs = other.post(f"/workflows/{workflow}/webhook-secrets").get_json()["secret"]
    assert mine != theirs
    run = deliver(api, workflow, theirs, b'{"ticket": "globex"}').get_json()
    assert other.get(f"/runs/{run['id']}").status_code == 200
    assert api.get(f"/runs/{run['id']}").status_code == 404
    assert runs_of(api, workflow) == []
