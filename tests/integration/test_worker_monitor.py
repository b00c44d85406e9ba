"""GET /workers and GET /queues from the monitor (orchestrator/monitor.py): a worker started in the test
shows up with its pool and queue, and drops out once it is killed outright (its heartbeats stop); on the
embedded broker of `switchyard dev` too (no heartbeats there: the monitor's inspect rounds)."""

from __future__ import annotations

import pytest

from orchestrator.settings import Settings
from tests.integration.conftest import Api, Processes, unique, wait_for

# A killed worker's last heartbeat expires after two intervals (4 s); the rest is polling and slack.
DROP_DEADLINE_S = 15


def _mine(api: Api, pid: int) -> dict | None:
    """The worker process ``pid`` started (`switchyard worker` names it switchyard-<pid>@host), if listed."""
    found = [w for w in api.get("/workers").get_json()["workers"] if w["name"].startswith(f"switchyard-{pid}@")]
    return found[0] if found else None


def _consumers(api: Api, queue: str) -> int:
    listed = {q["name"]: q for q in api.get("/queues").get_json()["queues"]}
    return listed[queue]["consumers"] if queue in listed else 0


def _started_then_killed(api: Api, procs: Processes, pool: str, implementation: str) -> None:
    queue = unique("monitored")  # its own queue: it takes no other test's steps
    proc = procs.start("monitored", "worker", "--concurrency", "1", "--pool", pool, "--queues", queue)

    def listed():
        assert proc.poll() is None, procs.log_tail("monitored")
        worker = _mine(api, proc.pid)
        # Its queues and its pool come from two of the monitor's inspect replies, which may arrive in
        # different rounds: until both have, the worker is listed with a null pool.
        return worker if worker and worker["queues"] == [queue] and worker["pool"]["implementation"] else None

    worker = wait_for(listed, 60, "the new worker to be listed with its queue and pool", interval=0.2)
    assert worker["status"] == "online" and worker["pool"]["implementation"].endswith(implementation)
    assert _consumers(api, queue) == 1

    procs.stop("monitored", kill=True)  # SIGKILL: no worker-offline event, its heartbeats just stop
    wait_for(lambda: _mine(api, proc.pid) is None, DROP_DEADLINE_S, "the killed worker to drop out", interval=0.2)
    assert _consumers(api, queue) == 0


@pytest.mark.usefixtures("engine_processes")
def test_a_worker_killed_outright_drops_out_when_its_heartbeat_expires(api, settings, artifacts):
    procs = Processes(settings, artifacts)
    try:
        _started_then_killed(api, procs, "solo", "solo:TaskPool")
    finally:
        procs.stop_all()
    # The session's two workers are still there.
    assert len(api.get("/workers").get_json()["workers"]) == 2


def test_switchyard_dev_lists_its_worker_on_the_embedded_broker(tmp_path, app_for):
    from orchestrator.db import migrate
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    embedded = Settings(database_url=f"sqlite:///{tmp_path / 'dev.db'}", data_dir=tmp_path)
    assert embedded.uses_embedded_broker
    migrate.upgrade(embedded)
    with transaction(make_sessionmaker(make_engine(embedded))) as session:
        token = repo.create_token(session, "demo", "viewer", "monitor test")[1]
    api = Api(app_for(embedded).test_client(), token)
    procs = Processes(embedded, tmp_path)
    try:
        _started_then_killed(api, procs, "threads", "thread:TaskPool")
    finally:
        procs.stop_all()
