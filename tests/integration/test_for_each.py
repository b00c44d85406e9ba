"""For-each steps through real workers and the scheduler: a thousand items under max_parallel, each
succeeding once and no attempt run twice; k-of-n succeeding with some items failed, and failing early
with the items in flight cancelled; the items endpoint's pages; the diagnosis' facts of the items
running and their workers."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from orchestrator import diagnosis
from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.states import RunStatus
from tests.integration.conftest import by_id, publish, start, wait_for, wait_run

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


def assert_each_attempt_started_once(log: list[dict]) -> None:
    """No item attempt was claimed twice (a duplicate delivery is dropped by the claim's guard); an item
    started at a later attempt is one whose earlier attempt's lease expired on a loaded machine (a
    worker starved of CPU for longer than the lease): taken back as lost and retried, as it must be."""
    started = Counter((e["step_id"], e["attempt"]) for e in log if e["type"] == "step_started")
    assert [attempt for attempt, n in started.items() if n > 1] == []
    lost = {(e["step_id"], e["attempt"]) for e in log
            if e["type"] == "step_retrying" and e["data"]["error"]["code"] == "worker_lost"}
    latest: dict[str, int] = {}
    for item, attempt in started:
        latest[item] = max(latest.get(item, 0), attempt)
    again = sorted((item, attempt) for item, attempt in started if attempt < latest[item])
    assert [a for a in again if a not in lost] == [], [e for e in log if (e["step_id"], e["attempt"]) in set(again)]
    assert len(latest) == 1000


def test_a_thousand_items_twenty_at_a_time_each_attempt_run_once(api):
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
    assert sorted(completed) == sorted(set(completed)) and len(completed) == 1000  # each item succeeded once
    assert_each_attempt_started_once(log)
    live, most = set(), 0
    for event in log:  # in the log's order: items queued and not yet completed never pass max_parallel
        if event["type"] == "step_queued":
            live.add(event["step_id"])
        elif event["type"] == "step_completed":
            live.discard(event["step_id"])
        most = max(most, len(live))
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


def test_the_diagnosis_facts_hold_a_for_each_steps_running_items_and_their_workers(api, settings):
    workflow = publish(api, {"name": "naps", "steps": [
        {"id": "nap", "type": "tool", "tool": "sleep", "for_each": "input.n", "args": {"seconds": 3}}]})
    run_id = start(api, workflow, {"n": [1, 2]})
    sessions = make_sessionmaker(make_engine(settings))

    def facts_with_items_running():
        with sessions() as session:
            steps, _, _ = repo.diagnosis_facts(session, run_id)
        return steps if len(steps[0].items_running) == 2 else None

    steps = wait_for(facts_with_items_running, 30, "both items to be running")
    held = steps[0].items_running
    assert [i.step_id for i in held] == ["nap[0]", "nap[1]"] and all(i.worker and i.lease_expires_at for i in held)
    workers = diagnosis.workers_running(steps)
    assert workers == {diagnosis.worker_name(i.worker) for i in held}
    # Were those workers silent (the API's worker monitor says which are), the step's diagnosis names them.
    causes = diagnosis.diagnose(run_id, RunStatus.RUNNING, None, steps, approvals={}, questions={}, consumers=None,
                                silent_workers=dict.fromkeys(workers))
    assert [(c.kind, c.step_id) for c in causes] == [("worker_lost", "nap")]
    assert all(name in causes[0].message for name in workers) and "nap[0]" in causes[0].message
    assert wait_run(api, run_id)["status"] == "succeeded"
