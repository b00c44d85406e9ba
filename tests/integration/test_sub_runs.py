"""Sub-runs through real workers and the scheduler: a three-level chain whose leaf fails fails every
level with the child's id, and a retry of the top run starts a new chain that succeeds; cancelling a
parent cancels its live child; a child workflow that does not exist is refused at publish; a workflow
calling itself stops at the depth limit; a child's end reaches its parent at once, not at the sweep.
A map over child runs (for_each over a `workflow` step): its outputs in order with at most max_parallel
children live; k-of-n failing early and cancelling the live children, one held by another transaction
at that moment included; pause, resume and cancel reaching the items' children; a retry of the run
running again only the items that did not succeed."""

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
    events,
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


def children_by_item(api, run_id: str) -> dict[str, list[dict]]:
    """The run's children by the step (an item) that started them, oldest first."""
    found: dict[str, list[dict]] = {}
    for child_id in api.get(f"/runs/{run_id}").get_json()["children"]:
        child = api.get(f"/runs/{child_id}").get_json()
        found.setdefault(child["parent_step_id"], []).append(child)
    return found


@engine
def test_a_map_over_child_runs_gives_their_outputs_in_order_with_at_most_max_parallel_live(api):
    child = publish(api, {"name": "summarise one", "steps": [
        {"id": "say", "type": "tool", "tool": "echo", "args": {"topic": "{{ input.topic }}", "n": "{{ input.n }}"}}]})
    parent = publish(api, {"name": "summarise all", "steps": [
        {"id": "each", "type": "workflow", "workflow_id": child, "for_each": "input.topics", "max_parallel": 2,
         "input": {"topic": "{{ item }}", "n": "{{ index }}"}},
        {"id": "count", "type": "tool", "tool": "echo", "needs": ["each"],
         "args": {"count": "{{ steps.each.output | length }}"}}]})
    topics = ["tides", "winds", "ice", "sand", "rain", "fog"]
    run = wait_run(api, start(api, parent, {"topics": topics}), timeout=120)
    assert run["status"] == "succeeded", (run["error"], run["steps"])
    step = by_id(run)["each"]
    assert step["items"] == {"total": 6, "succeeded": 6, "failed": 0, "running": 0, "pending": 0, "cancelled": 0}
    assert step["output"] == [{"say": {"topic": t, "n": i}} for i, t in enumerate(topics)]
    assert by_id(run)["count"]["output"] == {"count": 6}
    children = children_by_item(api, run["id"])
    assert sorted(children) == [f"each[{i}]" for i in range(6)] and all(len(c) == 1 for c in children.values())
    assert {c[0]["status"] for c in children.values()} == {"succeeded"}
    assert children["each[3]"][0]["input"] == {"topic": "sand", "n": 3}
    log = [e for e in events(api, run["id"]) if (e["step_id"] or "").startswith("each[")]
    live, most = 0, 0
    for event in log:  # in the log's order: items started and not yet completed
        live += {"step_started": 1, "step_completed": -1}.get(event["type"], 0)
        most = max(most, live)
    assert most == 2


@engine
def test_a_map_that_cannot_reach_k_fails_early_and_cancels_the_live_children(api):
    job = publish(api, {"name": "job", "steps": [
        {"id": "work", "type": "tool", "tool": "fail", "retry": ONCE,
         "args": {"until_attempt": "{{ input.until }}", "after_s": "{{ input.after_s }}"}}]})
    parent = publish(api, {"name": "jobs", "steps": [
        {"id": "each", "type": "workflow", "workflow_id": job, "for_each": "input.jobs", "min_succeeded": 5,
         "retry": ONCE, "input": {"until": "{{ item.until }}", "after_s": "{{ item.after_s }}"}}]})
    slow_ok, fast_fail = {"until": 1, "after_s": 60}, {"until": 99, "after_s": 0}
    run = wait_run(api, start(api, parent, {"jobs": [slow_ok] * 4 + [fast_fail] * 3}), timeout=45)
    assert run["status"] == "failed" and by_id(run)["each"]["error"]["code"] == "too_few_succeeded", run
    children = children_by_item(api, run["id"])
    for index in range(4):  # the slow children, live when the step failed: cancelled with their items
        (slow,) = children[f"each[{index}]"]
        assert wait_run(api, slow["id"], timeout=30)["status"] == "cancelled"
    assert {children[f"each[{i}]"][0]["status"] for i in range(4, 7)} == {"failed"}


