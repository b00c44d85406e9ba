"""Chaos: PostgreSQL restarted again and again (a crash, `pg_ctl stop -m immediate`, then a start, every
5-20 s at random for 90 s) while clients post 1,000 runs of four shapes through a real HTTP server,
each retried with its Idempotency-Key on a 503 after the Retry-After the API gave.

At the end: every POST was answered 201/200 or a 503 with Retry-After (never another 5xx), each of the
1,000 runs was created once and succeeded, each of its steps (for-each items and child runs included)
completed exactly once, no attempt was dispatched twice, and the invariant checker finds nothing.

The cluster is the test's own (conftest's private_postgres): stopping it disturbs nothing else on the
machine. Two workers and two schedulers are real processes; the broker is a Redis db of the test's own
on the machine's Redis (never restarted here).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import httpx
import pytest

from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from tests.integration.conftest import Api, PostgresServer, publish, served, wait_for
from tests.integration.invariants import (
    assert_every_step_succeeded_once,
    assert_no_violations,
    wait_all_runs_ended,
)

# A fault-injection scenario: `make chaos` runs it (and .ci/run), `make test` leaves it out.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

RUNS = 1000
CHAOS_S = 90  # restarts happen within this window; the runs are posted over it too
GAP_S = (5.0, 20.0)  # between two restarts, at random
CLIENTS = 4
SETTLE_S = 240  # every run ends within this long after the last restart
PARTS = [0, 1, 2]


RETRY = {"retry": {"max_attempts": 5, "initial_delay_s": 0.2, "jitter": True}}


def shapes(api: Api) -> list[str]:
    """Four workflows: a chain, a fan-out and join, a for-each, and a branch with a condition, a step
    that fails once then succeeds, and a sub-workflow."""
    child = publish(api, {"name": "child", "steps": [
        {"id": "leaf", "type": "tool", "tool": "echo", "args": {"n": "{{ input.n }}"}}]})
    a = {"id": "a", "type": "tool", "tool": "echo", "args": {"n": "{{ input.n }}", "ok": True}}
    return [
        publish(api, {"name": "chain", "defaults": RETRY, "steps": [
            a, {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"], "args": {"b": True}},
            {"id": "c", "type": "tool", "tool": "sleep", "needs": ["b"], "args": {"seconds": 0.1}}]}),
        publish(api, {"name": "fan", "defaults": RETRY, "steps": [
            a, *({"id": s, "type": "tool", "tool": "echo", "needs": ["a"], "args": {s: True}} for s in "bcd"),
            {"id": "e", "type": "tool", "tool": "echo", "needs": ["b", "c", "d"], "args": {"joined": True}}]}),
        publish(api, {"name": "items", "defaults": RETRY, "steps": [
            a, {"id": "e", "type": "tool", "tool": "echo", "needs": ["a"], "for_each": "input.parts",
                "max_parallel": 2, "args": {"part": "{{ item }}"}},
            {"id": "d", "type": "tool", "tool": "echo", "needs": ["e"], "args": {"done": True}}]}),
        publish(api, {"name": "branch", "defaults": RETRY, "steps": [
            a, {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"], "when": "steps.a.output.ok", "args": {}},
            {"id": "c", "type": "tool", "tool": "fail", "needs": ["b"], "args": {"until_attempt": 2}},
            {"id": "f", "type": "workflow", "workflow_id": child, "needs": ["c"], "input": {"n": "{{ input.n }}"}}]}),
    ]


class Clients:
    """CLIENTS threads posting runs 0..RUNS-1 at an even pace over ``over_s``, each retried with its
    Idempotency-Key after a 503's Retry-After until it is accepted; every answer is kept."""

    def __init__(self, base_url: str, token: str, workflows: list[str], over_s: float):
        self.base_url, self.token, self.workflows = base_url, token, workflows
        self.pace, self.began = over_s / RUNS, time.monotonic()
        self.accepted: dict[int, str] = {}
        self.codes: Counter[int] = Counter()
        self.unexpected: list[tuple[int, str]] = []  # answers other than 200, 201 and a well-formed 503
        self.transport_errors = 0
        self._next, self._lock = 0, threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), f"clients still posting after {timeout_s} s"

    def _take(self) -> int | None:
        with self._lock:
            n, self._next = self._next, self._next + 1
        return n if n < RUNS else None

    def _client(self) -> None:
        with httpx.Client(base_url=f"{self.base_url}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {self.token}"}) as http:
            while (n := self._take()) is not None:
                # The load's pace (a run every CHAOS_S / RUNS seconds), not synchronisation.
                time.sleep(max(0.0, self.began + n * self.pace - time.monotonic()))
                self._post_until_accepted(http, n)

    def _post_until_accepted(self, http: httpx.Client, n: int) -> None:
        body = {"workflow_id": self.workflows[n % len(self.workflows)], "input": {"n": n, "parts": PARTS}}
        while True:
            try:
                response = http.post("/runs", json=body, headers={"Idempotency-Key": f"chaos-pg-{n}"})
            except httpx.TransportError:
                self.transport_errors += 1
                time.sleep(0.5)  # a client's back-off after a dropped connection
                continue
            self.codes[response.status_code] += 1
            if response.status_code in (200, 201):
                self.accepted[n] = response.json()["id"]
                return
            retry_after = response.headers.get("Retry-After")
            if response.status_code != 503 or retry_after is None \
                    or response.json().get("error", {}).get("code") != "unavailable":
                self.unexpected.append((response.status_code, response.text[:300]))
                return
            time.sleep(float(retry_after))  # as the API asked: the client's back-off


