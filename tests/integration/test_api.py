"""The REST API against PostgreSQL: contract errors that change nothing, idempotency, pagination, tenancy."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select

from orchestrator.db.models import Event, Run, Step, Workflow, WorkflowVersion
from tests.integration.conftest import publish, start, unique

GOOD = {
    "name": "good",
    "input_schema": {"type": "object", "required": ["ticket"], "properties": {"ticket": {"type": "string"}}},
    "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"t": "{{ input.ticket }}"}}],
}


@pytest.fixture(scope="module")
def workflow(app, tokens):
    from tests.integration.conftest import Api

    return publish(Api(app.test_client(), tokens["admin"]), GOOD)


@pytest.fixture(scope="module")
def counter(database_url):
    """Rows per table, leaving out the steps and events of runs that were live when ``quiet()`` was
    taken: the session's workers (started by an earlier module) may be executing them meanwhile."""
    engine = create_engine(database_url)

    class Counter:
        def quiet(self) -> set[str]:
            with engine.connect() as conn:
                return set(conn.execute(select(Run.id).where(Run.status.not_in(["succeeded", "failed", "cancelled"])))
                           .scalars())

        def __call__(self, busy: set[str] = frozenset()) -> dict[str, int]:
            def query(model):
                q = select(func.count()).select_from(model)
                return q.where(model.run_id.not_in(busy)) if busy and model in (Step, Event) else q

            with engine.connect() as conn:
                return {m.__tablename__: conn.execute(query(m)).scalar_one()
                        for m in (Run, Step, Event, Workflow, WorkflowVersion)}

    yield Counter()
    engine.dispose()


def other_tenant_run(api, tokens):
    other = api.as_(tokens["other_tenant"])
    return start(other, publish(other, GOOD), {"ticket": "theirs"})


BAD_REQUESTS = [
    # (name, method, path, body or raw bytes, token role, status, code)
    ("malformed JSON", "post", "/runs", b'{"workflow_id": ', "operator", 400, "invalid_request"),
    ("body not an object", "post", "/runs", [1, 2], "operator", 400, "invalid_request"),
    ("missing workflow_id", "post", "/runs", {"input": {}}, "operator", 400, "invalid_request"),
    ("unknown field", "post", "/runs", {"workflow_id": "{wf}", "input": {}, "colour": "red"}, "operator", 400,
     "invalid_request"),
    ("unknown workflow", "post", "/runs", {"workflow_id": "no-such-workflow", "input": {}}, "operator", 404,
     "not_found"),
    ("unknown version", "post", "/runs", {"workflow_id": "{wf}", "version": 99, "input": {"ticket": "x"}},
     "operator", 404, "not_found"),
    ("input fails the schema", "post", "/runs", {"workflow_id": "{wf}", "input": {"ticket": 5}}, "operator", 400,
     "invalid_request"),
    ("input missing a required field", "post", "/runs", {"workflow_id": "{wf}", "input": {}}, "operator", 400,
     "invalid_request"),
    ("bad version type", "post", "/runs", {"workflow_id": "{wf}", "version": "one"}, "operator", 400,
     "invalid_request"),
    ("viewer may not start runs", "post", "/runs", {"workflow_id": "{wf}", "input": {"ticket": "x"}}, "viewer", 403,
     "forbidden"),
    ("no token", "post", "/runs", {"workflow_id": "{wf}", "input": {"ticket": "x"}}, None, 401, "unauthorized"),
    ("bad token", "get", "/runs", None, "bogus", 401, "unauthorized"),
    ("bad cursor", "get", "/runs?cursor=not-a-cursor", None, "viewer", 400, "invalid_request"),
    ("bad limit", "get", "/runs?limit=0", None, "viewer", 400, "invalid_request"),
    ("limit over the max", "get", "/runs?limit=501", None, "viewer", 400, "invalid_request"),
    ("bad status filter", "get", "/runs?status=exploded", None, "viewer", 400, "invalid_request"),
    ("other tenant's run", "get", "/runs/{other_run}", None, "admin", 404, "not_found"),
    ("other tenant's run events", "get", "/runs/{other_run}/events", None, "admin", 404, "not_found"),
    ("other tenant's run context", "get", "/runs/{other_run}/context", None, "admin", 404, "not_found"),
    ("unknown run", "get", "/runs/run_nope", None, "viewer", 404, "not_found"),
    ("bad events cursor", "get", "/runs/{other_run}/events?after=-1", None, "admin", 400, "invalid_request"),
    ("cycle in a definition", "put", "/workflows/cyclic", {"name": "c", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "needs": ["b"]},
        {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"]}]}, "admin", 400, "invalid_request"),
    ("unknown needs", "put", "/workflows/unknown-needs", {"name": "c", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "needs": ["ghost"]}]}, "admin", 400, "invalid_request"),
    ("unknown tool", "put", "/workflows/unknown-tool", {"name": "c", "steps": [
        {"id": "a", "type": "tool", "tool": "rm-rf"}]}, "admin", 400, "invalid_request"),
    ("bad input_schema", "put", "/workflows/bad-schema", {"name": "c", "input_schema": {"type": 12}, "steps": [
        {"id": "a", "type": "tool", "tool": "echo"}]}, "admin", 400, "invalid_request"),
    ("operator may not publish", "put", "/workflows/by-operator", GOOD, "operator", 403, "forbidden"),
    ("bad workflow id", "put", "/workflows/bad%20id!", GOOD, "admin", 400, "invalid_request"),
    ("unknown route", "get", "/nowhere", None, "viewer", 404, "not_found"),
    ("wrong method", "delete", "/runs", None, "admin", 405, "method_not_allowed"),
]


