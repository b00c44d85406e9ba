"""Delivery guarantees on the session's PostgreSQL, Redis, workers and scheduler: a message delivered
twice, a scheduler that dies between its commit and its publish, and a broker that loses its messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy import func, select

from orchestrator import service
from orchestrator.broker import make_celery, publish_steps, stranded_attempts
from orchestrator.db.models import Outbox, Step
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.messages import StepMessage
from tests.integration.conftest import ROOT, _env, by_id, events, publish, start, wait_for, wait_run
from tests.integration.invariants import assert_no_violations

pytestmark = pytest.mark.usefixtures("engine_processes")

ONE_SLOW_STEP = {"name": "one slow step", "steps": [
    {"id": "slow", "type": "tool", "tool": "sleep", "args": {"seconds": 1}},
    {"id": "after", "type": "tool", "tool": "echo", "needs": ["slow"], "args": {"done": True}},
]}


def count_events(api, run_id: str, kind: str, step_id: str) -> int:
    return sum(1 for e in events(api, run_id) if e["type"] == kind and e["step_id"] == step_id)


def scalar(settings, query):
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            return connection.execute(query).scalar_one_or_none()
    finally:
        engine.dispose()


def attempts_in_queue(client, queue: str) -> list[tuple[str, str, int]]:
    """The step attempts whose messages wait in a broker queue (Celery's task id is run.step.attempt)."""
    ids = (json.loads(raw)["headers"]["id"].split(".") for raw in client.lrange(queue, 0, -1))
    return [(run_id, step_id, int(attempt)) for run_id, step_id, attempt in ids]


def worker_logs(engine_processes) -> str:
    return "\n".join(engine_processes.log_tail(name, 2000) for name in ("worker1", "worker2"))


def test_a_message_delivered_twice_records_one_outcome(api, settings, engine_processes):
    run_id = start(api, publish(api, ONE_SLOW_STEP))
    wait_for(lambda: by_id(api.get(f"/runs/{run_id}").get_json())["slow"]["status"] == "running", 20,
             "the slow step to run")
    message = StepMessage(run_id, "slow", 1, settings.default_queue, 60)
    celery = make_celery(settings)
    # Once while the attempt runs on another worker, once after it finished: both are duplicates.
    publish_steps(celery, [message], settings.cancel_grace_s)
    run = wait_run(api, run_id)
    publish_steps(celery, [message], settings.cancel_grace_s)
    dropped = f"dropped stale delivery of {run_id}.slow attempt 1"
    wait_for(lambda: worker_logs(engine_processes).count(dropped) == 2, 20, "both duplicates to be dropped")

    assert run["status"] == "succeeded" and by_id(run)["slow"]["attempt"] == 1
    assert count_events(api, run_id, "step_started", "slow") == 1
    assert count_events(api, run_id, "step_completed", "slow") == 1
    assert api.get(f"/runs/{run_id}").get_json()["usage"]["steps"] == 2


CRASH_AFTER_COMMIT = """
import os
from orchestrator.broker import make_celery
from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.scheduler import Scheduler
from orchestrator.settings import load

settings = load()
scheduler = Scheduler(settings, make_sessionmaker(make_engine(settings)), make_celery(settings))
scheduler._publish = lambda messages: os._exit(17)  # dies after the commit, before the publish
scheduler.advance_batch()
"""


def start_for_the_scheduler(settings, workflow_id: str) -> str:
    """A run of tenant acme whose start left its first pass to the scheduler, as a webhook's or a
    rerun's does (POST /runs takes it itself when it only queues worker steps)."""
    engine = make_engine(settings)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            return service.start_run(session, settings, "acme", workflow_id, {}).run.id
    finally:
        engine.dispose()


def test_a_crash_between_commit_and_publish_leaves_no_step_queued(api, settings, engine_processes):
    workflow = publish(api, ONE_SLOW_STEP)
    engine_processes.stop("scheduler")
    try:
        run_id = start_for_the_scheduler(settings, workflow)
        crashed = subprocess.run([sys.executable, "-c", CRASH_AFTER_COMMIT], env=_env(settings), cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
        assert crashed.returncode == 17, crashed.stderr
        assert by_id(api.get(f"/runs/{run_id}").get_json())["slow"]["status"] == "queued"
        assert scalar(settings, select(func.count()).select_from(Outbox).where(Outbox.run_id == run_id)) == 1
    finally:
        engine_processes.start("scheduler", "scheduler")

    run = wait_run(api, run_id, timeout=30)
    assert run["status"] == "succeeded" and by_id(run)["slow"]["attempt"] == 1
    assert count_events(api, run_id, "step_started", "slow") == 1
    # The scheduler deletes the row it published in its next transaction; the run may have finished
    # before that (its last step's report finishes it).
    wait_for(lambda: scalar(settings, select(func.count()).select_from(Outbox).where(Outbox.run_id == run_id)) == 0,
             10, "the published outbox row to be deleted")
    assert_no_violations(settings, [run_id])


@contextmanager
def queued_while_no_worker_runs(api, engine_processes) -> Iterator[str]:
    """A run of ONE_SLOW_STEP whose first step is queued while the workers are stopped; they start
    again when the block ends."""
    workflow = publish(api, ONE_SLOW_STEP)
    for name in ("worker1", "worker2"):
        engine_processes.stop(name)
    try:
        run_id = start(api, workflow)
        wait_for(lambda: by_id(api.get(f"/runs/{run_id}").get_json())["slow"]["status"] == "queued", 20,
                 "the step to be queued")
        yield run_id
    finally:
        for name in ("worker1", "worker2"):
            engine_processes.start(name, "worker", "--concurrency", "3", "--pool", "prefork", "--loglevel", "INFO")


def test_steps_whose_messages_the_broker_lost_are_published_again(api, settings, broker_url, engine_processes):
    """FLUSHDB stands for a Redis restart without persistence: the queued step's message is gone."""
    with queued_while_no_worker_runs(api, engine_processes) as run_id:
        client = redis.Redis.from_url(broker_url)
        # Other tests' runs may have steps queued here too (a retry that came due): they are lost and
        # published again alike.
        assert (run_id, "slow", 1) in attempts_in_queue(client, settings.default_queue)
        client.flushdb()
        client.set("switchyard:test-session", "flushed by a test", ex=3600)  # keep this db claimed
    run = wait_run(api, run_id, timeout=30)
    assert run["status"] == "succeeded" and by_id(run)["slow"]["attempt"] == 1
    assert re.search(r"re-publishing \d+ queued steps", engine_processes.log_tail("scheduler", 200))
    assert scalar(settings, select(Step.attempt).where(Step.run_id == run_id, Step.step_id == "after")) == 1
    assert_no_violations(settings, [run_id])


TAKE_AND_DIE = """
import os, signal, sys
from orchestrator.broker import make_celery
from orchestrator.settings import load

settings = load()
with make_celery(settings).connection_for_read() as connection:
    queue = connection.SimpleQueue(settings.default_queue)
    # Taken, not acknowledged: kombu keeps them as unacked. Until the run's own message comes: another
    # test's run may have a step queued ahead of it, and dies held with it.
    while not queue.get(timeout=20).headers["id"].startswith(sys.argv[1] + "."):
        pass
    sys.stdout.write("taken\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # dies as a worker killed with its prefetched messages
"""


def test_a_step_whose_message_a_killed_worker_took_is_published_again(api, settings, broker_url, engine_processes):
    """A worker SIGKILLed with a message it took and had not claimed leaves the message unacknowledged
    in Redis, where kombu keeps it for an hour; the sweep publishes the step again after
    stranded_after_s instead."""
    with queued_while_no_worker_runs(api, engine_processes) as run_id:
        died = subprocess.run([sys.executable, "-c", TAKE_AND_DIE, run_id], env=_env(settings), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert died.returncode == -9 and died.stdout == "taken\n", died.stderr
        client = redis.Redis.from_url(broker_url)
        assert (run_id, "slow", 1) not in attempts_in_queue(client, settings.default_queue)
        assert (run_id, "slow", 1) in stranded_attempts(client, 0).values()
        assert by_id(api.get(f"/runs/{run_id}").get_json())["slow"]["status"] == "queued"
    run = wait_run(api, run_id, timeout=30)
    assert run["status"] == "succeeded" and by_id(run)["slow"]["attempt"] == 1
    assert count_events(api, run_id, "step_started", "slow") == 1
    assert re.search(r"re-publishing \d+ step messages a worker took and never ran",
                     engine_processes.log_tail("scheduler", 200))
    # Forgotten: kombu will not put it back an hour later (the workers' own acks may still be landing).
    wait_for(lambda: client.hlen("unacked") == 0, 10, "no message left unacknowledged")
    assert_no_violations(settings, [run_id])


def diagnosis_of(api, run_id: str) -> dict:
    response = api.get(f"/runs/{run_id}/diagnosis")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.mark.parametrize("step, kind, action", [
    ({"id": "s", "type": "approval"}, "approval", "/approve"),
    ({"id": "s", "type": "question", "question": "Which?"}, "question", "/answer"),
    ({"id": "s", "type": "wait_event", "correlation_key": "diag-{{ run.id }}"}, "event", "POST /events"),
    ({"id": "s", "type": "timer", "duration_s": 600}, "timer", "fires it"),
    ({"id": "s", "type": "tool", "tool": "echo", "queue": "nobody-consumes-this"}, "no_consumers",
     "switchyard worker --queues nobody-consumes-this"),
])
def test_diagnosis_names_what_a_run_waits_on(api, step, kind, action):
    run_id = start(api, publish(api, {"name": f"diagnose {kind}", "steps": [step]}))

    def cause():
        causes = diagnosis_of(api, run_id)["causes"]
        return causes if causes and causes[0]["kind"] == kind else None

    [found] = wait_for(cause, 20, f"the diagnosis to name {kind}")
    assert found["step_id"] == "s" and action in found["action"]
    if kind == "event":
        assert f"diag-{run_id}" in found["message"]
    api.post(f"/runs/{run_id}/cancel")
    assert diagnosis_of(api, run_id)["causes"][0]["kind"] == "cancelled"


def test_diagnosis_of_a_paused_run_and_of_another_tenants_run(api, tokens):
    run_id = start(api, publish(api, ONE_SLOW_STEP))
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["status"] == "running", 20, "the run to start")
    assert api.post(f"/runs/{run_id}/pause").status_code == 200
    causes = diagnosis_of(api, run_id)["causes"]
    assert causes[0]["kind"] == "paused" and causes[0]["action"] == f"POST /runs/{run_id}/resume"
    assert api.as_(tokens["other_tenant"]).get(f"/runs/{run_id}/diagnosis").status_code == 404
    api.post(f"/runs/{run_id}/cancel")
