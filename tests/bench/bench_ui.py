"""The web UI's run page rendered by the server (graph, timeline, step table, event log) for a seeded
run of 200 steps, each retried once (1,200 attempt events): ``time_run_page()`` for make bench, or
``python -m tests.bench.bench_ui`` on its own (exits 1 over the 300 ms budget).

Creates a PostgreSQL database of its own on SWITCHYARD_TEST_PG_URL (the tests' fresh_database: migrated,
dropped afterwards), seeds the run in SQL, signs in to the UI with a viewer token and times
GET /runs/{id} through the Flask app (median of several, after a warm-up). Not a test: timings depend
on the machine; the server's CPU time per render is reported beside the wall time.

``time_run_page(items=1000)`` does the same for a for-each run of 1,000 items (40 at a time), its
items collapsed in their step's row as the page opens.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("SWITCHYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BUDGET_MS = 300.0
RUN_ID = "run_" + "b" * 20


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _definition(steps: int) -> dict:
    """``steps`` echo steps in four chains from one root, rejoined at the end: a graph of many layers."""
    result = [{"id": "s000", "type": "tool", "tool": "echo", "args": {}}]
    for i in range(1, steps - 1):
        result.append({"id": f"s{i:03d}", "type": "tool", "tool": "echo", "args": {"i": i},
                       "needs": ["s000" if i <= 4 else f"s{i - 4:03d}"]})
    result.append({"id": "join", "type": "tool", "tool": "echo", "needs": [s["id"] for s in result[-4:]]})
    return {"name": f"bench {steps} steps", "steps": result}


def _definition_for_each(items: int) -> dict:
    return {"name": f"bench for-each of {items}", "steps": [
        {"id": "map", "type": "tool", "tool": "echo", "for_each": "input.items", "max_parallel": 40,
         "args": {"value": "{{ item }}"}},
        {"id": "after", "type": "tool", "tool": "echo", "needs": ["map"], "args": {}}]}


def _attempt_events(step_id: str, t: datetime, *, retried: bool) -> list[tuple]:
    """An attempt's events from ``t`` (queued, started, completed), after a failed first one if ``retried``."""
    events, attempt = [], 1
    if retried:
        error = {"code": "tool_failed", "message": "flaky 'bench' failure"}
        events += [("step_queued", step_id, 1, {}, t), ("step_started", step_id, 1, {"worker": "w1"}, t + timedelta(seconds=0.1)),
                   ("step_retrying", step_id, 1, {"error": error, "delay_s": 0.5, "next_attempt": 2}, t + timedelta(seconds=0.4))]
        t, attempt = t + timedelta(seconds=0.9), 2
    return events + [("step_queued", step_id, attempt, {}, t),
                     ("step_started", step_id, attempt, {"worker": "w1"}, t + timedelta(seconds=0.1)),
                     ("step_completed", step_id, attempt, {}, t + timedelta(seconds=0.4))]