@pytest.mark.parametrize("name, method, path, body, role, status, code", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_contract_errors_and_change_nothing(
    api, tokens, workflow, counter, name, method, path, body, role, status, code
):
    other_run = other_tenant_run(api, tokens) if "{other_run}" in path else None
    path = path.format(wf=workflow, other_run=other_run)
    if isinstance(body, dict):
        body = {k: (v.format(wf=workflow) if isinstance(v, str) else v) for k, v in body.items()}
    token = {None: None, "bogus": "sy_not_a_token"}.get(role, tokens.get(role))
    client = api.as_(token)
    busy = counter.quiet()
    before = counter(busy)
    kwargs = {"data": body, "content_type": "application/json"} if isinstance(body, bytes) else {"json": body}
    response = getattr(client.client, method)(f"/api/v1{path}", headers=client._headers(None), **kwargs)

    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    assert set(error) == {"code", "message", "details"}
    assert counter(busy) == before


def test_definition_errors_name_the_problem(api):
    response = api.put("/workflows/cyclic2", json={"name": "c", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "needs": ["b"]},
        {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"]},
        {"id": "a", "type": "teleport"}]})
    problems = response.get_json()["error"]["details"]["problems"]
    assert any("unknown step type 'teleport'" in p for p in problems)


def test_body_over_the_limit_is_413(api, counter):
    busy = counter.quiet()
    before = counter(busy)
    response = api.post("/runs", data=b'{"x": "' + b"a" * (1024 * 1024 + 10) + b'"}', content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert counter(busy) == before


def test_idempotency_key_returns_the_same_run_and_refuses_a_different_body(api, workflow, counter):
    key = {"Idempotency-Key": unique("key")}
    body = {"workflow_id": workflow, "input": {"ticket": "once"}}
    first = api.post("/runs", json=body, headers=key)
    assert first.status_code == 201
    busy = counter.quiet()
    before = counter(busy)
    again = api.post("/runs", json=body, headers=key)
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    different = api.post("/runs", json={**body, "input": {"ticket": "twice"}}, headers=key)
    assert different.status_code == 409 and different.get_json()["error"]["code"] == "idempotency_conflict"
    assert counter(busy) == before


def test_versions_are_immutable_and_runs_are_pinned(api):
    workflow_id = publish(api, GOOD)
    run_v1 = start(api, workflow_id, {"ticket": "v1"})
    second = api.put(f"/workflows/{workflow_id}", json={**GOOD, "name": "good v2"})
    assert second.status_code == 201 and second.get_json()["version"] == 2
    assert api.get(f"/runs/{run_v1}").get_json()["workflow"]["version"] == 1
    described = api.get(f"/workflows/{workflow_id}").get_json()
    assert described["version"] == 2 and [v["version"] for v in described["versions"]] == [1, 2]
    assert api.get(f"/workflows/{workflow_id}/versions/1").get_json()["definition"]["name"] == "good"
    pinned = api.post("/runs", json={"workflow_id": workflow_id, "version": 1, "input": {"ticket": "x"}})
    assert pinned.get_json()["workflow"] == {"id": workflow_id, "version": 1, "name": "good v2"}


def test_cursor_pagination_walks_every_run_once_newest_first(api):
    workflow_id = publish(api, GOOD)
    created = [start(api, workflow_id, {"ticket": str(i)}) for i in range(7)]
    seen, cursor = [], None
    while True:
        query = f"/runs?workflow_id={workflow_id}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(query).get_json()
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))


def test_lists_never_show_another_tenants_runs(api, tokens):
    mine = start(api, publish(api, GOOD), {"ticket": "mine"})
    theirs = other_tenant_run(api, tokens)
    listed = {r["id"] for r in api.get("/runs?limit=500").get_json()["runs"]}
    assert mine in listed and theirs not in listed
    assert all(w["id"] for w in api.get("/workflows").get_json()["workflows"])


def test_models_and_migrations_agree(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from orchestrator.db.models import Base

    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_health_and_readiness_need_no_token(api):
    assert api.as_(None).get("/healthz").status_code == 200
    assert api.as_(None).get("/readyz").get_json() == {"status": "ready"}
