"""The engine end to end: PostgreSQL, Redis, two real worker processes and a real scheduler."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import create_engine, func, select

from orchestrator.db.models import Outbox
from tests.integration.conftest import by_id, events, publish, start, wait_for, wait_no_task_of, wait_run
from tests.integration.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS

pytestmark = pytest.mark.usefixtures("engine_processes")


def test_fail_fast_cancels_the_sibling_in_flight_and_skips_the_join(api):
    workflow = publish(api, {
        "name": "fail fast",
        "defaults": {"retry": {"max_attempts": 1}},
        "steps": [
            {"id": "a", "type": "tool", "tool": "echo", "args": {"v": 1}},
            {"id": "b", "type": "tool", "tool": "sleep", "needs": ["a"], "args": {"seconds": 30}},
            {"id": "c", "type": "tool", "tool": "fail", "needs": ["a"], "args": {"message": "c broke", "after_s": 1}},
            {"id": "d", "type": "tool", "tool": "echo", "needs": ["b", "c"]},
        ],
    })
    started = time.monotonic()
    run = wait_run(api, start(api, workflow), timeout=25)
    steps = by_id(run)

    assert run["status"] == "failed"
    assert run["error"]["code"] == "tool_failed" and run["error"]["step_id"] == "c"
    assert steps["a"]["status"] == "succeeded" and steps["a"]["output"] == {"v": 1}
    assert steps["c"]["status"] == "failed" and steps["c"]["error"]["message"] == "c broke"
    assert steps["b"]["status"] == "cancelled" and steps["b"]["error"]["code"] == "run_stopped"
    assert steps["d"]["status"] == "skipped" and steps["d"]["skipped_reason"] == "blocked"
    # b and c ran at the same time, in different worker processes.
    assert steps["b"]["worker"] and steps["c"]["worker"] and steps["b"]["worker"] != steps["c"]["worker"]
    assert time.monotonic() - started < 20, "the run waited for the 30 s sleep instead of failing fast"

    kinds = [(e["type"], e["step_id"], e["data"]) for e in events(api, run["id"])]
    assert ("step_failed", "c") in [(k, s) for k, s, _ in kinds]
    assert ("step_cancelled", "b", {"reason": "run_stopped"}) in kinds
    assert ("step_completed", "d", {"skipped": True, "reason": "blocked"}) in kinds


def test_sleeping_step_is_stopped_when_its_run_fails(api, settings):
    """The cancelled sleep really stops: its worker slot frees up long before the 30 s would end."""
    workflow = publish(api, {
        "name": "stop the sleeper",
        "defaults": {"retry": {"max_attempts": 1}},
        "steps": [
            {"id": "sleeper", "type": "tool", "tool": "sleep", "args": {"seconds": 30}},
            {"id": "breaker", "type": "tool", "tool": "fail", "args": {"message": "x"}},
        ],
    })
    run_id = start(api, workflow)
    wait_run(api, run_id, timeout=20)
    wait_no_task_of(settings, run_id, 10, "the cancelled sleep to leave the worker")


@pytest.mark.parametrize("max_attempts, expected", [(3, "succeeded"), (2, "failed")])
def test_retries_with_exponential_backoff(api, max_attempts, expected):
    workflow = publish(api, {
        "name": "flaky",
        "steps": [{
            "id": "flaky", "type": "tool", "tool": "fail",
            "args": {"message": "not yet", "until_attempt": 3},
            "retry": {"max_attempts": max_attempts, "initial_delay_s": 0.3, "jitter": False},
        }],
    })
    run = wait_run(api, start(api, workflow), timeout=30)
    step = by_id(run)["flaky"]
    assert run["status"] == expected
    assert step["attempt"] == max_attempts

    log = events(api, run["id"])
    retrying = [e for e in log if e["type"] == "step_retrying"]
    assert [e["data"]["delay_s"] for e in retrying] == [0.3, 0.6][: max_attempts - 1]
    started = [e for e in log if e["type"] == "step_started"]
    assert [e["attempt"] for e in started] == list(range(1, max_attempts + 1))
    # The backoff is visible in the timing of the attempts too (database clock).
    from datetime import datetime

    def at(e):
        return datetime.fromisoformat(e["created_at"].replace("Z", "+00:00"))

    for before, after, delay in zip(retrying, started[1:], [0.3, 0.6], strict=False):
        assert (at(after) - at(before)).total_seconds() >= delay
    if expected == "succeeded":
        assert step["output"] == {"attempt": 3, "succeeded_after_failures": 2}
    else:
        assert run["error"]["code"] == "tool_failed"


def test_timeout_fails_the_attempt_and_retries(api):
    workflow = publish(api, {
        "name": "slow",
        "steps": [{
            "id": "slow", "type": "tool", "tool": "sleep", "args": {"seconds": 20},
            "timeout_s": 0.5, "retry": {"max_attempts": 2, "initial_delay_s": 0.1, "jitter": False},
        }],
    })
    run = wait_run(api, start(api, workflow), timeout=20)
    step = by_id(run)["slow"]
    assert run["status"] == "failed"
    assert step["attempt"] == 2 and step["error"]["code"] == "timeout"
    assert [e["type"] for e in events(api, run["id"])].count("step_retrying") == 1


def test_two_hundred_runs_of_five_steps_all_succeed(api):
    workflow = publish(api, {
        "name": "five steps",
        "steps": [
            {"id": "s1", "type": "tool", "tool": "echo", "args": {"n": "{{ input.n }}"}},
            {"id": "s2", "type": "tool", "tool": "echo", "needs": ["s1"]},
            {"id": "s3", "type": "tool", "tool": "echo", "needs": ["s1"]},
            {"id": "s4", "type": "llm", "needs": ["s2", "s3"], "prompt": "n={{ steps.s1.output.n }}"},
            {"id": "s5", "type": "tool", "tool": "echo", "needs": ["s4"], "args": {"t": "{{ steps.s4.output.text }}"}},
        ],
    })
    run_ids = [start(api, workflow, {"n": i}) for i in range(200)]
    for i, run_id in enumerate(run_ids):
        run = wait_run(api, run_id, timeout=180)
        assert run["status"] == "succeeded", run
        assert run["output"] == {"s5": {"t": f"n={i}"}}
        assert [s["status"] for s in run["steps"]] == ["succeeded"] * 5
    listed = api.get(f"/runs?workflow_id={workflow}&limit=500").get_json()["runs"]
    assert len(listed) == 200 and {r["status"] for r in listed} == {"succeeded"}


def test_llm_and_agent_steps_against_an_openai_compatible_endpoint(api, fake_llm):
    workflow = publish(api, {
        "name": "openai",
        "steps": [
            {"id": "ask", "type": "llm", "model": "openai/test-model", "prompt": "Hello {{ input.who }}"},
            {"id": "agent", "type": "agent", "model": "openai/test-model", "needs": ["ask"],
             "prompt": "Use a tool", "tools": ["echo"], "max_turns": 3},
        ],
    })
    run = wait_run(api, start(api, workflow, {"who": "world"}), timeout=30)
    steps = by_id(run)
    assert run["status"] == "succeeded", run
    assert steps["ask"]["output"]["text"] == "fake answer to: Hello world"
    assert steps["agent"]["output"]["tool_calls"] == [
        {"turn": 1, "name": "echo", "args": {"from": "fake-llm"}, "result": {"from": "fake-llm"}}
    ]
    assert run["usage"]["llm_calls"] == 3
    assert run["usage"]["tokens_in"] == 3 * PROMPT_TOKENS and run["usage"]["tokens_out"] == 3 * COMPLETION_TOKENS
    asked = [r for r in fake_llm.requests if r["body"]["model"] == "test-model"]
    assert asked and all(r["auth"] == "Bearer test-key" for r in asked)


def test_a_run_that_trips_the_scheduler_is_set_aside_and_the_others_go_on(api, settings):
    """A run whose rows the scheduler cannot handle (here: a step row renamed behind its back) must not
    stall every other run: it is set aside with a `scheduler_error` event."""
    from sqlalchemy import update

    from orchestrator.db.models import Run, Step
    from orchestrator.db.session import make_engine
    from tests.integration.conftest import wait_for

    gate = publish(api, {"name": "gate", "steps": [
        {"id": "gate", "type": "approval"}, {"id": "after", "type": "tool", "tool": "echo", "needs": ["gate"]}]})
    broken = start(api, gate)
    wait_run(api, broken, statuses=("waiting",), timeout=20)
    engine = make_engine(settings)
    with engine.begin() as connection:
        connection.execute(update(Step).where(Step.run_id == broken, Step.step_id == "after").values(step_id="ghost"))
        connection.execute(update(Run).where(Run.id == broken).values(has_work=True))
    engine.dispose()

    fine = publish(api, {"name": "fine", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"n": 1}}]})
    assert wait_run(api, start(api, fine), timeout=20)["status"] == "succeeded"
    error = wait_for(lambda: [e for e in events(api, broken) if e["type"] == "scheduler_error"], 10,
                     "the broken run's scheduler_error event")
    assert error[0]["data"]["error"] == "KeyError: 'ghost'"
    assert api.get(f"/runs/{broken}").get_json()["status"] == "waiting"


def test_a_run_goes_on_while_the_scheduler_is_stopped_once_its_first_step_runs(api, settings, engine_processes):
    """Each success queues and publishes the steps it made ready (the worker's dispatch), a join when its
    last need succeeds, and the last step finishes the run: with the scheduler frozen (SIGSTOP) after it
    dispatched the first step, the run still succeeds, and the workers leave no outbox row behind."""
    workflow = publish(api, {
        "name": "no scheduler needed",
        "steps": [
            {"id": "first", "type": "tool", "tool": "sleep", "args": {"seconds": 1}},
            {"id": "left", "type": "tool", "tool": "echo", "args": {"side": "left"}, "needs": ["first"]},
            {"id": "right", "type": "tool", "tool": "echo", "args": {"side": "right"}, "needs": ["first"]},
            {"id": "join", "type": "tool", "tool": "echo", "needs": ["left", "right"],
             "args": {"sides": "{{ steps.left.output.side }}+{{ steps.right.output.side }}"}},
            {"id": "last", "type": "tool", "tool": "echo", "args": {"n": 1}, "needs": ["join"]},
        ],
    })
    run_id = start(api, workflow)
    wait_for(lambda: by_id(api.get(f"/runs/{run_id}").get_json())["first"]["status"] == "running", 20,
             "the first step to run")
    scheduler = engine_processes.procs["scheduler"]
    os.kill(scheduler.pid, signal.SIGSTOP)
    try:
        run = wait_run(api, run_id, timeout=30)
    finally:
        os.kill(scheduler.pid, signal.SIGCONT)
    assert run["status"] == "succeeded", run
    assert by_id(run)["join"]["output"] == {"sides": "left+right"}
    assert run["output"] == {"last": {"n": 1}}
    queued = [e["step_id"] for e in events(api, run_id) if e["type"] == "step_queued"]
    assert sorted(queued) == ["first", "join", "last", "left", "right"]
    engine = create_engine(settings.database_url)
    try:
        def outbox_rows() -> int:
            with engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(Outbox).where(Outbox.run_id == run_id)).scalar()
        wait_for(lambda: outbox_rows() == 0, 10, "the workers to delete the outbox rows they published")
    finally:
        engine.dispose()
