"""The lean start (POST /runs): one statement guarded by what an API process cached of the workflow
(orchestrator/db/repository/starts.py), and an answer built from what was written.

Two apps on one database stand for two API processes: what one of them changes (a new version, an
archive) the other's cache does not know, and its next start must still be right."""

from __future__ import annotations

import threading

import pytest

import api
from tests.integration.conftest import Api, close_connections_of, unique

ONE_STEP = {"name": "start path", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"},
                                              "queue": "start.path.nobody"}]}


@pytest.fixture
def apis(settings, tokens, app_for):
    """Makes API processes' apps (their connections closed after the test: app_for)."""
    return lambda n: [Api(app_for(settings).test_client(), tokens["admin"]) for _ in range(n)]


def _start(client: Api, workflow_id: str, **extra) -> dict:
    response = client.post("/runs", json={"workflow_id": workflow_id, "input": {}, **extra})
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def test_a_new_runs_answer_is_what_get_reads_back(apis):
    [client] = apis(1)
    workflow_id = unique("start")
    assert client.put(f"/workflows/{workflow_id}", json=ONE_STEP).status_code == 201
    started = _start(client, workflow_id)
    assert started["status"] == "running" and started["steps"][0]["status"] == "queued"
    # No worker reads the step's queue: the run stays as it was written.
    assert client.get(f"/runs/{started['id']}").get_json() == started


def test_a_version_published_by_another_process_is_the_one_started(apis):
    first, second = apis(2)
    workflow_id = unique("start")
    assert first.put(f"/workflows/{workflow_id}", json=ONE_STEP).status_code == 201
    assert _start(first, workflow_id)["workflow"] == {"id": workflow_id, "version": 1, "name": "start path"}
    assert second.put(f"/workflows/{workflow_id}", json={**ONE_STEP, "name": "v2"}).status_code == 201
    # The first process cached version 1 as the latest: its start is refused by the guard, reads again.
    assert _start(first, workflow_id)["workflow"] == {"id": workflow_id, "version": 2, "name": "v2"}
    pinned = _start(first, workflow_id, version=1)
    assert pinned["workflow"] == {"id": workflow_id, "version": 1, "name": "v2"}


def test_a_workflow_archived_by_another_process_refuses_starts_and_writes_nothing(apis):
    first, second = apis(2)
    workflow_id = unique("start")
    assert first.put(f"/workflows/{workflow_id}", json=ONE_STEP).status_code == 201
    _start(first, workflow_id)
    assert second.delete(f"/workflows/{workflow_id}").status_code == 200
    refused = first.post("/runs", json={"workflow_id": workflow_id, "input": {}})
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "workflow_archived"
    runs = first.get(f"/runs?workflow_id={workflow_id}").get_json()["runs"]
    assert len(runs) == 1


def test_concurrent_starts_with_one_idempotency_key_make_one_run(apis):
    clients = apis(4)
    workflow_id = unique("start")
    assert clients[0].put(f"/workflows/{workflow_id}", json=ONE_STEP).status_code == 201
    for client in clients:  # every process has the workflow's head cached: the race is the insert's
        _start(client, workflow_id)
    key = unique("key")
    answers: list = []
    barrier = threading.Barrier(len(clients))

    def start(client: Api) -> None:
        barrier.wait()
        answers.append(client.post("/runs", json={"workflow_id": workflow_id, "input": {}},
                                   headers={"Idempotency-Key": key}))

    threads = [threading.Thread(target=start, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [a.get_json() for a in answers]
    assert len({a.get_json()["id"] for a in answers}) == 1
    runs = clients[0].get(f"/runs?workflow_id={workflow_id}").get_json()["runs"]
    assert len(runs) == 1 + len(clients)


# -- the one-statement sessions' connections ------------------------------------------------------------

def _statements_pool(app):
    return app.extensions["switchyard"].statements.maker.kw["bind"].pool


def test_a_server_whose_threads_last_keeps_a_connection_per_thread_and_replaces_one_the_database_cut(
        settings, tokens):
    app = api.create_app(settings, server_threads=4)
    try:
        client = Api(app.test_client(), tokens["admin"])
        workflow_id = unique("held")
        assert client.put(f"/workflows/{workflow_id}", json=ONE_STEP).status_code == 201
        _start(client, workflow_id)
        app.extensions["switchyard"].courier.wait_idle(10)
        kept = _statements_pool(app).checkedout()
        assert 1 <= kept <= 2  # this thread's and the broker thread's: not given back between uses
        for _ in range(20):
            _start(client, workflow_id)
        app.extensions["switchyard"].courier.wait_idle(10)
        assert _statements_pool(app).checkedout() == kept

        # The thread's connection cut (as by a restart; only this one: the database is the session's):
        # the next request fails at most once.
        import psycopg
        from sqlalchemy import text

        from tests.integration.conftest import _libpq
        with app.extensions["switchyard"].statements() as session:
            backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(_libpq(settings.resolved_database_url), autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()[0]
        first = client.post("/runs", json={"workflow_id": workflow_id, "input": {}})
        assert first.status_code in (201, 503), first.get_json()
        if first.status_code == 503:
            assert first.headers.get("Retry-After")
        _start(client, workflow_id)
    finally:
        close_connections_of(app)
    assert _statements_pool(app).checkedout() == 0  # dispose gave every thread's connection back


def test_a_server_whose_threads_come_and_go_keeps_no_connection_between_requests(settings, tokens):
    import httpx

    from tests.integration.conftest import served

    app = api.create_app(settings)
    workflow_id = unique("pooled")
    with served(app) as base:
        headers = {"Authorization": f"Bearer {tokens['admin']}"}
        assert httpx.put(f"{base}/api/v1/workflows/{workflow_id}", json=ONE_STEP, headers=headers,
                            timeout=10).status_code == 201
        for _ in range(5):  # werkzeug's threaded server: a thread per request
            response = httpx.post(f"{base}/api/v1/runs", json={"workflow_id": workflow_id, "input": {}},
                                     headers=headers, timeout=10)
            assert response.status_code == 201, response.text
        app.extensions["switchyard"].courier.wait_idle(10)
        assert _statements_pool(app).checkedout() == 0
