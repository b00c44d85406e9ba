"""Eager steps: a worker whose step's success queued the next step of its run on the same queue claims
and runs that step itself, with no broker message, while its Celery task's budget lasts
(SWITCHYARD_WORKER_EAGER_S); then the next step goes through the broker. Each test has a worker of its
own on a queue of its own, logging at INFO, so the messages it received are counted from Celery's own
"Task ... received" lines."""

from __future__ import annotations

import re

import pytest

from orchestrator import messages
from tests.integration.conftest import Processes, by_id, events, publish, start, unique, wait_for
from tests.integration.invariants import assert_no_violations
from tests.integration.test_flower_truth import Heard

pytestmark = pytest.mark.usefixtures("engine_processes")


def _chain(queue: str, tools: list[tuple[str, dict]]) -> list[dict]:
    return [{"id": f"s{i}", "type": "tool", "tool": tool, "args": args, "queue": queue,
             **({"needs": [f"s{i - 1}"]} if i else {})} for i, (tool, args) in enumerate(tools)]


def _start_chain(api, name: str, queue: str, tools: list[tuple[str, dict]]) -> str:
    return start(api, publish(api, {"name": name, "steps": _chain(queue, tools)}))


def _wait_step(api, run_id: str, step_id: str, status: str, timeout: float = 30) -> None:
    wait_for(lambda: by_id(api.get(f"/runs/{run_id}").get_json())[step_id]["status"] == status, timeout,
             f"{step_id} to be {status}")


def _received(procs: Processes, name: str, run_id: str) -> list[str]:
    """The step ids of the run whose messages the worker ``name`` received (Celery's log)."""
    log = (procs.folder / f"{name}.log").read_text(errors="replace")
    return re.findall(rf"\[{re.escape(run_id)}\.(\w+)\.\d+\] received", log)


def _succeeded(api, run_id: str, timeout: float = 60) -> dict:
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["status"] in ("succeeded", "failed", "cancelled"),
             timeout, f"run {run_id} to end")
    run = api.get(f"/runs/{run_id}").get_json()
    assert run["status"] == "succeeded", run
    return run


def _own_worker(settings, artifacts, queue: str, **env: str) -> tuple[Processes, str]:
    procs = Processes(settings, artifacts)
    name = f"eager-{queue}"
    procs.start(name, "worker", "--concurrency", "1", "--pool", "prefork", "-Q", queue, "--loglevel", "INFO",
                env=env)
    return procs, name


def test_a_chain_runs_on_one_message_while_the_budget_lasts(api, settings, artifacts):
    """...and Flower (Celery's task events) shows each eager step as the task it would have been."""
    queue = unique("eager")
    heard = Heard(settings)
    heard.thread.start()
    assert heard.ready.wait(10), "the event receiver did not connect"
    procs, name = _own_worker(settings, artifacts, queue)
    try:
        run_id = _start_chain(api, "eager chain", queue, [("echo", {"n": i}) for i in range(5)])
        _succeeded(api, run_id)
        tasks = [messages.task_id(run_id, f"s{i}", 1) for i in range(5)]
        wait_for(lambda: all(heard.last(task) for task in tasks), 10, "every step's task-succeeded event")
    finally:
        procs.stop_all()
        heard.stopping.set()
    assert _received(procs, name, run_id) == ["s0"], "steps after the first went through the broker"
    # Each next step was claimed with its predecessor's outcome, none written again step by step.
    assert "not as decided" not in (procs.folder / f"{name}.log").read_text(errors="replace")
    for task in tasks[1:]:  # the eager steps' events, sent by the worker child (workers/tasks.py)
        assert heard.types(task) == ["task-received", "task-started", "task-succeeded"], (task, heard.types(task))
        assert "succeeded" in heard.last(task)["result"], heard.last(task)
    started = [e for e in events(api, run_id) if e["type"] == "step_started"]
    assert [e["step_id"] for e in started] == [f"s{i}" for i in range(5)]
    assert len({e["data"]["worker"] for e in started}) == 1, "every step ran in the process that took s0"
    assert_no_violations(settings, [run_id], within_s=0)  # no outbox row left behind, nothing in flight


def test_past_the_budget_the_next_step_goes_through_the_broker(api, settings, artifacts):
    queue = unique("eager")
    procs, name = _own_worker(settings, artifacts, queue, SWITCHYARD_WORKER_EAGER_S="0.5")
    try:
        run_id = _start_chain(api, "eager budget", queue, [("sleep", {"seconds": 0.3})] * 6)
        _succeeded(api, run_id)
    finally:
        procs.stop_all()
    received = _received(procs, name, run_id)
    # 1.8 s of steps on a 0.5 s budget: each message runs one or two steps, never all six.
    assert received[0] == "s0" and 3 <= len(received) <= 5, received
    assert_no_violations(settings, [run_id], within_s=0)


def test_a_step_that_would_run_eagerly_in_a_paused_run_waits_for_resume(api, settings, artifacts):
    queue = unique("eager")
    procs, name = _own_worker(settings, artifacts, queue)
    try:
        run_id = _start_chain(api, "eager pause", queue, [("sleep", {"seconds": 1.5}), ("echo", {}), ("echo", {})])
        _wait_step(api, run_id, "s0", "running")
        assert api.post(f"/runs/{run_id}/pause", json={}).status_code == 200
        # s0 finishes while the run is paused: its eager claim of s1 finds the run paused and puts s1 back.
        _wait_step(api, run_id, "s0", "succeeded")
        _wait_step(api, run_id, "s1", "pending", timeout=10)
        assert api.get(f"/runs/{run_id}").get_json()["status"] == "paused"
        assert api.post(f"/runs/{run_id}/resume", json={}).status_code == 200
        _succeeded(api, run_id)
    finally:
        procs.stop_all()
    assert _received(procs, name, run_id)[0] == "s0"
    assert_no_violations(settings, [run_id], within_s=0)


def test_cancelling_a_run_stops_its_eager_step(api, settings, artifacts):
    queue = unique("eager")
    procs, name = _own_worker(settings, artifacts, queue)
    try:
        run_id = _start_chain(api, "eager cancel", queue, [("echo", {}), ("sleep", {"seconds": 60})])
        _wait_step(api, run_id, "s1", "running")
        assert _received(procs, name, run_id) == ["s0"], "s1 was not run eagerly"
        assert api.post(f"/runs/{run_id}/cancel", json={}).status_code == 200
        # No message of s1 exists to revoke: the heartbeat's flag stops it.
        _wait_step(api, run_id, "s1", "cancelled", timeout=15)
    finally:
        procs.stop_all()
    assert api.get(f"/runs/{run_id}").get_json()["status"] == "cancelled"
    assert_no_violations(settings, [run_id], within_s=0)
