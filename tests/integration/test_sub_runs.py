"""Sub-runs through real workers and the scheduler: a three-level chain whose leaf fails fails every
level with the child's id, and a retry of the top run starts a new chain that succeeds; cancelling a
parent cancels its live child; a child workflow that does not exist is refused at publish; a workflow
calling itself stops at the depth limit."""

from __future__ import annotations

import pytest

from tests.integration.conftest import by_id, publish, start, unique, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")

ONCE = {"max_attempts": 1}


def child_of(api, run: dict, step_id: str) -> dict:
    child_id = by_id(run)[step_id]["error"]["details"]["child_run_id"] if by_id(run)[step_id]["error"] else None
    return api.get(f"/runs/{child_id or run['children'][-1]}").get_json()


def test_a_failing_leaf_fails_every_level_and_a_retry_of_the_top_succeeds(api):
    leaf = publish(api, {"name": "leaf", "steps": [
        {"id": "work", "type": "tool", "tool": "fail", "retry": ONCE,
         "args": {"until_attempt": "{{ input.until }}", "message": "the leaf gave up"}}]})
    middle = publish(api, {"name": "middle", "steps": [
        {"id": "call", "type": "workflow", "workflow_id": leaf, "retry": ONCE, "input": {"until": "{{ input.until }}"}}]})
    # A retried top run has run.attempt 2: its leaf then succeeds at its first attempt.
    top = publish(api, {"name": "top", "steps": [
        {"id": "call", "type": "workflow", "workflow_id": middle, "retry": ONCE,
         "input": {"until": "{{ 3 - run.attempt }}"}}]})
    run = wait_run(api, start(api, top, {}))
    assert run["status"] == "failed", run
    failed = by_id(run)["call"]
    assert failed["error"]["code"] == "child_run_failed" and "the leaf gave up" in failed["error"]["message"]
    mid_run = child_of(api, run, "call")
    assert (mid_run["parent_run_id"], mid_run["parent_step_id"], mid_run["trigger_type"]) == (run["id"], "call",
                                                                                             "workflow")
    assert run["children"] == [mid_run["id"]] and mid_run["status"] == "failed"
    leaf_run = child_of(api, mid_run, "call")
    assert leaf_run["status"] == "failed" and leaf_run["parent_run_id"] == mid_run["id"]
    listed = api.get(f"/runs?parent_run_id={mid_run['id']}").get_json()["runs"]
    assert [r["id"] for r in listed] == [leaf_run["id"]]

    assert api.post(f"/runs/{run['id']}/retry").status_code == 200
    retried = wait_run(api, run["id"])
    assert retried["status"] == "succeeded", retried
    assert len(retried["children"]) == 2  # the failed chain's middle run, and the new one's
    new_middle = api.get(f"/runs/{retried['children'][-1]}").get_json()
    assert new_middle["status"] == "succeeded"
    assert by_id(retried)["call"]["output"] == new_middle["output"]
    assert new_middle["output"] == {"call": {"work": {"attempt": 1, "succeeded_after_failures": 0}}}


def test_cancelling_a_parent_cancels_its_live_child(api):
    slow = publish(api, {"name": "slow", "steps": [{"id": "nap", "type": "tool", "tool": "sleep",
                                                   "args": {"seconds": 60}}]})
    parent = publish(api, {"name": "parent", "steps": [{"id": "call", "type": "workflow", "workflow_id": slow}]})
    run_id = start(api, parent, {})

    def child_running():
        run = api.get(f"/runs/{run_id}").get_json()
        if not run["children"]:
            return None
        child = api.get(f"/runs/{run['children'][0]}").get_json()
        return child if by_id(child)["nap"]["status"] == "running" else None

    child = wait_for(child_running, 60, "the child run's step to be running")
    assert api.post(f"/runs/{run_id}/cancel").status_code == 200
    assert wait_run(api, run_id)["status"] == "cancelled"
    assert wait_run(api, child["id"], timeout=30)["status"] == "cancelled"


def test_a_child_workflow_that_does_not_exist_is_refused_at_publish(api):
    response = api.put(f"/workflows/{unique('wf')}", json={"name": "orphan", "steps": [
        {"id": "call", "type": "workflow", "workflow_id": "nowhere"}]})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["problems"] == [
        "steps.0.workflow_id: no workflow 'nowhere' in this tenant; publish it first"]


def test_a_workflow_calling_itself_stops_at_the_depth_limit(api):
    workflow_id = unique("wf")
    publish(api, {"name": "again", "steps": [{"id": "again", "type": "workflow", "workflow_id": workflow_id,
                                              "retry": ONCE}]}, workflow_id)
    run = wait_run(api, start(api, workflow_id, {}), timeout=120)
    assert run["status"] == "failed"
    depth = 0
    while run["children"]:
        run = api.get(f"/runs/{run['children'][0]}").get_json()
        depth += 1
    assert depth == 10  # SWITCHYARD_MAX_RUN_DEPTH: the tenth child's step could not go deeper
    assert by_id(run)["again"]["error"]["code"] == "max_depth_exceeded"
