"""Redis frozen (SIGSTOP: it keeps its connections and answers nothing, as in a long pause or a network
partition) for 30 s while clients go on starting runs over HTTP. Nothing on the request path may
wait on the broker: POST /runs stays fast (p99 under 1 s), the rate limiter counts in the API process
meanwhile (and says so in /metrics), and every run accepted succeeds once Redis answers again.

The test brings its own redis-server (so it may freeze it) and its own database; the workers and
the scheduler are real processes, the API is served on a real threaded HTTP server.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import Processes, fresh_database, served, wait_for
from tests.integration.invariants import assert_no_violations
from tests.integration.test_chaos import RedisServer

# A fault-injection scenario: `make chaos` runs it (and .ci/run), `make test` leaves it out.
pytestmark = pytest.mark.chaos

FREEZE_S = 30
CLIENTS = 3


@pytest.fixture
def frozen_env(tmp_path) -> Iterator[tuple[Settings, Processes, RedisServer]]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; install Debian's redis-server package")
    server = RedisServer(tmp_path)
    server.start()
    try:
        with fresh_database("switchyard_frozen") as database_url:
            settings = Settings(database_url=database_url, broker_url=server.url, data_dir=tmp_path / "data",
                                sweep_interval_s=1.0, lease_s=6.0, outbox_republish_after_s=2.0)
            procs = Processes(settings, tmp_path)
            try:
                yield settings, procs, server
            finally:
                procs.stop_all()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)  # never leave it frozen, whatever failed
        server.stop()


class Clients:
    """CLIENTS threads starting runs over HTTP, one every 0.1 s each, keeping (start time, seconds,
    status, run id) of every answer, until stopped."""

    def __init__(self, base: str, token: str, workflow: str):
        self.base, self.token, self.workflow = base, token, workflow
        self.answers: list[tuple[float, float, int, str | None]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=f"{self.base}/api/v1", headers=headers, timeout=30) as client:
            while not self.stopping.wait(0.1):
                began = time.monotonic()
                response = client.post("/runs", json={"workflow_id": self.workflow, "input": {}})
                run_id = response.json().get("id") if response.status_code == 201 else None
                self.answers.append((began, time.monotonic() - began, response.status_code, run_id))

    def accepted(self) -> int:
        return sum(1 for a in self.answers if a[2] == 201)


def counted(metrics: str, name: str) -> float:
    """The value of the sample ``name`` in a Prometheus text exposition (0 if absent)."""
    return next((float(line.split()[1]) for line in metrics.splitlines() if line.startswith(f"{name} ")), 0.0)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_post_runs_stays_fast_and_every_run_succeeds_while_redis_is_frozen(frozen_env, app_for):

    settings, procs, server = frozen_env
    procs.start("worker", "worker", "--concurrency", "3", "--pool", "prefork", "--loglevel", "INFO")
    procs.start("scheduler", "scheduler")
    sessions = make_sessionmaker(make_engine(settings))
    with transaction(sessions) as session:
        token = repo.create_token(session, "frozen", "admin", "frozen broker test")[1]
    app = app_for(settings)
    with served(app) as base:
        http = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        workflow = "steady"
        assert http.put(f"/workflows/{workflow}", json={"name": "steady", "steps": [
            {"id": "a", "type": "tool", "tool": "echo", "args": {"n": 1}},
            {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"], "args": {"n": 2}},
        ]}).status_code == 201
        with Clients(base, token, workflow) as clients:
            wait_for(lambda: clients.accepted() >= 20, 60, "20 runs started before the freeze")
            os.kill(server.proc.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            # The freeze lasts FREEZE_S while the clients go on: the pace of the fault, not synchronisation.
            time.sleep(FREEZE_S)
            os.kill(server.proc.pid, signal.SIGCONT)
            thawed_at = time.monotonic()
            wait_for(lambda: sum(1 for a in clients.answers if a[0] > thawed_at) >= 20, 60,
                     "20 answers after the thaw")
        metrics = http.get("/metrics").text

    during = [a for a in clients.answers if frozen_at <= a[0] < thawed_at]
    codes = {a[2] for a in clients.answers}
    assert codes == {201}, f"answers other than 201: {sorted(codes)}"
    assert len(during) >= FREEZE_S * CLIENTS * 2, f"only {len(during)} starts answered during the freeze"
    slowest = p99([a[1] for a in during])
    assert slowest < 1.0, f"POST /runs p99 {slowest:.3f} s while Redis was frozen"
    assert counted(metrics, "switchyard_rate_limit_degraded_total") > 0, "the rate limiter did not say it counted locally"

    accepted = [a[3] for a in clients.answers if a[2] == 201]
    drain_from = time.monotonic()

    def all_succeeded() -> bool:
        with sessions() as session:
            return repo.count_runs_by_status(session, "frozen").get("succeeded", 0) == len(accepted)

    wait_for(all_succeeded, 180, f"all {len(accepted)} accepted runs to succeed", interval=0.5)
    drained = time.monotonic() - drain_from
    assert_no_violations(settings)
    print(f"\nbroker frozen {FREEZE_S} s: {len(accepted)} runs accepted ({len(during)} during the freeze, "
          f"p99 {slowest * 1000:.0f} ms, max {max(a[1] for a in during) * 1000:.0f} ms), all succeeded, "
          f"{drained:.1f} s to drain after the load")
