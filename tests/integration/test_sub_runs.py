"""Sub-runs through real workers and the scheduler: a three-level chain whose leaf fails fails every
level with the child's id, and a retry of the top run starts a new chain that succeeds; cancelling a
parent cancels its live child; a child workflow that does not exist is refused at publish; a workflow
calling itself stops at the depth limit; a child's end reaches its parent at once, not at the sweep."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from orchestrator import broker, service
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import (
    Processes,
    by_id,
    claimed_redis_db,
    fresh_database,
    publish,
    start,
    unique,
    wait_for,
    wait_run,
)

# The tests on the session's processes (the last one starts its own).
engine = pytest.mark.usefixtures("engine_processes")

ONCE = {"max_attempts": 1}


def child_of(api, run: dict, step_id: str) -> dict:
    child_id = by_id(run)[step_id]["error"]["details"]["child_run_id"] if by_id(run)[step_id]["error"] else None
    return api.get(f"/runs/{child_id or run['children'][-1]}").get_json()


@engine
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


@engine
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


@engine
def test_a_child_workflow_that_does_not_exist_is_refused_at_publish(api):
    response = api.put(f"/workflows/{unique('wf')}", json={"name": "orphan", "steps": [
        {"id": "call", "type": "workflow", "workflow_id": "nowhere"}]})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["problems"] == [
        "steps.0.workflow_id: no workflow 'nowhere' in this tenant; publish it first"]


@engine
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


@pytest.fixture
def slow_sweep(tmp_path) -> Iterator[Settings]:
    """A database, a Redis db, a worker and a scheduler of the test's own, the scheduler sweeping only
    every 60 s: whatever reaches a run sooner was rung for."""
    with fresh_database("switchyard_sub_runs") as database_url, claimed_redis_db() as broker_url:
        settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=tmp_path / "data",
                            sweep_interval_s=60.0, lease_s=6.0)
        procs = Processes(settings, tmp_path)
        try:
            procs.start("worker", "worker", "--concurrency", "2", "--pool", "prefork", "--loglevel", "INFO")
            procs.start("scheduler", "scheduler")
            celery = broker.make_celery(settings)
            wait_for(lambda: celery.control.ping(timeout=0.5), 60, "the worker to answer ping")
            yield settings
        finally:
            procs.stop("scheduler", kill=True)  # its wait for a ring outlasts a warm shutdown's 20 s
            procs.stop_all()


def test_a_childs_end_reaches_its_parent_at_once_not_at_the_sweep(slow_sweep):
    """A 3-level chain: the leaf's end is decided by its worker (which rings), the middle run's end
    by the scheduler's pass over it, which must ring for the top run (it used to wait for the sweep)."""
    settings = slow_sweep
    sessions = make_sessionmaker(make_engine(settings))
    with transaction(sessions) as session:
        for workflow_id, step in [
            ("leaf", {"id": "work", "type": "tool", "tool": "echo", "args": {"text": "x"}}),
            ("middle", {"id": "call", "type": "workflow", "workflow_id": "leaf"}),
            ("top", {"id": "call", "type": "workflow", "workflow_id": "middle"}),
        ]:
            service.publish_workflow(session, settings, "acme", workflow_id, {"name": workflow_id, "steps": [step]})
    with transaction(sessions) as session:
        top_id = service.start_run(session, settings, "acme", "top", {}).run.id
    broker.Doorbell(broker.make_celery(settings), settings.wake_queue).ring("test")

    def finished():
        with sessions() as session:
            return session.execute(text("SELECT status FROM runs WHERE id = :id AND completed_at IS NOT NULL"),
                                   {"id": top_id}).scalar()

    # Well inside the 60 s sweep (the first sweep, at the scheduler's start, found nothing to do).
    assert wait_for(finished, 20, "the top run to finish") == "succeeded"
    with sessions() as session:
        hops = session.execute(text(
            "SELECT p.workflow_id, extract(epoch FROM s.completed_at - c.completed_at) FROM runs c "
            "JOIN runs p ON p.id = c.parent_run_id JOIN steps s ON s.run_id = p.id AND s.step_id = c.parent_step_id"
        )).all()
    assert sorted(workflow for workflow, _ in hops) == ["middle", "top"]
    slow = {workflow: float(seconds) for workflow, seconds in hops if seconds >= 1.0}
    assert not slow, f"a child's end reached its parent's step only after this long (s): {slow}"
