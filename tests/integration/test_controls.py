"""Run controls against PostgreSQL, Redis, real workers and a real scheduler: one test per row of the
contract's transition table, pause and resume across restarts, immediate and graceful cancel, and retry
and rerun of a failed run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import by_id, events, publish, start, wait_for, wait_no_task_of, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")

TERMINAL = ("succeeded", "failed", "cancelled")

# The contract's table (docs/api.md, "Controls"), written out again here on purpose: the code's table is
# checked against the contract, not against itself.
ALLOWED_FROM = {
    "pause": {"running", "waiting"},
    "resume": {"paused"},
    "cancel": {"queued", "running", "waiting", "paused"},
    "retry": {"failed", "cancelled"},
    "rerun": {"failed", "cancelled", "succeeded"},
}


def get_run(api, run_id: str) -> dict:
    return api.get(f"/runs/{run_id}").get_json()


def wait_steps(api, run_id: str, want: dict[str, str | tuple[str, ...]], timeout: float = 20) -> dict:
    """Poll until every named step is in (one of) the wanted status(es); return the run."""

    def matched():
        run = get_run(api, run_id)
        steps = by_id(run)
        ok = all(steps[s]["status"] in ((w,) if isinstance(w, str) else w) for s, w in want.items())
        return run if ok else None

    return wait_for(matched, timeout, f"steps of {run_id} to reach {want}", interval=0.05)


def wait_status(api, run_id: str, status: str, timeout: float = 20) -> dict:
    return wait_run(api, run_id, statuses=(status,), timeout=timeout)


# -- runs in every status ---------------------------------------------------------------------------

def running_run(api) -> str:
    workflow = publish(api, {"name": "long", "steps": [
        {"id": "slow", "type": "tool", "tool": "sleep", "args": {"seconds": 60}},
        {"id": "after", "type": "tool", "tool": "echo", "needs": ["slow"]},
    ]})
    run_id = start(api, workflow)
    wait_steps(api, run_id, {"slow": "running"})
    return run_id


def waiting_run(api) -> str:
    workflow = publish(api, {"name": "gate", "steps": [{"id": "gate", "type": "approval"}]})
    run_id = start(api, workflow)
    wait_status(api, run_id, "waiting")
    return run_id


def paused_run(api) -> str:
    run_id = running_run(api)
    assert api.post(f"/runs/{run_id}/pause").status_code == 200
    return run_id


def succeeded_run(api) -> str:
    workflow = publish(api, {"name": "ok", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"x": 1}}]})
    run_id = start(api, workflow, {"n": 1})
    wait_status(api, run_id, "succeeded")
    return run_id


def failed_run(api) -> str:
    workflow = publish(api, {"name": "broken", "defaults": {"retry": {"max_attempts": 1}}, "steps": [
        {"id": "a", "type": "tool", "tool": "fail", "args": {"message": "no"}},
    ]})
    run_id = start(api, workflow)
    wait_status(api, run_id, "failed")
    return run_id


def cancelled_run(api) -> str:
    run_id = waiting_run(api)
    assert api.post(f"/runs/{run_id}/cancel").status_code == 200
    return run_id


MAKERS: dict[str, Callable] = {
    "running": running_run, "waiting": waiting_run, "paused": paused_run,
    "succeeded": succeeded_run, "failed": failed_run, "cancelled": cancelled_run,
}


@pytest.fixture
def cleanup(api):
    """Cancel the runs a test leaves alive, so their 60 s sleeps give the worker slots back."""
    run_ids: list[str] = []
    yield run_ids
    for run_id in run_ids:
        api.post(f"/runs/{run_id}/cancel")


@pytest.mark.parametrize("action", list(ALLOWED_FROM))
def test_each_action_from_every_status(api, action, cleanup):
    """One row of the contract's table: allowed from its statuses, 409 with details from the others."""
    for status, make in MAKERS.items():
        run_id = make(api)
        cleanup.append(run_id)
        before = get_run(api, run_id)
        response = api.post(f"/runs/{run_id}/{action}?triggered_by=ops-bot")
        body = response.get_json()
        if status in ALLOWED_FROM[action]:
            assert response.status_code == (201 if action == "rerun" else 200), (status, body)
            _check_result(api, action, status, before, body)
        else:
            assert response.status_code == 409, (status, body)
            assert body["error"]["code"] == "invalid_transition"
            assert body["error"]["details"]["status"] == status
            assert set(body["error"]["details"]["allowed_from"]) == ALLOWED_FROM[action]
            after = get_run(api, run_id)
            assert after["status"] == status and after["attempt"] == before["attempt"], (action, status)