@engine
def test_a_live_child_held_by_another_transaction_when_its_item_stopped_is_cancelled_once_free(api, settings):
    """k-of-n failing while the run goes on (on_failure: continue): a live child that another
    transaction holds at that moment is skipped by the pass (SKIP LOCKED), and reached by a later one."""
    child = publish(api, {"name": "waits", "steps": [
        {"id": "wait", "type": "wait_event", "correlation_key": "never-{{ run.id }}"}]})
    parent = publish(api, {"name": "map goes on", "steps": [
        {"id": "each", "type": "workflow", "workflow_id": child, "for_each": "input.n", "on_failure": "continue",
         "retry": ONCE},
        {"id": "hold", "type": "wait_event", "correlation_key": "hold-{{ run.id }}"}]})
    run_id = start(api, parent, {"n": [0, 1, 2]})

    def three_children_waiting():
        children = children_by_item(api, run_id)
        live = {item: c[0] for item, c in children.items() if c[0]["status"] == "waiting"}
        return live if len(live) == 3 else None

    live = wait_for(three_children_waiting, 60, "the three items' children to be waiting")
    held, failing, other = live["each[0]"]["id"], live["each[1]"]["id"], live["each[2]"]["id"]
    sessions = make_sessionmaker(make_engine(settings))
    with sessions() as holder:
        holder.execute(text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": held})
        # Its child cancelled, item 1 fails for good: the map cannot succeed and stops its other items.
        assert api.post(f"/runs/{failing}/cancel").status_code == 200
        assert wait_run(api, other, timeout=30)["status"] == "cancelled"
        run = api.get(f"/runs/{run_id}").get_json()
        assert by_id(run)["each"]["status"] == "failed" and run["status"] in ("running", "waiting"), run
        assert api.get(f"/runs/{held}").get_json()["status"] == "waiting"  # skipped: held here
        holder.rollback()
    assert wait_run(api, held, timeout=30)["status"] == "cancelled"
    assert api.get(f"/runs/{run_id}").get_json()["status"] in ("running", "waiting")  # it went on meanwhile
    assert api.post(f"/runs/{run_id}/cancel").status_code == 200


@engine
def test_pause_resume_and_cancel_reach_the_children_of_a_maps_items(api):
    nap = publish(api, {"name": "nap", "steps": [{"id": "nap", "type": "tool", "tool": "sleep",
                                                 "args": {"seconds": 60}}]})
    parent = publish(api, {"name": "naps", "steps": [
        {"id": "each", "type": "workflow", "workflow_id": nap, "for_each": "input.n", "max_parallel": 2}]})
    run_id = start(api, parent, {"n": [1, 2, 3]})

    def two_children_running():
        children = children_by_item(api, run_id)
        live = [c[0] for c in children.values() if by_id(c[0])["nap"]["status"] == "running"]
        return live if len(live) == 2 else None

    live = wait_for(two_children_running, 60, "two items' children to be running")
    assert api.post(f"/runs/{run_id}/pause").status_code == 200
    assert {wait_run(api, c["id"], ("paused",), timeout=30)["status"] for c in live} == {"paused"}
    assert api.post(f"/runs/{run_id}/resume").status_code == 200
    assert {wait_run(api, c["id"], ("running",), timeout=30)["status"] for c in live} == {"running"}
    assert api.post(f"/runs/{run_id}/cancel").status_code == 200
    assert wait_run(api, run_id)["status"] == "cancelled"
    assert {wait_run(api, c["id"], timeout=30)["status"] for c in live} == {"cancelled"}
    assert sorted(children_by_item(api, run_id)) == ["each[0]", "each[1]"]  # the third item never started


@engine
def test_a_retry_runs_again_only_the_items_of_a_map_that_did_not_succeed(api):
    flaky = publish(api, {"name": "flaky", "steps": [
        {"id": "work", "type": "tool", "tool": "fail", "retry": ONCE, "args": {"until_attempt": "{{ input.until }}"}}]})
    # Item 1 fails while the run is at its first attempt (until 2) and succeeds once it is retried (until 1).
    parent = publish(api, {"name": "flaky map", "steps": [
        {"id": "each", "type": "workflow", "workflow_id": flaky, "for_each": "input.jobs", "max_parallel": 1,
         "retry": ONCE, "input": {"until": "{{ 1 if item == 'ok' else 3 - run.attempt }}"}}]})
    run = wait_run(api, start(api, parent, {"jobs": ["ok", "flaky", "ok"]}), timeout=60)
    assert run["status"] == "failed", run
    before = children_by_item(api, run["id"])
    assert sorted(before) == ["each[0]", "each[1]"], (run["error"], run["steps"])  # item 2 never started: the step failed at item 1

    assert api.post(f"/runs/{run['id']}/retry").status_code == 200
    retried = wait_run(api, run["id"], timeout=60)
    assert retried["status"] == "succeeded", retried
    after = children_by_item(api, run["id"])
    assert [len(after[f"each[{i}]"]) for i in range(3)] == [1, 2, 1]  # item 0 kept: its one child only
    assert after["each[0]"][0]["id"] == before["each[0]"][0]["id"]
    assert by_id(retried)["each"]["output"] == [c[-1]["output"] for c in (after[f"each[{i}]"] for i in range(3))]
    restarted = [e for e in events(api, run["id"]) if e["step_id"] == "each" and e["type"] == "step_started"]
    assert restarted[-1]["data"]["kept"] == 1
