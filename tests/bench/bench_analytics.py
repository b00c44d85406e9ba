"""`make bench-analytics`: GET /analytics/summary and GET /runs?status=failed against 1,000,000 seeded runs.

Creates a PostgreSQL database of its own on SWITCHYARD_TEST_PG_URL, migrates it, seeds one tenant with
a million runs over 30 days (and one finished step each) in SQL, then times each request through the
Flask app (median of several, after a warm-up) and drops the database. Exits 1 if a median is over
the budget (100 ms). Not a test: timings depend on the machine.
"""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import time

import psycopg
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("SWITCHYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RUNS = int(os.environ.get("BENCH_RUNS", "1000000"))
BUDGET_MS = 100.0
# (label, path, held to the budget): a wider window reads more rows, so 7 days is shown, not held.
REQUESTS = [
    ("GET /analytics/summary", "/api/v1/analytics/summary", True),
    ("GET /runs?status=failed", "/api/v1/runs?status=failed", True),
    ("GET /analytics/timeseries?metric=runs_failed&bucket=hour",
     "/api/v1/analytics/timeseries?metric=runs_failed&bucket=hour", True),
    ("GET /analytics/timeseries?metric=credits&bucket=hour", "/api/v1/analytics/timeseries?metric=credits&bucket=hour",
     True),
    ("GET /analytics/summary?since=7d", "/api/v1/analytics/summary?since=7d", False),
    # Metrics aggregate every step and the error events at each scrape (README "Prometheus metrics").
    ("GET /metrics (a viewer token)", "/api/v1/metrics", False),
]

SEED = """
INSERT INTO tenants (id, name, created_at) VALUES ('bench', 'bench', now());
INSERT INTO workflows (tenant_id, id, name, kind, latest_version, created_at, updated_at)
  VALUES ('bench', 'wf', 'bench', 'workflow', 1, now(), now());
INSERT INTO workflow_versions (tenant_id, workflow_id, version, definition, created_at)
  VALUES ('bench', 'wf', 1, '{"name": "bench", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}', now());
INSERT INTO runs (id, tenant_id, workflow_id, workflow_version, status, input, usage, trigger_type, attempt,
                  has_work, last_seq, created_at, started_at, completed_at)
SELECT 'run_' || lpad(i::text, 20, '0'), 'bench', 'wf', 1,
       CASE WHEN i % 1000 < 900 THEN 'succeeded' WHEN i % 1000 < 950 THEN 'failed'
            WHEN i % 1000 < 999 THEN 'cancelled' ELSE 'running' END,
       '{}'::jsonb,
       jsonb_build_object('steps', 1, 'tool_calls', 1, 'llm_calls', 1, 'tokens_in', 100, 'tokens_out', 50,
                          'credits', 0.25),
       'api', 1, false, 3,
       now() - (i * interval '30 days' / %(runs)s),
       now() - (i * interval '30 days' / %(runs)s) + interval '1 second',
       CASE WHEN i % 1000 < 999 THEN now() - (i * interval '30 days' / %(runs)s) + interval '3 seconds' END
FROM generate_series(1, %(runs)s) AS i;
INSERT INTO steps (run_id, step_id, position, type, status, attempt, max_attempts, queue, cancel_requested,
                   queued_at, started_at, completed_at)
SELECT id, 'a', 0, 'tool', CASE WHEN status = 'running' THEN 'running' ELSE 'succeeded' END, 1, 3, 'steps', false,
       started_at, started_at + interval '10 milliseconds', completed_at
FROM runs;
"""


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def main() -> int:
    from api import create_app
    from orchestrator.db import migrate
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction
    from orchestrator.settings import Settings

    name = f"switchyard_bench_{secrets.token_hex(3)}"
    admin = psycopg.connect(_libpq(PG_URL), autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        settings = Settings(database_url=url, broker_url="redis://127.0.0.1:6379/15")
        migrate.upgrade(settings)
        started = time.monotonic()
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute(SEED.replace("%(runs)s", str(RUNS)))
            # What autovacuum does soon after a load in production: statistics, and the visibility map
            # that lets the index-only scans skip the table.
            conn.execute("VACUUM ANALYZE")
        print(f"seeded {RUNS:,} runs and steps in {time.monotonic() - started:.1f}s")
        with transaction(make_sessionmaker(make_engine(settings))) as session:
            token = repo.create_token(session, "bench", "viewer")[1]
        client = create_app(settings).test_client()
        headers = {"Authorization": f"Bearer {token}"}
        over = []
        for label, path, held in REQUESTS:
            assert client.get(path, headers=headers).status_code == 200, label  # warm-up
            times = []
            for _ in range(9):
                t = time.perf_counter()
                response = client.get(path, headers=headers)
                times.append((time.perf_counter() - t) * 1000)
                assert response.status_code == 200, response.get_data(as_text=True)
            median = statistics.median(times)
            print(f"{label:60s} median {median:7.1f} ms   (min {min(times):.1f}, max {max(times):.1f})"
                  f"{'' if held else '   (not held to the budget)'}")
            if held and median > BUDGET_MS:
                over.append(label)
        if over:
            print(f"over the {BUDGET_MS:.0f} ms budget: {over}")
            return 1
        return 0
    finally:
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"kept the database {name}")
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
