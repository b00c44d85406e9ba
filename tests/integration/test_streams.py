"""Live streams over a real HTTP server: a run's events as SSE while real workers execute it, resumed
with Last-Event-ID, and the tenant's stream of run status changes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest

from tests.integration.conftest import events, publish, served, start, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")

SLOW = {
    "name": "streamed",
    "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "args": {"v": 1}},
        {"id": "b", "type": "tool", "tool": "sleep", "needs": ["a"], "args": {"seconds": 0.6}},
        {"id": "c", "type": "tool", "tool": "echo", "needs": ["b"]},
        {"id": "d", "type": "tool", "tool": "sleep", "needs": ["c"], "args": {"seconds": 0.6}},
        {"id": "e", "type": "llm", "needs": ["d"], "prompt": "done?"},
    ],
}


@pytest.fixture(scope="module")
def server(settings):
    """The API on a real threaded HTTP server on loopback, with a keep-alive every 0.5 s."""
    from api import create_app

    with served(create_app(settings.model_copy(update={"stream_keepalive_s": 0.5}))) as base:
        yield f"{base}/api/v1"


@dataclass
class Sse:
    id: str | None
    event: str | None
    data: dict | None
    received: float  # time.time() when the blank line ending it arrived


def read_sse(response: httpx.Response, deadline_s: float = 30):
    """Parse the stream into messages (keep-alive comments come out as Sse(None, None, None))."""
    fields: dict[str, str] = {}
    comment = False
    deadline = time.monotonic() + deadline_s
    for line in response.iter_lines():
        assert time.monotonic() < deadline, "the stream ran past its deadline"
        if line == "":
            if fields.get("data") is not None or comment:
                data = json.loads(fields["data"]) if "data" in fields else None
                yield Sse(fields.get("id"), fields.get("event"), data, time.time())
            fields, comment = {}, False
        elif line.startswith(":"):
            comment = True
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def auth(token: str, **extra) -> dict:
    return {"Authorization": f"Bearer {token}", **extra}


def created(event: dict) -> float:
    return datetime.fromisoformat(event["created_at"].replace("Z", "+00:00")).timestamp()


def subscribers(settings, channel: str) -> int:
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    try:
        return dict(client.pubsub_numsub(channel))[channel.encode()]
    finally:
        client.close()


def test_run_stream_delivers_every_event_in_order_within_a_second_and_resumes(api, server, tokens, settings):
    run_id = start(api, publish(api, SLOW))
    first, second = [], []
    opened_first = time.time()
    with httpx.stream("GET", f"{server}/runs/{run_id}/events/stream", headers=auth(tokens["viewer"]),
                      timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in read_sse(response):
            if message.event is None:
                continue
            first.append(message)
            if message.event == "step_started" and message.data["step_id"] == "b":
                break  # drop the connection in the middle of the run
    assert wait_run(api, run_id, statuses=("running",), timeout=5)["status"] == "running"
    opened_second = time.time()
    with httpx.stream("GET", f"{server}/runs/{run_id}/events/stream", timeout=10,
                      headers=auth(tokens["viewer"], **{"Last-Event-ID": first[-1].id})) as response:
        second = [m for m in read_sse(response) if m.event is not None]  # ends by itself at the run's end

    logged = events(api, run_id)
    received = first + second
    assert [m.id for m in received] == [str(e["seq"]) for e in logged] == [str(i) for i in range(1, len(logged) + 1)]
    assert [m.event for m in received] == [e["type"] for e in logged]
    assert [m.data for m in received] == logged
    assert received[-1].event == "run_succeeded"
    # Every event committed while a stream was open arrived within 1 s of its commit.
    opened = [(m, opened_first) for m in first] + [(m, opened_second) for m in second]
    live = [(m, created(m.data)) for m, since in opened if created(m.data) >= since]
    assert len(live) >= 8, f"only {len(live)} events were live; the run was too quick to test latency"
    late = [(m.event, round(m.received - t, 3)) for m, t in live if not -0.1 <= m.received - t < 1.0]
    assert late == []
    # Both streams gave their Redis subscription back: the one dropped mid-run included.
    wait_for(lambda: subscribers(settings, f"switchyard:run:{run_id}") == 0, 5, "the run's subscriptions to close")


def test_after_parameter_and_a_finished_run(api, server, tokens):
    run_id = start(api, publish(api, {"name": "quick", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}))
    wait_run(api, run_id)
    total = len(events(api, run_id))
    with httpx.stream("GET", f"{server}/runs/{run_id}/events/stream?after={total - 2}",
                      headers=auth(tokens["viewer"]), timeout=10) as response:
        got = [m for m in read_sse(response, 10) if m.event is not None]
    assert [int(m.id) for m in got] == [total - 1, total]


@pytest.mark.parametrize("case, status, code", [
    ("other tenant", 404, "not_found"), ("no token", 401, "unauthorized"),
    ("bad Last-Event-ID", 400, "invalid_request"), ("bad after", 400, "invalid_request"),
])
def test_stream_errors_are_contract_errors(api, server, tokens, case, status, code):
    other = api.as_(tokens["other_tenant"])
    run_id = start(other, publish(other, {"name": "x", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}))
    if case != "other tenant":
        run_id = start(api, publish(api, {"name": "x", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}))
    headers = {} if case == "no token" else auth(tokens["viewer"])
    if case == "bad Last-Event-ID":
        headers["Last-Event-ID"] = "seven"
    query = "?after=-3" if case == "bad after" else ""
    response = httpx.get(f"{server}/runs/{run_id}/events/stream{query}", headers=headers, timeout=10)
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_tenant_stream_shows_this_tenants_run_status_changes_only(api, server, tokens, settings):
    workflow = publish(api, {"name": "t", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]})
    with httpx.stream("GET", f"{server}/events/stream", headers=auth(tokens["other_tenant"]), timeout=10) as theirs, \
            httpx.stream("GET", f"{server}/events/stream", headers=auth(tokens["viewer"]), timeout=10) as mine:
        assert mine.status_code == 200 and theirs.status_code == 200
        run_id = start(api, workflow)
        statuses = []
        for message in read_sse(mine, 20):
            if message.event == "run_status" and message.data["run_id"] == run_id:
                assert message.id == f"{run_id}:{message.data['seq']}"
                statuses.append((message.data["previous_status"], message.data["status"]))
                if message.data["status"] == "succeeded":
                    break
        assert statuses == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
        # The other tenant's stream carries nothing of this run: read what it buffered meanwhile, up to
        # a keep-alive that came fresh (after the buffer was drained).
        drained_from = time.time()
        for message in read_sse(theirs, 10):
            if message.event is None:
                if message.received - drained_from > 0.2:
                    break
                continue
            assert message.data["run_id"] != run_id
    wait_for(lambda: subscribers(settings, "switchyard:tenant:acme") == subscribers(
        settings, "switchyard:tenant:globex") == 0, 5, "the tenant streams' subscriptions to close")
