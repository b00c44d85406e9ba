"""Chaos: hundreds of runs (each with a for-each step and a sub-workflow) while workers are SIGKILLed, Redis is restarted (losing every message it
held) and one of two schedulers is killed. Every run must still succeed, once.

The test brings its own Redis server (so it may restart it) and its own database (so the session's
scheduler does not touch these runs); the workers and schedulers are real processes.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from orchestrator.db import repository as repo
from orchestrator.db.models import Event, Run
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import Api, Processes, fresh_database, publish, wait_for
from tests.integration.invariants import assert_no_violations, wait_all_runs_ended

# A fault-injection scenario: `make chaos` runs it (and .ci/run), `make test` leaves it out.
pytestmark = pytest.mark.chaos

RUNS = 300
PARTS = 3  # the items of each run's for-each step
WORKERS = ("worker1", "worker2", "worker3")
SETTLE_S = 120  # every run ends within this long after the last fault


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own that keeps nothing on disk, like the machine's."""

    def __init__(self, folder):
        self.port, self.folder, self.proc = free_port(), folder, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def answers():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(answers, 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def chaos(tmp_path) -> Iterator[tuple[Settings, Processes, RedisServer]]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; install Debian's redis-server package")
    server = RedisServer(tmp_path)
    server.start()
    with fresh_database("switchyard_chaos") as database_url:
        settings = Settings(
            database_url=database_url, broker_url=server.url, data_dir=tmp_path / "data",
            sweep_interval_s=1.0, lease_s=4.0, outbox_republish_after_s=2.0,
        )
        procs = Processes(settings, tmp_path)
        try:
            yield settings, procs, server
        finally:
            procs.stop_all()
            server.stop()


def start_worker(procs: Processes, name: str) -> None:
    procs.start(name, "worker", "--concurrency", "2", "--pool", "prefork", "--loglevel", "INFO")


def test_every_run_succeeds_once_through_worker_kills_a_redis_restart_and_a_dead_scheduler(chaos, app_for):

    settings, procs, redis_server = chaos
    for name in WORKERS:
        start_worker(procs, name)
    procs.start("scheduler1", "scheduler")
    procs.start("scheduler2", "scheduler")
    sessions = make_sessionmaker(make_engine(settings))
    with transaction(sessions) as session:
        token = repo.create_token(session, "chaos", "admin", "chaos test")[1]
    api = Api(app_for(settings).test_client(), token)
    child = publish(api, {"name": "child", "steps": [
        {"id": "leaf", "type": "tool", "tool": "echo", "args": {"n": "{{ input.n }}"}}]})
    workflow = publish(api, {
        "name": "branches",
        "defaults": {"retry": {"max_attempts": 5, "initial_delay_s": 0.2, "jitter": True}},
        "steps": [
            {"id": "a", "type": "tool", "tool": "echo", "args": {"n": "{{ input.n }}"}},
            {"id": "b", "type": "tool", "tool": "sleep", "needs": ["a"], "args": {"seconds": 0.2}},
            {"id": "c", "type": "tool", "tool": "echo", "needs": ["a"], "args": {"c": True}},
            # A for-each step: its items are rows of their own, with their own leases and messages.
            {"id": "e", "type": "tool", "tool": "echo", "needs": ["a"], "for_each": "input.parts", "max_parallel": 2,
             "args": {"part": "{{ item }}"}},
            # A sub-workflow: a child run of its own, whose end wakes this one.
            {"id": "f", "type": "workflow", "workflow_id": child, "needs": ["a"], "input": {"n": "{{ input.n }}"}},
            {"id": "d", "type": "tool", "tool": "echo", "needs": ["b", "c", "e", "f"],
             "args": {"done": "{{ input.n }}"}},
        ],
    })
    run_ids = []
    for n in range(RUNS):
        response = api.post("/runs", json={"workflow_id": workflow, "input": {"n": n, "parts": list(range(PARTS))}})
        assert response.status_code == 201, response.get_json()
        run_ids.append(response.get_json()["id"])

    # Faults, a couple of seconds apart: SIGKILL a worker (and its pool) and start a new one in its
    # place, so at least two are always alive; restart Redis once; kill one of the two schedulers.
    rng = random.Random(7)
    faults = ["kill_worker", "kill_worker", "restart_redis", "kill_worker", "kill_scheduler", "kill_worker"]
    for fault in faults:
        time.sleep(2)  # the pace of the faults, not synchronisation: work goes on in between
        if fault == "kill_worker":
            victim = rng.choice(WORKERS)
            procs.stop(victim, kill=True)
            start_worker(procs, victim)
        elif fault == "restart_redis":
            redis_server.restart()
        else:
            procs.stop("scheduler1", kill=True)

    # Seconds from the last fault until no run is live; on a timeout, the failure says what the live
    # runs hold (their steps by status, the outbox, the invariant checker's findings).
    settled_after = wait_all_runs_ended(settings, SETTLE_S)

    with sessions() as session:
        statuses = dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())
        doubled = session.execute(
            select(Event.run_id, Event.step_id, func.count())
            .where(Event.type == "step_completed")
            .group_by(Event.run_id, Event.step_id)
            .having(func.count() > 1)
        ).all()
        # Two schedulers never both dispatched one attempt (each run is locked by one of them).
        dispatched_twice = session.execute(
            select(Event.run_id, Event.step_id, Event.attempt, func.count())
            .where(Event.type == "step_queued")
            .group_by(Event.run_id, Event.step_id, Event.attempt)
            .having(func.count() > 1)
        ).all()
        completed = session.execute(
            select(func.count()).select_from(Event).where(Event.type == "step_completed")
        ).scalar_one()
    assert statuses == {"succeeded": 2 * RUNS}, statuses  # each run and its child run
    assert doubled == [], f"steps recorded as completed more than once: {doubled[:5]}"
    assert dispatched_twice == [], f"attempts dispatched twice: {dispatched_twice[:5]}"
    assert completed == RUNS * (7 + PARTS)  # a to f, each of e's items and the child's leaf: once each
    assert_no_violations(settings)
    print(f"\nchaos: {RUNS} runs succeeded, settled {settled_after:.1f}s after the last fault")
