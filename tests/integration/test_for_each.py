"""For-each steps through real workers and the scheduler: a thousand items under max_parallel, each
run once; k-of-n succeeding with some items failed, and failing early with the items in flight
cancelled; the items endpoint's pages."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import by_id, publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def all_events(api, run_id: str) -> list[dict]:
    found, after = [], 0
    while True:
        page = api.get(f"/runs/{run_id}/events?after={after}&limit=5000").get_json()
        found += page["events"]
        if not page["events"]:
            return found
        after = page["next_after"]


def all_items(api, run_id: str, step_id: str, limit: int = 500, **query) -> list[dict]:
    found, cursor = [], None
    while True:
        params = {"limit": limit, **query, **({"cursor": cursor} if cursor else {})}
        response = api.get(f"/runs/{run_id}/steps/{step_id}/items", query_string=params)
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def test_a_thousand_items_twenty_at_a_time_each_run_once(api):
    workflow = publish(api, {"name": "map", "steps": [
        {"id": "list", "type": "tool", "tool": "echo", "args": {"text": "listed"}},
        {"id": "double", "type": "tool", "tool": "echo", "needs": ["list"], "for_each": "input.numbers",
         "max_parallel": 20, "args": {"value": "{{ item * 2 }}", "at": "{{ index }}"}},
        {"id": "total", "type": "tool", "tool": "echo", "needs": ["double"],
         "args": {"count": "{{ steps.double.output | length }}"}},
    ]})
    run_id = start(api, workflow, {"numbers": list(range(1000))})
    run = wait_run(api, run_id, timeout=300)
    assert run["status"] == "succeeded", (run["error"], [(s["id"], s["status"], s["error"]) for s in run["steps"]])
    step = by_id(run)["double"]
    assert step["items"] == {"total": 1000, "succeeded": 1000, "failed": 0, "running": 0, "pending": 0,
                             "cancelled": 0}
    assert [o["value"] for o in step["output"]] == [2 * n for n in range(1000)]
    assert "double[0]" not in by_id(run)  # items are not steps of the run's list

    log = [e for e in all_events(api, run_id) if (e["step_id"] or "").startswith("double[")]
    completed = [e["step_id"] for e in log if e["type"] == "step_completed"]
    started = [e["step_id"] for e in log if e["type"] == "step_started"]
    assert sorted(completed) == sorted(set(completed)) and len(completed) == 1000  # each item succeeded once
    twice = {i for i in started if started.count(i) > 1}
    assert len(started) == 1000, [e for e in log if e["step_id"] in twice]  # and ran once: no item was run twice
    in_flight, most = 0, 0
    for event in log:  # in the log's order: queued items not yet completed never pass max_parallel
        in_flight += {"step_queued": 1, "step_completed": -1}.get(event["type"], 0)
        most = max(most, in_flight)
    assert most == 20

    items = all_items(api, run_id, "double", limit=300)
    assert [i["index"] for i in items] == list(range(1000))
    assert {i["status"] for i in items} == {"succeeded"} and items[7]["output"]["value"] == 14


def test_k_of_n_succeeds_with_some_items_failed_and_their_outputs_null(api):
    workflow = publish(api, {"name": "k-of-n", "steps": [
        {"id": "each", "type": "tool", "tool": "fail", "for_each": "input.until", "min_succeeded": 3,
         "retry": {"max_attempts": 1}, "args": {"until_attempt": "{{ item }}", "message": "item {{ index }} failed"}},
    ]})
    run = wait_run(api, start(api, workflow, {"until": [1, 99, 1, 99, 1]}))
    assert run["status"] == "succeeded", (run["error"], run["steps"])
    step = by_id(run)["each"]
    assert (step["items"]["succeeded"], step["items"]["failed"]) == (3, 2)
    assert [o is None for o in step["output"]] == [False, True, False, True, False]
    failed = all_items(api, run["id"], "each", status="failed")
    assert [(i["index"], i["error"]["message"]) for i in failed] == [(1, "item 1 failed"), (3, "item 3 failed")]


def test_k_of_n_fails_as_soon_as_it_cannot_succeed_and_cancels_the_items_in_flight(api):
    workflow = publish(api, {"name": "k-of-n-early", "steps": [
        {"id": "each", "type": "tool", "tool": "fail", "for_each": "input.jobs", "min_succeeded": 5,
         "retry": {"max_attempts": 1},
         "args": {"until_attempt": "{{ item.until }}", "after_s": "{{ item.after_s }}"}},
    ]})
    slow_ok, fast_fail = {"until": 1, "after_s": 30}, {"until": 99, "after_s": 0}
    begun = time.monotonic()
    run = wait_run(api, start(api, workflow, {"jobs": [slow_ok] * 4 + [fast_fail] * 3}), timeout=25)
    assert time.monotonic() - begun < 25  # long before the slow items could have ended by themselves
    assert run["status"] == "failed", run
    step = by_id(run)["each"]
    assert step["status"] == "failed" and step["error"]["code"] == "too_few_succeeded"
    assert step["items"]["failed"] == 3 and step["items"]["succeeded"] == 0
    cancelled = all_items(api, run["id"], "each", status="cancelled")
    assert [i["index"] for i in cancelled] == [0, 1, 2, 3]


def test_the_items_of_a_step_that_is_not_a_for_each_are_a_clear_400(api):
    run = wait_run(api, start(api, publish(api, {"name": "plain", "steps": [
        {"id": "a", "type": "tool", "tool": "echo"}]}), {}))
    response = api.get(f"/runs/{run['id']}/steps/a/items")
    assert response.status_code == 400 and "not a for-each step" in response.get_json()["error"]["message"]
    assert api.get(f"/runs/{run['id']}/steps/nope/items").status_code == 404
