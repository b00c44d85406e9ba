"""Limits, each with its contract error: body size, input size, steps per definition, page sizes,
hostile JSON, and the per-tenant rate limit (429 with Retry-After)."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import Api, publish, wait_for

ECHO = {"name": "echo", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()["error"]
    assert body["code"] == code and set(body) == {"code", "message", "details"}
    return body


def test_body_over_the_limit_is_413_on_every_body(api):
    big = b'{"x": "' + b"a" * (1024 * 1024) + b'"}'
    for method, path in (("put", "/workflows/big"), ("post", "/runs"), ("post", "/events"), ("post", "/tokens")):
        response = getattr(api.client, method)(f"/api/v1{path}", data=big, content_type="application/json",
                                               headers=api._headers(None))
        assert _error(response, 413, "payload_too_large")["details"]["limit_bytes"] == 1024 * 1024


def test_run_input_over_its_limit_is_413(api, settings):
    workflow = publish(api, ECHO)
    too_big = {"text": "a" * (settings.max_input_bytes + 1)}
    error = _error(api.post("/runs", json={"workflow_id": workflow, "input": too_big}), 413, "payload_too_large")
    assert error["details"]["field"] == "input" and error["details"]["limit_bytes"] == settings.max_input_bytes
    assert api.post("/runs", json={"workflow_id": workflow, "input": {"text": "small"}}).status_code == 201


def test_definition_over_the_step_limit_is_400(api, settings):
    steps = [{"id": f"s{i}", "type": "tool", "tool": "echo"} for i in range(settings.max_steps_per_definition + 1)]
    error = _error(api.put("/workflows/too-many-steps", json={"name": "big", "steps": steps}), 400, "invalid_request")
    assert any("over the limit" in p for p in error["details"]["problems"])


@pytest.mark.parametrize("path", ["/runs?limit=501", "/runs?limit=0", "/runs/run_x/events?limit=5001",
                                  "/approvals?limit=501", "/questions?limit=100000000000000000000"])
def test_page_sizes_are_bounded(api, path):
    _error(api.get(path), 400, "invalid_request")


@pytest.mark.parametrize("raw", [b"[" * 100000 + b"]" * 100000, b'{"a": ' * 70 + b"1" + b"}" * 70,
                                 b'{"workflow_id": "x\\u0000y"}', b"\xff\xfe"])
def test_hostile_json_is_400(api, raw):
    _error(api.client.post("/api/v1/runs", data=raw, content_type="application/json", headers=api._headers(None)),
           400, "invalid_request")


def test_nul_in_the_url_is_400(api):
    _error(api.get("/runs?workflow_id=a%00b"), 400, "invalid_request")


def test_rate_limit_per_tenant_answers_429_with_retry_after(settings, app_for):
    """A separately built app with a limit of 3 a minute, counted in Redis, for tenants of its own."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    limited = app_for(settings.model_copy(update={"rate_limit_per_min": 3}))
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token, other = (repo.create_token(session, f"rl-{time.time_ns()}-{i}", "viewer", "rate limited")[1]
                        for i in range(2))
    client = Api(limited.test_client(), token)
    for _ in range(2):  # a second go if the minute turned over in the middle of the first
        window = int(time.time() // 60)
        answers = [client.get("/runs?limit=1") for _ in range(4)]
        if int(time.time() // 60) == window:
            break
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    _error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Other tenants have counters of their own; public endpoints are not counted.
    assert client.as_(other).get("/runs?limit=1").status_code == 200
    assert client.as_(None).get("/healthz").status_code == 200


def test_a_long_triggered_by_is_400_not_a_database_error(api):
    workflow = publish(api, ECHO)
    response = api.post(f"/runs?triggered_by={'x' * 201}", json={"workflow_id": workflow, "input": {}})
    _error(response, 400, "invalid_request")
    named = api.post("/runs?triggered_by=nightly-import", json={"workflow_id": workflow, "input": {}})
    assert named.status_code == 201 and named.get_json()["triggered_by"] == "nightly-import"


def test_an_approval_prompt_longer_than_its_column_is_cut_not_a_stuck_run(api, engine_processes):
    workflow = publish(api, {"name": "long prompt", "steps": [
        {"id": "review", "type": "approval", "prompt": "{{ input.text }}"}]})
    run = api.post("/runs", json={"workflow_id": workflow, "input": {"text": "p" * 5000}}).get_json()["id"]
    waiting = wait_for(lambda: api.get(f"/runs/{run}").get_json()["approvals"], 30,
                       "the run to wait on its approval")
    assert waiting[0]["prompt"] == "p" * 2000


def test_signed_endpoints_are_rate_limited_per_client_address(settings, app_for):
    """Webhooks and file URLs carry no token: forged deliveries from one address hit a limit too."""
    import secrets


    limited = app_for(settings.model_copy(update={"rate_limit_per_min": 3}))
    client = limited.test_client()
    address = f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    for _ in range(2):  # a second go if the minute turned over in the middle of the first
        window = int(time.time() // 60)
        answers = [client.post("/api/v1/hooks/nope", data=b"{}", environ_base={"REMOTE_ADDR": address})
                   for _ in range(4)]
        if int(time.time() // 60) == window:
            break
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
