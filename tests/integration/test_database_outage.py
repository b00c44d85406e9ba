"""PostgreSQL stopped for 10 s under load: the API answers 503 with Retry-After (never 500), and every
run it accepted still succeeds afterwards.

The test runs a PostgreSQL server of its own (conftest's private_postgres), so it can stop it without
disturbing anything else.
"""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from tests.integration.conftest import Api, publish, wait_for, wait_run
from tests.integration.invariants import assert_no_violations

# A fault-injection scenario: `make chaos` runs it (and .ci/run), `make test` leaves it out.
pytestmark = pytest.mark.chaos

OUTAGE_S = 10


class Load(threading.Thread):
    """Starts a run every 50 ms and keeps every answer, until stopped."""

    def __init__(self, api: Api, workflow: str):
        super().__init__(daemon=True)
        self.api, self.workflow = api, workflow
        self.answers: list[tuple[int, dict, str | None]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(0.05):
            n += 1
            response = self.api.post("/runs", json={"workflow_id": self.workflow, "input": {"n": n}})
            self.answers.append((response.status_code, response.get_json(), response.headers.get("Retry-After")))


def test_no_run_is_lost_and_the_api_answers_503_while_postgres_is_down(private_postgres, app_for):

    settings, procs, server = private_postgres
    procs.start("worker", "worker", "--concurrency", "3", "--pool", "prefork", "--loglevel", "INFO")
    procs.start("scheduler", "scheduler")
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, "outage", "admin", "outage test")[1]
    api = Api(app_for(settings).test_client(), token)
    workflow = publish(api, {"name": "steady", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "args": {"n": "{{ input.n }}"}},
        {"id": "b", "type": "tool", "tool": "sleep", "needs": ["a"], "args": {"seconds": 0.3}},
    ]})

    load = Load(api, workflow)
    load.start()
    wait_for(lambda: len([a for a in load.answers if a[0] == 201]) >= 20, 30, "20 runs started before the outage")
    server.stop()
    down_at = time.monotonic()
    wait_for(lambda: any(a[0] == 503 for a in load.answers), 10, "the API to answer 503")
    readyz = api.get("/readyz")
    assert readyz.status_code == 503
    # The outage lasts OUTAGE_S while the load goes on: the pace of the fault, not synchronisation.
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    server.start()
    answered_during = len(load.answers)
    wait_for(lambda: len(load.answers) > answered_during and load.answers[-1][0] == 201, 30,
             "the API to accept runs again")
    wait_for(lambda: len([a for a in load.answers[answered_during:] if a[0] == 201]) >= 20, 30,
             "20 runs started after the outage")
    load.stopping.set()
    load.join(10)

    codes = [a[0] for a in load.answers]
    assert set(codes) <= {201, 503}, f"unexpected answers: {sorted(set(codes))}"
    unavailable = [a for a in load.answers if a[0] == 503]
    assert unavailable and all(a[2] and a[1]["error"]["code"] == "unavailable" for a in unavailable)
    accepted = [a[1]["id"] for a in load.answers if a[0] == 201]
    for run_id in accepted:
        assert wait_run(api, run_id, timeout=90)["status"] == "succeeded", run_id
    assert_no_violations(settings)
    print(f"\noutage: {len(accepted)} runs accepted, all succeeded; {len(unavailable)} answers were 503")