def _check_result(api, action: str, status: str, before: dict, body: dict) -> None:
    run_id = before["id"]
    if action == "rerun":
        assert body["id"] != run_id and body["retry_of"] == run_id
        assert body["input"] == before["input"] and body["workflow"] == before["workflow"]
        assert get_run(api, run_id)["status"] == status, "rerun changed the original run"
        return
    expected = {"pause": ("paused",), "resume": ("running", "waiting"), "cancel": ("cancelled",),
                "retry": ("queued", "running", "waiting", "succeeded", "failed")}[action]
    assert body["status"] in expected, (action, status, body["status"])
    if action == "retry":
        assert body["attempt"] == before["attempt"] + 1
    audit_type = {"pause": "run_paused", "resume": "run_resumed", "cancel": "run_cancelled",
                  "retry": "run_retried"}[action]
    audit = [e for e in events(api, run_id) if e["type"] == audit_type]
    assert audit, f"no audit event for {action}"
    assert audit[-1]["data"]["triggered_by"] == "ops-bot" and audit[-1]["data"]["token_id"].startswith("tok_")


def test_actions_from_queued(api, engine_processes):
    """A run nobody has picked up yet: only cancel applies. The scheduler is stopped so it stays queued
    (its first step is an approval: a start queues only worker steps itself, the scheduler parks the rest)."""
    workflow = publish(api, {"name": "queued", "steps": [{"id": "a", "type": "approval"}]})
    engine_processes.stop("scheduler")
    try:
        for action in ALLOWED_FROM:
            run_id = start(api, workflow)
            assert get_run(api, run_id)["status"] == "queued"
            response = api.post(f"/runs/{run_id}/{action}")
            if "queued" in ALLOWED_FROM[action]:
                assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
            else:
                assert response.status_code == 409, (action, response.get_json())
                assert response.get_json()["error"]["details"]["status"] == "queued"
                assert get_run(api, run_id)["status"] == "queued"
    finally:
        engine_processes.start("scheduler", "scheduler")


def test_unknown_action_and_other_tenants_run(api, tokens, cleanup):
    run_id = waiting_run(api)
    cleanup.append(run_id)
    assert api.post(f"/runs/{run_id}/explode").status_code == 404
    other = api.as_(tokens["other_tenant"]).post(f"/runs/{run_id}/cancel")
    assert other.status_code == 404 and other.get_json()["error"]["code"] == "not_found"
    assert api.as_(tokens["viewer"]).post(f"/runs/{run_id}/cancel").status_code == 403
    assert api.post(f"/runs/{run_id}/cancel", json={"mode": "sideways"}).status_code == 400
    assert get_run(api, run_id)["status"] == "waiting"


# -- pause and resume -------------------------------------------------------------------------------

def parallel_workflow(api) -> str:
    return publish(api, {"name": "parallel", "steps": [
        {"id": "left", "type": "tool", "tool": "sleep", "args": {"seconds": 1.5}},
        {"id": "right", "type": "tool", "tool": "sleep", "args": {"seconds": 1.5}},
        {"id": "join", "type": "tool", "tool": "echo", "needs": ["left", "right"], "args": {"done": True}},
    ]})


def scheduler_is_done_with(settings, run_id: str) -> bool:
    """True once a scheduler pass has handled everything reported for the run (its has_work flag is
    raised by every outcome and lowered by the scheduler's pass)."""
    from sqlalchemy import select

    from orchestrator.db.models import Run
    from orchestrator.db.session import make_engine

    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            return not connection.execute(select(Run.has_work).where(Run.id == run_id)).scalar_one()
    finally:
        engine.dispose()


def _pause_with_two_in_flight(api, settings) -> str:
    """A run paused while two parallel steps run: both finish and are recorded, the join is not sent."""
    run_id = start(api, parallel_workflow(api))
    wait_steps(api, run_id, {"left": "running", "right": "running"})
    assert api.post(f"/runs/{run_id}/pause").get_json()["status"] == "paused"
    wait_steps(api, run_id, {"left": "succeeded", "right": "succeeded"})
    wait_for(lambda: scheduler_is_done_with(settings, run_id), 10, "the scheduler to handle both outcomes")
    _assert_paused_before_the_join(api, run_id)
    return run_id


def _assert_paused_before_the_join(api, run_id: str) -> None:
    run = get_run(api, run_id)
    assert run["status"] == "paused" and by_id(run)["join"]["status"] == "pending"
    assert not [e for e in events(api, run_id) if e["step_id"] == "join"]


def test_pause_records_steps_in_flight_and_dispatches_nothing_until_resumed(api, settings):
    run_id = _pause_with_two_in_flight(api, settings)
    assert api.post(f"/runs/{run_id}/resume").status_code == 200
    run = wait_run(api, run_id, timeout=20)
    assert run["status"] == "succeeded" and by_id(run)["join"]["output"] == {"done": True}
    kinds = [e["type"] for e in events(api, run_id)]
    assert kinds.index("run_paused") < kinds.index("run_resumed") < kinds.index("run_succeeded")


def test_resume_after_scheduler_and_workers_were_killed_while_paused(api, settings, engine_processes):
    from orchestrator.broker import make_celery

    run_id = _pause_with_two_in_flight(api, settings)
    names = ("scheduler", "worker1", "worker2")
    for name in names:
        engine_processes.stop(name, kill=True)
    engine_processes.start("scheduler", "scheduler")
    for name in names[1:]:
        engine_processes.start(name, "worker", "--concurrency", "3", "--pool", "prefork", "--loglevel", "INFO")
    celery = make_celery(settings)
    wait_for(lambda: len(celery.control.ping(timeout=0.5)) >= 2, 60, "the restarted workers to answer ping")
    _assert_paused_before_the_join(api, run_id)

    assert api.post(f"/runs/{run_id}/resume").status_code == 200
    run = wait_run(api, run_id, timeout=30)
    assert run["status"] == "succeeded" and by_id(run)["join"]["status"] == "succeeded"


