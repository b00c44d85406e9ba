"""PostgreSQL stopped for 10 s under load: the API answers 503 with Retry-After (never 500), and every
run it accepted still succeeds afterwards.

The test runs a PostgreSQL server of its own (initdb into a temporary folder, as the `postgres` user,
since PostgreSQL refuses to run as root), so it can stop it without disturbing anything else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.db import migrate
from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import Api, Processes, claimed_redis_db, publish, wait_for, wait_run
from tests.integration.invariants import assert_no_violations
from tests.integration.test_chaos import free_port

# A fault-injection scenario: `make chaos` runs it (and .ci/run), `make test` leaves it out.
pytestmark = pytest.mark.chaos

OUTAGE_S = 10


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        pytest.fail(f"{name} is not installed; install Debian's postgresql package")
    return str(found)


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free port."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="switchyard-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.as_postgres = as_postgres
        if as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run([*as_postgres, _postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/switchyard"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, _postgres_bin("pg_ctl"), "-D", str(self.data), *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.folder / "server.log"), "-w", "start")

    def stop(self) -> None:
        """Like a crash: no checkpoint, every connection cut."""
        self._ctl("-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def outage_env(tmp_path) -> Iterator[tuple[Settings, Processes, PostgresServer]]:
    server = PostgresServer()
    server.start()
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE switchyard")
        with claimed_redis_db() as broker_url:
            settings = Settings(database_url=server.url, broker_url=broker_url, data_dir=tmp_path / "data",
                                sweep_interval_s=1.0, lease_s=6.0, outbox_republish_after_s=2.0)
            migrate.upgrade(settings)
            procs = Processes(settings, tmp_path)
            try:
                yield settings, procs, server
            finally:
                procs.stop_all()
    finally:
        server.remove()


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


def test_no_run_is_lost_and_the_api_answers_503_while_postgres_is_down(outage_env):
    from api import create_app

    settings, procs, server = outage_env
    procs.start("worker", "worker", "--concurrency", "3", "--pool", "prefork", "--loglevel", "INFO")
    procs.start("scheduler", "scheduler")
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, "outage", "admin", "outage test")[1]
    api = Api(create_app(settings).test_client(), token)
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
