"""The hot endpoints ask the database a fixed number of questions, however many steps or runs they answer
about (no N+1): SQL statements are counted on the app's engine with ``before_cursor_execute``."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import event

from tests.integration.conftest import publish, start, wait_run


@contextmanager
def counting(app):
    engine = app.extensions["switchyard"].sessions.kw["bind"]
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def queries(app, api, path: str) -> list[str]:
    api.get(path)  # warm: the first request may fill caches (tokens, definitions)
    with counting(app) as statements:
        response = api.get(path)
    assert response.status_code == 200, response.get_json()
    return statements


def fan(n: int) -> dict:
    steps = [{"id": f"s{i}", "type": "tool", "tool": "echo", "args": {"text": f"{i}"}} for i in range(n)]
    steps.append({"id": "join", "type": "tool", "tool": "echo", "args": {"text": "done"},
                  "needs": [s["id"] for s in steps]})
    return {"name": f"fan {n}", "steps": steps}


@pytest.fixture(scope="module")
def sizes(engine_processes, app, tokens):
    """For 5 and 50: a finished run of that many parallel steps and a join, and a workflow with that many runs."""
    from tests.integration.conftest import Api

    api = Api(app.test_client(), tokens["admin"])
    made = {}
    for n in (5, 50):
        run_id = start(api, publish(api, fan(n)))
        many = publish(api, {"name": f"one step, {n} runs", "steps": [
            {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}]})
        runs = [start(api, many) for _ in range(n)]
        made[n] = (run_id, many, runs)
    for run_id, _, runs in made.values():
        for rid in [run_id, *runs]:
            assert wait_run(api, rid, timeout=120)["status"] == "succeeded"
    return made


@pytest.mark.parametrize("path", [
    "/runs/{run}",
    "/runs/{run}/events",
    "/runs?workflow_id={workflow}&limit=100",
    "/runs?workflow_id={workflow}&status=succeeded&limit=100",
])
def test_hot_endpoint_query_count_does_not_grow_with_steps_or_runs(app, api, sizes, path):
    counts = {}
    for n, (run_id, workflow, _runs) in sizes.items():
        counts[n] = queries(app, api, path.format(run=run_id, workflow=workflow))
    small, large = counts[5], counts[50]
    assert len(large) == len(small), f"{path}: {len(small)} statements for 5, {len(large)} for 50:\n" + \
        "\n".join(large)