# -- cancel -----------------------------------------------------------------------------------------

def test_immediate_cancel_stops_an_agent_mid_loop_and_a_long_sleep(api, settings):

    # The agent calls the sleep tool again and again: it is mid-loop whenever it is cancelled.
    loop = [{"tool_calls": [{"name": "sleep", "args": {"seconds": 1}}]}] * 50
    workflow = publish(api, {"name": "stop everything", "steps": [
        {"id": "agent", "type": "agent", "model": "scripted", "tools": ["sleep"], "max_turns": 60, "script": loop},
        {"id": "sleeper", "type": "tool", "tool": "sleep", "args": {"seconds": 60}},
        {"id": "later", "type": "tool", "tool": "echo", "needs": ["agent", "sleeper"]},
    ]})
    run_id = start(api, workflow)
    wait_steps(api, run_id, {"agent": "running", "sleeper": "running"})

    response = api.post(f"/runs/{run_id}/cancel", json={"mode": "immediate", "reason": "wrong ticket"})
    assert response.status_code == 200
    run = response.get_json()
    assert run["status"] == "cancelled" and run["error"]["message"] == "wrong ticket"
    steps = by_id(run)
    for step_id in ("agent", "sleeper"):
        assert steps[step_id]["status"] == "cancelled" and steps[step_id]["error"]["code"] == "run_stopped"
    assert steps["later"]["status"] == "skipped" and steps["later"]["started_at"] is None

    wait_no_task_of(settings, run_id, 5, "the agent and the sleep to leave their workers")
    run = get_run(api, run_id)
    assert run["status"] == "cancelled"
    assert {s["id"]: s["status"] for s in run["steps"]} == {
        "agent": "cancelled", "sleeper": "cancelled", "later": "skipped"}
    cancelled = [e for e in events(api, run_id) if e["type"] == "step_cancelled"]
    assert {e["step_id"] for e in cancelled} == {"agent", "sleeper"}
    assert all(e["data"] == {"reason": "run_stopped"} for e in cancelled)


def test_graceful_cancel_lets_steps_in_flight_finish(api):
    run_id = start(api, parallel_workflow(api))
    wait_steps(api, run_id, {"left": "running", "right": "running"})
    response = api.post(f"/runs/{run_id}/cancel", json={"mode": "graceful"})
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    run = wait_steps(api, run_id, {"left": "succeeded", "right": "succeeded"})
    assert run["status"] == "cancelled"
    assert by_id(run)["join"]["status"] == "skipped" and by_id(run)["join"]["started_at"] is None


# -- retry and rerun --------------------------------------------------------------------------------

def test_retry_resumes_from_the_failed_step_and_keeps_earlier_outputs(api):
    workflow = publish(api, {"name": "fix and retry", "steps": [
        {"id": "fetch", "type": "tool", "tool": "echo", "args": {"ticket": "{{ input.ticket }}"}},
        # Fails attempts 1 and 2 (the whole first budget); the retried run's attempt 3 succeeds.
        {"id": "flaky", "type": "tool", "tool": "fail", "needs": ["fetch"],
         "retry": {"max_attempts": 2, "initial_delay_s": 0.1, "jitter": False},
         "args": {"message": "upstream down", "until_attempt": 3}},
        {"id": "done", "type": "tool", "tool": "echo", "needs": ["flaky"], "args": {"ok": True}},
    ]})
    run_id = start(api, workflow, {"ticket": "T-1"})
    failed = wait_run(api, run_id)
    assert failed["status"] == "failed" and failed["error"]["step_id"] == "flaky"
    assert by_id(failed)["done"]["skipped_reason"] == "blocked"
    fetch_before = by_id(failed)["fetch"]

    assert api.post(f"/runs/{run_id}/retry").status_code == 200
    run = wait_run(api, run_id)
    steps = by_id(run)
    assert run["status"] == "succeeded" and run["attempt"] == 2 and run["error"] is None
    assert steps["fetch"] == fetch_before, "the succeeded step ran again"
    assert steps["flaky"]["attempt"] == 3 and steps["flaky"]["status"] == "succeeded"
    assert steps["done"]["output"] == {"ok": True}
    started = [e["step_id"] for e in events(api, run_id) if e["type"] == "step_started"]
    assert started.count("fetch") == 1 and started.count("flaky") == 3

    rerun = api.post(f"/runs/{run_id}/rerun")
    assert rerun.status_code == 201
    new = wait_run(api, rerun.get_json()["id"])
    assert new["retry_of"] == run_id and new["input"] == {"ticket": "T-1"}
    # A new run starts its attempts at 1 again, so the same version fails the same way.
    assert new["workflow"] == run["workflow"] and new["status"] == "failed" and new["attempt"] == 1
    assert by_id(new)["flaky"]["attempt"] == 2