def _seed(conn: psycopg.Connection, steps: int, items: int) -> int:
    """The tenant, workflow and a succeeded run: ``steps`` steps each failed once then retried, or (with
    ``items``) a for-each step over that many items then one step; returns the number of events."""
    definition = _definition_for_each(items) if items else _definition(steps)
    start = datetime.now(UTC) - timedelta(minutes=10)
    conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ('bench', 'bench', now())")
    conn.execute("INSERT INTO workflows (tenant_id, id, name, kind, latest_version, created_at, updated_at) "
                 "VALUES ('bench', 'wf', 'bench', 'workflow', 1, now(), now())")
    conn.execute("INSERT INTO workflow_versions (tenant_id, workflow_id, version, definition, created_at) "
                 "VALUES ('bench', 'wf', 1, %s, now())", (Jsonb(definition),))
    step_rows, events = [], [("run_created", None, None, {}, start), ("run_started", None, None, {}, start)]
    t = start
    for position, step in enumerate(definition["steps"]):
        if "for_each" in step:
            events.append(("step_started", step["id"], 1, {"items": items}, t))
            for index in range(items):  # 40 at a time
                item_at = t + timedelta(seconds=0.5 * (index // 40))
                events += _attempt_events(f"{step['id']}[{index}]", item_at, retried=False)
                step_rows.append((f"{step['id']}[{index}]", position, item_at, step["id"], index))
            t += timedelta(seconds=0.5 * (items // 40 + 1))
            events.append(("step_completed", step["id"], 1, {}, t))
            step_rows.append((step["id"], position, t, None, None))
            continue
        events += _attempt_events(step["id"], t, retried=not items)
        step_rows.append((step["id"], position, t, None, None))
        t = events[-1][4] + timedelta(seconds=0.3)
    events.append(("run_succeeded", None, None, {}, t))
    _insert(conn, step_rows, events, start, t)
    return len(events)


def _insert(conn: psycopg.Connection, step_rows: list[tuple], events: list[tuple], start: datetime, end: datetime) -> None:
    conn.execute(
        "INSERT INTO runs (id, tenant_id, workflow_id, workflow_version, status, input, usage, trigger_type, attempt,"
        " has_work, last_seq, created_at, started_at, completed_at) VALUES (%s, 'bench', 'wf', 1, 'succeeded', '{}',"
        " %s, 'api', 1, false, %s, %s, %s, %s)",
        (RUN_ID, Jsonb({"steps": len(step_rows), "tool_calls": len(step_rows), "llm_calls": 0, "tokens_in": 0,
                        "tokens_out": 0, "credits": len(step_rows)}), len(events), start, start, end))
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO steps (run_id, step_id, position, type, status, attempt, max_attempts, queue, cancel_requested,"
            " queued_at, started_at, completed_at, output, item_of, item_index) VALUES (%s, %s, %s, 'tool', 'succeeded',"
            " 1, 3, 'steps', false, %s, %s, %s, %s, %s, %s)",
            [(RUN_ID, step_id, position, at, at, at, Jsonb({"echo": step_id}), item_of, index)
             for step_id, position, at, item_of, index in step_rows])
        cursor.executemany(
            "INSERT INTO events (run_id, seq, type, step_id, attempt, data, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(RUN_ID, seq, kind, step_id, attempt, Jsonb(data), at)
             for seq, (kind, step_id, attempt, data, at) in enumerate(events, start=1)])
    conn.execute("ANALYZE")


def _signed_in_client(settings):
    """A test client of the app signed in to the web UI with a viewer token of the seeded tenant."""
    from api import create_app
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, "bench", "viewer", "bench ui")[1]
    client = create_app(settings).test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/sign-in").get_data(as_text=True)).group(1)
    assert client.post("/sign-in", data={"token": token, "csrf_token": csrf}).status_code == 302
    return client


def time_run_page(steps: int = 200, items: int = 0, repeats: int = 9) -> dict:
    """Seed a run in a database of its own, of ``steps`` steps each retried once or (``items``) a for-each
    over that many items, and time the UI's render of its page (timeline included); {"steps", "items",
    "events", "median_ms", "min_ms", "max_ms", "cpu_median_ms" (the server process's CPU time: the
    database's share is not in it), "budget_ms", "bytes"}."""
    from orchestrator.settings import Settings
    from tests.integration.conftest import fresh_database

    with fresh_database("switchyard_bench_ui") as url:
        settings = Settings(database_url=url, broker_url="redis://127.0.0.1:6379/15")
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            events = _seed(conn, steps, items)
        client = _signed_in_client(settings)
        page = client.get(f"/runs/{RUN_ID}")  # warm-up (templates compiled, connections opened)
        assert page.status_code == 200 and 'class="timeline"' in page.get_data(as_text=True), page.status_code
        took, cpu = [], []
        for _ in range(repeats):
            started, started_cpu = time.perf_counter(), time.process_time()
            page = client.get(f"/runs/{RUN_ID}")
            took.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)  # this process's share: steadier on a busy machine
            assert page.status_code == 200
        return {"steps": 2 if items else steps, "items": items, "events": events,
                "median_ms": round(statistics.median(took), 1), "min_ms": round(min(took), 1),
                "max_ms": round(max(took), 1), "cpu_median_ms": round(statistics.median(cpu), 1),
                "budget_ms": BUDGET_MS, "bytes": len(page.get_data())}


def main() -> int:
    over = []
    for label, shape in (("a 200-step run (each step retried once)", {"steps": 200}),
                         ("a for-each run of 1,000 items", {"items": 1000})):
        print(f"==> seeding {label} and timing GET /runs/{{id}} of the web UI")
        result = time_run_page(**shape)
        print(json.dumps(result))
        if result["median_ms"] > BUDGET_MS:
            over.append(label)
    if over:
        print(f"over the {BUDGET_MS:.0f} ms budget: {over}; make the run page cheaper (api/ui/views.py run)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
