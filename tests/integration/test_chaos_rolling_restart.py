"""Chaos: every worker restarted, one after another, while runs keep coming, as a deploy does: stopped
(SIGTERM, Celery's warm shutdown, which lets the attempts it runs finish and gives back the messages it
had taken; or SIGKILL, as when its machine dies), started again, and the next one only once the new
one answers. Nothing may be lost or doubled: every run succeeds, each of its steps completes exactly
once, no attempt is dispatched twice, the invariant checker finds nothing; after SIGTERM, not one
attempt is lost with its worker (no lease expires).

Three prefork workers and a scheduler as processes, on a database and a Redis db of the test's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import Api, Processes, publish, stack_of_its_own, wait_for
from tests.integration.invariants import (
    assert_every_step_succeeded_once,
    assert_no_violations,
    wait_all_runs_ended,
)

# A fault-injection scenario: `make chaos` runs it (and .ci/run), `make test` leaves it out.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

WORKERS = ("worker1", "worker2", "worker3")
PACE_S = 0.25  # a run started every PACE_S while the workers are restarted
SETTLE_S = 120


@pytest.fixture
def rolling(tmp_path) -> Iterator[tuple[Settings, Processes]]:
    with stack_of_its_own("switchyard_rolling", tmp_path, lease_s=4.0, outbox_republish_after_s=2.0,
                          stranded_after_s=3.0) as stack:
        yield stack


class Load(threading.Thread):
    """Starts a run every PACE_S, alternating the workflows, until stopped; keeps every answer."""

    def __init__(self, api: Api, workflows: list[str]):
        super().__init__(daemon=True)
        self.api, self.workflows = api, workflows
        self.run_ids: list[str] = []
        self.refused: list[tuple[int, dict]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(PACE_S):
            response = self.api.post("/runs", json={"workflow_id": self.workflows[n % len(self.workflows)],
                                                    "input": {"n": n, "parts": [0, 1, 2]}})
            n += 1
            if response.status_code == 201:
                self.run_ids.append(response.get_json()["id"])
            else:
                self.refused.append((response.status_code, response.get_json()))


def start_worker(procs: Processes, name: str):
    return procs.start(name, "worker", "--concurrency", "2", "--pool", "prefork", "--loglevel", "INFO")


def answering(celery, procs: Processes, names=WORKERS) -> bool:
    """Whether every worker ``names`` (as now started) answers ping."""
    replies = {name for reply in celery.control.ping(timeout=0.5) for name in reply}
    return all(any(r.startswith(f"switchyard-{procs.procs[n].pid}@") for r in replies) for n in names)


def sleeping_on(settings: Settings) -> Callable[[int], bool]:
    """A probe: whether the worker process of this pid (one of its prefork children) runs a sleep step
    now, so that a SIGKILL sent straight after lands in the middle of an attempt (at least 0.3 s left
    of it), not between two."""
    engine = create_engine(settings.resolved_database_url, poolclass=NullPool)  # a connection per probe: none left open after
    statement = text("SELECT EXISTS (SELECT 1 FROM steps WHERE status = 'running' AND worker LIKE :worker "
                     "AND (step_id = 'b' OR step_id LIKE 'e[%'))")

    def probe(pid: int) -> bool:
        with engine.connect() as connection:
            return connection.execute(statement, {"worker": f"switchyard-{pid}@%"}).scalar_one()
    return probe


def restart_each(procs: Processes, celery, in_flight: Callable[[int], bool] | None) -> list[tuple[float, float, int]]:
    """Restart every worker in turn; for each: seconds to stop, seconds until its successor answered,
    and the old process's exit code. With ``in_flight``, each is killed (SIGKILL) as soon as it holds
    an attempt in flight; otherwise stopped by SIGTERM."""
    figures = []
    for name in WORKERS:
        old = procs.procs[name]
        if in_flight is not None:
            wait_for(lambda pid=old.pid: in_flight(pid), 30, f"an attempt in flight on {name} to kill it in", interval=0.02)
        began = time.monotonic()
        procs.stop(name, kill=in_flight is not None)  # SIGTERM waits for the warm shutdown (SIGKILL after 20 s: seen below)
        stopped = time.monotonic() - began
        start_worker(procs, name)
        wait_for(lambda n=name: answering(celery, procs, (n,)), 60, f"the new {name} to answer ping", interval=0.2)
        figures.append((stopped, time.monotonic() - began, old.returncode))
    return figures


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_every_worker_restarted_one_by_one_under_load_loses_and_doubles_nothing(rolling, signal_name, app_for):
    from orchestrator.broker import make_celery

    settings, procs = rolling
    kill = signal_name == "SIGKILL"
    for name in WORKERS:
        start_worker(procs, name)
    procs.start("scheduler", "scheduler")
    celery = make_celery(settings)
    wait_for(lambda: answering(celery, procs), 60, "the three workers to answer ping", interval=0.2)
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, "rolling", "admin", "rolling restart test")[1]
    api = Api(app_for(settings).test_client(), token)
    retry = {"retry": {"max_attempts": 5, "initial_delay_s": 0.2, "jitter": True}}
    workflows = [
        publish(api, {"name": "chain", "defaults": retry, "steps": [
            {"id": "a", "type": "tool", "tool": "echo", "args": {"n": "{{ input.n }}"}},
            {"id": "b", "type": "tool", "tool": "sleep", "needs": ["a"], "args": {"seconds": 0.5}},
            {"id": "c", "type": "tool", "tool": "echo", "needs": ["b"], "args": {"done": True}}]}),
        publish(api, {"name": "items", "defaults": retry, "steps": [
            {"id": "e", "type": "tool", "tool": "sleep", "for_each": "input.parts", "args": {"seconds": 0.3}},
            {"id": "d", "type": "tool", "tool": "echo", "needs": ["e"], "args": {"done": True}}]}),
    ]

    load = Load(api, workflows)
    load.start()
    try:
        wait_for(lambda: len(load.run_ids) >= 20, 30, "20 runs started before the first restart")
        restarts = restart_each(procs, celery, sleeping_on(settings) if kill else None)
        last_restart = time.monotonic()
    finally:
        load.stopping.set()
        load.join(10)
    wait_all_runs_ended(settings, SETTLE_S)
    settled_s = time.monotonic() - last_restart

    assert load.refused == [], load.refused[:3]
    done = assert_every_step_succeeded_once(settings)
    assert done["runs"] == len(load.run_ids)
    if kill:
        assert all(code == -9 for *_, code in restarts)
        # Each was killed in the middle of a sleep step: its lease expired and it was retried.
        assert done["lost"] >= len(WORKERS), f"{done['lost']} attempts lost with {len(WORKERS)} workers killed"
    else:
        assert all(code is not None and code >= 0 for *_, code in restarts), \
            f"a worker did not end its warm shutdown within 20 s and was killed: {restarts} " \
            f"(its threads' stacks at the kill: {procs.folder}/<worker>.stacks.txt)"
        assert done["lost"] == 0, f"{done['lost']} attempts were lost with a worker stopped by SIGTERM"
    assert_no_violations(settings)
    print(f"\nrolling restart ({signal_name}): {len(WORKERS)} workers restarted one by one, each stopped in "
          f"{min(r[0] for r in restarts):.1f}-{max(r[0] for r in restarts):.1f} s and replaced (answering) in "
          f"{min(r[1] for r in restarts):.1f}-{max(r[1] for r in restarts):.1f} s; {done['runs']} runs, all "
          f"succeeded, {done['steps']} steps completed once each ({done['attempts']} attempts, {done['lost']} "
          f"lost with their worker and retried); settled {settled_s:.1f} s after the last restart")
