"""The faster dead-worker signal: a worker process SIGKILLed while it runs a long step is named by the
run's diagnosis within 10 s, long before the step's lease expires (the lease stays what gives the step
back). Named by an API process that heard the worker's heartbeats before it died, and by one that began
listening only after (a worker it never heard).

Real processes: a `switchyard worker` (prefork) on a database and a Redis db of the test's own, with a
30 s lease so that the lease cannot be what names it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from orchestrator.db import repository as repo
from orchestrator.db.models import Step
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import Api, Processes, publish, stack_of_its_own, start, wait_for

LEASE_S = 30.0
NAMED_WITHIN_S = 10.0
QUIET_S = 5.0  # longer than two heartbeat intervals (4 s): a live worker is heard and never named


@pytest.fixture
def lone_worker(tmp_path) -> Iterator[tuple[Settings, Processes]]:
    with stack_of_its_own("switchyard_dead_worker", tmp_path, lease_s=LEASE_S) as stack:
        yield stack


def _lost_worker_causes(api: Api, run_id: str, name: str) -> list[dict]:
    causes = api.get(f"/runs/{run_id}/diagnosis").get_json()["causes"]
    return [c for c in causes if c["kind"] == "worker_lost" and name in c["message"]]


def _lease_left_s(sessions, run_id: str) -> tuple[str, float]:
    """The step's status and the seconds its lease has left, by the database's clock."""
    with sessions() as session:
        status, left = session.execute(
            select(Step.status, func.extract("epoch", Step.lease_expires_at - func.now()))
            .where(Step.run_id == run_id, Step.step_id == "long")).one()
    return status, float(left)


def test_the_diagnosis_names_a_killed_worker_within_10_s_before_its_lease_expires(lone_worker, app_for):

    settings, procs = lone_worker
    proc = procs.start("doomed", "worker", "--concurrency", "1", "--pool", "prefork", "--loglevel", "INFO")
    sessions = make_sessionmaker(make_engine(settings))
    with transaction(sessions) as session:
        token = repo.create_token(session, "lost", "admin", "dead worker test")[1]
    api = Api(app_for(settings).test_client(), token)
    workflow = publish(api, {"name": "long", "steps": [
        {"id": "long", "type": "tool", "tool": "sleep", "args": {"seconds": 600}, "timeout_s": 900}]})
    run_id = start(api, workflow)

    def running_step():
        assert proc.poll() is None, procs.log_tail("doomed")
        [step] = api.get(f"/runs/{run_id}").get_json()["steps"]
        return step if step["status"] == "running" and step["worker"] else None

    worker = wait_for(running_step, 60, "the worker to start the long step", interval=0.2)["worker"]
    name = worker.rpartition(":")[0]
    assert name.startswith(f"switchyard-{proc.pid}@"), worker
    # This API process hears the worker alive (GET /workers starts its monitor) and, for longer than a
    # silent worker takes to be named, names nothing: no false alarm about a live worker.
    wait_for(lambda: any(w["name"] == name for w in api.get("/workers").get_json()["workers"]), 30,
             "the API's worker monitor to hear the worker", interval=0.2)
    quiet_until = time.monotonic() + QUIET_S
    while time.monotonic() < quiet_until:
        assert api.get(f"/runs/{run_id}/diagnosis").get_json()["causes"] == []
        time.sleep(0.2)  # polling an assertion over a window, not waiting for something

    procs.stop("doomed", kill=True)  # SIGKILL to the worker and its pool: no offline event, no outcome
    killed_at = time.monotonic()
    [cause] = wait_for(lambda: _lost_worker_causes(api, run_id, name), NAMED_WITHIN_S,
                       f"the diagnosis to name worker {name} within {NAMED_WITHIN_S:g} s of its death", interval=0.2)
    named_after = time.monotonic() - killed_at
    status, lease_left = _lease_left_s(sessions, run_id)
    assert status == "running" and lease_left > 0, "named only once the lease had expired"
    assert "stopped sending heartbeats at" in cause["message"] and "lease expires at" in cause["message"]
    assert cause["step_id"] == "long"

    # An API process that began listening after the death (it never heard the worker) names it too.
    fresh = Api(app_for(settings).test_client(), token)
    asked_at = time.monotonic()
    [cause] = wait_for(lambda: _lost_worker_causes(fresh, run_id, name), NAMED_WITHIN_S,
                       "a fresh API process to name the worker it never heard", interval=0.2)
    fresh_named_after = time.monotonic() - asked_at
    status, fresh_lease_left = _lease_left_s(sessions, run_id)
    assert status == "running" and fresh_lease_left > 0
    assert "sends no heartbeats" in cause["message"]
    print(f"\ndead worker: named {named_after:.1f} s after its SIGKILL ({lease_left:.0f} s of lease left); "
          f"by an API process that never heard it, {fresh_named_after:.1f} s after its first diagnosis "
          f"({fresh_lease_left:.0f} s of lease left)")
