"""Bulk actions through the real API, workers and scheduler: a dry run, then a fork of 100 failed runs
(each forked run reuses the step that succeeded and runs the overridden one; the 100 share one stored
definition); runs in the wrong state are skipped, never a failure of the request; the filter and the
action's fields are checked."""

from __future__ import annotations

import pytest

from tests.integration.conftest import by_id, publish, start, unique, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def failing_workflow(api) -> str:
    return publish(api, {"name": "fails at b", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "{{ input.n }}"}},
        {"id": "b", "type": "tool", "tool": "fail", "needs": ["a"], "retry": {"max_attempts": 1},
         "args": {"message": "bad arguments"}},
    ]}, unique("bulk"))


def runs_of(api, workflow: str, status: str | None = None) -> list[dict]:
    query = f"/runs?workflow_id={workflow}&limit=500" + (f"&status={status}" if status else "")
    return api.get(query).get_json()["runs"]


def test_a_bulk_fork_of_a_hundred_failed_runs_with_a_dry_run_first(api, settings):
    workflow = failing_workflow(api)
    originals = {start(api, workflow, {"n": i}) for i in range(100)}
    wait_for(lambda: len(runs_of(api, workflow, "failed")) == 100, 180, "100 runs to fail", interval=0.5)
    body = {"filter": {"workflow_id": workflow, "status": "failed", "error_code": "tool_failed"},
            "limit": 1000, "from_step": "b", "steps": {"b": {"tool": "echo", "args": {"fixed": "{{ input.n }}"}}}}

    dry = api.post("/runs/bulk/fork", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.get_json()
    assert dry.get_json() == {"matched": 100, "applied": 0, "skipped": [], "runs": dry.get_json()["runs"]}
    assert set(dry.get_json()["runs"]) == originals
    assert len(runs_of(api, workflow)) == 100  # a dry run starts nothing
    other_code = {**body, "dry_run": True, "filter": {**body["filter"], "error_code": "http_error"}}
    assert api.post("/runs/bulk/fork", json=other_code).get_json()["matched"] == 0

    applied = api.post("/runs/bulk/fork", json=body).get_json()
    assert (applied["matched"], applied["applied"], applied["skipped"]) == (100, 100, []), applied
    forks = set(applied["runs"])
    assert len(forks) == 100 and not forks & originals
    wait_for(lambda: len(runs_of(api, workflow, "succeeded")) == 100, 180, "100 forks to succeed", interval=0.5)
    fork = api.get(f"/runs/{sorted(forks)[0]}").get_json()
    assert fork["forked_from"]["run_id"] in originals and fork["forked_from"]["step_id"] == "b"
    steps = by_id(fork)
    assert steps["a"]["reused"] and not steps["b"]["reused"]
    assert steps["b"]["output"] == {"fixed": steps["a"]["output"]["text"]}
    assert fork["usage"]["steps"] == 1
    # The 100 forks run one stored definition, not a copy each.
    assert len({api.get(f"/runs/{r}").get_json()["workflow"]["version"] for r in sorted(forks)[:10]}) == 1

    # Again: the originals are still failed (a fork leaves them be), the forks are not selected.
    again = api.post("/runs/bulk/fork", json={**body, "dry_run": True, "limit": 10}).get_json()
    assert again["matched"] == 100 and len(again["runs"]) == 10


def test_runs_in_the_wrong_state_are_skipped_and_the_rest_applied(api):
    workflow = failing_workflow(api)
    failed = wait_run(api, start(api, workflow, {"n": 1}))["id"]
    sleeper = publish(api, {"name": "sleeps", "steps": [
        {"id": "nap", "type": "tool", "tool": "sleep", "args": {"seconds": 30}}]})
    running = start(api, sleeper)
    wait_for(lambda: api.get(f"/runs/{running}").get_json()["status"] == "running", 30, "the sleeper to run")

    result = api.post("/runs/bulk/retry", json={"filter": {"run_ids": [failed, running]}}).get_json()
    assert (result["matched"], result["applied"], result["runs"]) == (2, 1, [failed])
    assert result["skipped"] == [{"run_id": running, "reason": "cannot retry a run that is running; allowed from "
                                                                "['cancelled', 'failed']"}]
    cancelled = api.post("/runs/bulk/cancel", json={"filter": {"run_ids": [running, failed]}, "reason": "done"})
    assert cancelled.get_json()["applied"] >= 1
    assert wait_run(api, running)["status"] == "cancelled"


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/runs/bulk/cancel", {"filter": {}}, 400, "at least one of"),
    ("/runs/bulk/cancel", {"filter": {"status": "sleeping"}}, 400, "filter.status"),
    ("/runs/bulk/cancel", {"filter": {"created_after": "yesterday"}}, 400, "filter.created_after"),
    ("/runs/bulk/cancel", {"filter": {"status": "failed"}, "limit": 1001}, 400, "limit"),
    ("/runs/bulk/pause", {"filter": {"status": "failed"}, "reason": "x"}, 400, "pause does not take ['reason']"),
    ("/runs/bulk/fork", {"filter": {"status": "failed"}}, 400, "from_step"),
    ("/runs/bulk/explode", {"filter": {"status": "failed"}}, 404, "cancel"),
])
def test_a_bad_bulk_request_is_refused_before_any_run_is_touched(api, path, body, status, words):
    response = api.post(path, json=body)
    assert response.status_code == status, response.get_json()
    assert words in response.get_json()["error"]["message"]
    if status == 404:
        assert response.get_json()["error"]["details"]["valid_actions"] == [
            "cancel", "pause", "resume", "retry", "rerun", "fork"]


def test_bulk_actions_need_an_operator_and_see_one_tenant(api, tokens):
    workflow = failing_workflow(api)
    failed = wait_run(api, start(api, workflow, {"n": 1}))["id"]
    assert api.as_(tokens["viewer"]).post("/runs/bulk/retry", json={"filter": {"run_ids": [failed]}}).status_code == 403
    other = api.as_(tokens["other_tenant"]).post("/runs/bulk/retry", json={"filter": {"run_ids": [failed]}})
    assert other.get_json() == {"matched": 0, "applied": 0, "skipped": [], "runs": []}