def restart_again_and_again(server: PostgresServer, until: float, rng: random.Random) -> list[float]:
    """Crash and start the cluster every GAP_S seconds at random until ``until``; each restart's length."""
    lengths = []
    while time.monotonic() + GAP_S[0] < until:
        # The pace of the fault, not synchronisation: the load and the engine go on in between.
        time.sleep(min(rng.uniform(*GAP_S), max(0.0, until - time.monotonic())))
        down = time.monotonic()
        server.stop()
        server.start()
        lengths.append(time.monotonic() - down)
    return lengths


def test_every_run_succeeds_once_while_postgres_is_restarted_again_and_again(private_postgres, app_for):
    from orchestrator.broker import make_celery

    settings, procs, server = private_postgres
    for name in ("worker1", "worker2"):
        procs.start(name, "worker", "--concurrency", "2", "--pool", "prefork", "--loglevel", "INFO")
    procs.start("scheduler1", "scheduler")
    procs.start("scheduler2", "scheduler")
    celery = make_celery(settings)
    wait_for(lambda: len(celery.control.ping(timeout=0.5)) >= 2, 60, "two workers to answer ping")
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, "chaos", "admin", "postgres chaos test")[1]
    app = app_for(settings)
    workflows = shapes(Api(app.test_client(), token))
    seed = int(os.environ.get("SWITCHYARD_CHAOS_SEED", random.randrange(1 << 30)))

    with served(app) as base_url:
        clients = Clients(base_url, token, workflows, over_s=CHAOS_S)
        clients.start()
        restarts = restart_again_and_again(server, time.monotonic() + CHAOS_S, random.Random(seed))
        last_fault = time.monotonic()
        clients.join(120)
    wait_all_runs_ended(settings, SETTLE_S)
    settled_s = time.monotonic() - last_fault

    figures = f"(seed {seed}; rerun with SWITCHYARD_CHAOS_SEED={seed})"
    assert clients.unexpected == [], f"answers other than 201/200 and 503 with Retry-After {figures}: " \
                                     f"{clients.unexpected[:5]}"
    assert len(restarts) >= 4, f"only {len(restarts)} restarts {figures}"
    assert clients.codes[503] > 0, f"no POST met the database down: {dict(clients.codes)} {figures}"
    assert len(clients.accepted) == RUNS and len(set(clients.accepted.values())) == RUNS
    done = assert_every_step_succeeded_once(settings)
    assert done["runs"] == RUNS, f"{done['runs']} runs for {RUNS} accepted: a retried POST made a second run"
    assert_no_violations(settings)
    print(f"\npostgres chaos {figures}: {len(restarts)} restarts in {CHAOS_S} s (each {min(restarts):.1f}-"
          f"{max(restarts):.1f} s); {RUNS} runs (+{done['child_runs']} child runs) accepted, "
          f"{clients.codes[201]} at once as 201 and {clients.codes[200]} as a 200 replay, "
          f"{clients.codes[503]} answers 503 with Retry-After, {clients.transport_errors} dropped connections; "
          f"all succeeded, {done['steps']} steps completed once each ({done['attempts']} attempts, "
          f"{done['retries']} retries of which {done['lost']} lost with a lease); settled {settled_s:.1f} s "
          f"after the last restart")
