"""A step that holds no message and no worker takes no place in its queue's dispatch window: a for-each
step (its items hold the places) and a sub-workflow step (its child run's steps do) are `running` while
their items or child run, and counted as places they would fill a small window with steps that can
only end once the steps they keep out have run. Found by the PostgreSQL chaos scenario (1,000 runs,
window 32: 17 for-each and 16 sub-workflow steps `running` held every other message of the queue for
good). Real processes, on a stack of the test's own with a window of 2."""

from __future__ import annotations

import pytest

from tests.integration.conftest import publish, start, wait_for
from tests.integration.flow_stack import flow_stack

pytestmark = pytest.mark.integration

WINDOW, RUNS = 2, 4


def test_for_each_and_sub_workflow_steps_leave_the_window_to_the_steps_that_run(settings, artifacts):
    queue = "flow.holders"
    with flow_stack(settings, artifacts, tenants=("holders",), workers={"w": (queue, 4)},
                    windows={queue: WINDOW}) as stack:
        api = stack.api("holders")
        child = publish(api, {"name": "child", "steps": [
            {"id": "leaf", "type": "tool", "tool": "echo", "args": {}, "queue": queue}]})
        workflow = publish(api, {"name": "holders", "steps": [
            {"id": "items", "type": "tool", "tool": "echo", "for_each": "input.parts", "max_parallel": 1,
             "args": {"part": "{{ item }}"}, "queue": queue},
            {"id": "sub", "type": "workflow", "workflow_id": child, "input": {}, "queue": queue},
        ]})
        # More for-each and sub-workflow steps running at once than the window has places.
        run_ids = [start(api, workflow, {"parts": [0, 1, 2]}) for _ in range(RUNS)]

        def statuses() -> list[str]:
            return [api.get(f"/runs/{r}").get_json()["status"] for r in run_ids]

        wait_for(lambda: all(s in ("succeeded", "failed", "cancelled") for s in statuses()), 60,
                 f"{RUNS} runs with {2 * RUNS} for-each and sub-workflow steps to end through a window of {WINDOW}",
                 interval=0.2)
        assert statuses() == ["succeeded"] * RUNS


def test_the_window_statements_are_prepared_once_per_connection_and_completed_if_cut_short(database_url):
    """The publishers' check and the admission run prepared statements (planning them at every call took
    as much of PostgreSQL's time as running them). A connection has them prepared on its first use; one
    whose preparation was cut short (a PREPARE outlives its transaction) gets the ones it lacks."""
    import psycopg
    from psycopg import ClientCursor

    from orchestrator.db.repository import admission as rows
    from tests.integration.conftest import _libpq

    def prepared(connection) -> set[str]:
        return {name for (name,) in connection.execute(
            "SELECT name FROM pg_prepared_statements WHERE name LIKE 'switchyard_%'").fetchall()}

    with psycopg.connect(_libpq(database_url), autocommit=True) as connection:
        name, body = next(iter(rows._PREPARED_WINDOW_PG.items()))
        connection.execute(f"PREPARE {name}{body}")  # a preparation cut short after its first statement
        with ClientCursor(connection) as cursor:
            rows._prepare(cursor)
        assert prepared(connection) == set(rows._PREPARED_WINDOW_PG)
        with ClientCursor(connection) as cursor:
            rows._prepare(cursor)  # known prepared: nothing sent
            assert cursor.pgresult is None
        # The check runs: one message of a step that is not in the database passes an empty window.
        cursor = ClientCursor(connection)
        cursor.execute(rows._PASS_OR_HOLD_PG, {"queue": "nowhere", "window": 2, "outbox_ids": [1],
                                               "run_ids": ["run_x"], "step_ids": ["a"]})
        cursor.nextset()
        assert cursor.fetchone()[0] == 1
