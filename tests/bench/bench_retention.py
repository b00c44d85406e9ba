"""The retention sweep against many seeded terminal runs: rows/s deleted, and GET /runs meanwhile.

``run(runs=…)`` creates a PostgreSQL database of its own on SWITCHYARD_TEST_PG_URL, migrates it, seeds
``runs`` terminal runs that ended 40 days ago (a step and five events each, in SQL), times GET /runs
through the Flask app before the sweep (the baseline), then runs the sweep (orchestrator.retention.sweep)
on a thread while it keeps timing GET /runs, and drops the database. It returns the figures and prints
them. ``python -m tests.bench.bench_retention [RUNS]`` does the same from a shell (default 20,000).
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import threading
import time
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("SWITCHYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

SEED_WORKFLOW = """
INSERT INTO tenants (id, name, created_at) VALUES (:tenant, :tenant, now()) ON CONFLICT DO NOTHING;
INSERT INTO workflows (tenant_id, id, name, kind, latest_version, created_at, updated_at)
  VALUES (:tenant, :workflow, 'seeded', 'workflow', 1, now(), now()) ON CONFLICT DO NOTHING;
INSERT INTO workflow_versions (tenant_id, workflow_id, version, definition, created_at)
  VALUES (:tenant, :workflow, 1, '{"name": "seeded", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}', now())
  ON CONFLICT DO NOTHING;
"""
SEED_RUNS = """
INSERT INTO runs (id, tenant_id, workflow_id, workflow_version, status, input, usage, trigger_type, attempt,
                  has_work, last_seq, created_at, started_at, completed_at)
SELECT :prefix || lpad(i::text, 12, '0'), :tenant, :workflow, 1,
       CASE WHEN i % 10 < 8 THEN 'succeeded' WHEN i % 10 < 9 THEN 'failed' ELSE 'cancelled' END,
       '{}'::jsonb, '{"steps": 1}'::jsonb, 'api', 1, false, :events,
       now() - make_interval(days => :days) - interval '1 minute' - i * interval '1 millisecond',
       now() - make_interval(days => :days) - interval '1 minute' - i * interval '1 millisecond',
       now() - make_interval(days => :days) - i * interval '1 millisecond'
FROM generate_series(1, :count) AS i;
INSERT INTO steps (run_id, step_id, position, type, status, attempt, max_attempts, queue, cancel_requested,
                   output, queued_at, started_at, completed_at)
SELECT id, 'a', 0, 'tool', 'succeeded', 1, 3, 'steps', false, '{"text": "seeded"}'::jsonb, started_at, started_at,
       completed_at
FROM runs WHERE id LIKE :prefix || '%';
INSERT INTO events (run_id, seq, type, step_id, attempt, data, created_at)
SELECT r.id, s.seq, 'seeded', NULL, NULL, '{}'::jsonb, r.created_at
FROM runs r CROSS JOIN generate_series(1, :events) AS s(seq) WHERE r.id LIKE :prefix || '%';
"""


def seed_terminal_runs(engine, *, tenant: str, workflow_id: str, count: int, ended_days_ago: int,
                       events: int = 5) -> str:
    """Insert ``count`` terminal runs of ``workflow_id`` (created if missing) that ended ``ended_days_ago``
    days ago, each with one succeeded step and ``events`` events; PostgreSQL only. Returns their ids'
    common prefix (``run_<hex>``: ids of the store's shape)."""
    prefix = f"run_{secrets.token_hex(4)}"
    params = {"tenant": tenant, "workflow": workflow_id, "count": count, "days": ended_days_ago,
              "events": events, "prefix": prefix}
    with engine.begin() as conn:
        for statement in (SEED_WORKFLOW + SEED_RUNS).split(";"):
            if statement.strip():
                conn.execute(text(statement), {k: v for k, v in params.items() if f":{k}" in statement})
    return prefix


def _timed_get(client, path: str, headers: dict) -> float:
    started = time.perf_counter()
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return (time.perf_counter() - started) * 1000


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": statistics.median(values),
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def measure(settings, runs: int, *, batch: int = 500) -> dict[str, Any]:
    """Seed ``runs`` expired runs in ``settings``' database, then sweep them while timing GET /runs."""
    from api import create_app
    from orchestrator import retention
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    engine = make_engine(settings)
    print(f"seeding {runs} terminal runs (1 step, 5 events each)…", flush=True)
    seeded_at = time.monotonic()
    seed_terminal_runs(engine, tenant="bench", workflow_id="wf", count=runs, ended_days_ago=40)
    print(f"seeded in {time.monotonic() - seeded_at:.1f}s", flush=True)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        token = repo.create_token(session, "bench", "viewer", "bench")[1]
    client, headers = create_app(settings).test_client(), {"Authorization": f"Bearer {token}"}
    baseline = [_timed_get(client, "/api/v1/runs?limit=50", headers) for _ in range(50)]
    settings = settings.model_copy(update={"retention_batch": batch, "retention_days": 30})
    done: dict[str, Any] = {}
    sweeper = threading.Thread(target=lambda: done.update(totals=retention.sweep(sessions, settings)))
    sweeper.start()
    during = []
    while sweeper.is_alive():
        during.append(_timed_get(client, "/api/v1/runs?limit=50", headers))
        time.sleep(0.05)
    sweeper.join()
    totals = done["totals"]
    result = {"runs": totals.runs, "rows": totals.total_rows, "batches": totals.batches, "seconds": totals.seconds,
              "rows_per_s": totals.total_rows / max(totals.seconds, 1e-9), "get_runs_before": _summary(baseline),
              "get_runs_during": _summary(during) if during else None}
    print(f"swept {totals.runs} runs, {totals.total_rows} rows in {totals.batches} batches, {totals.seconds:.1f}s: "
          f"{result['rows_per_s']:.0f} rows/s; GET /runs p50 {result['get_runs_before']['p50_ms']:.1f} ms before, "
          f"{(result['get_runs_during'] or {}).get('p50_ms', float('nan')):.1f} ms during", flush=True)
    return result


def run(runs: int = 20_000, *, batch: int = 500) -> dict[str, Any]:
    """``measure`` in a database of its own on SWITCHYARD_TEST_PG_URL, dropped afterwards."""
    from orchestrator.db import migrate
    from orchestrator.settings import Settings

    name = f"switchyard_bench_retention_{secrets.token_hex(4)}"
    admin_url = make_url(PG_URL)
    libpq = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(database_url=admin_url.set(database=name).render_as_string(hide_password=False))
        migrate.upgrade(settings)
        return measure(settings, runs, batch=batch)
    finally:
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
