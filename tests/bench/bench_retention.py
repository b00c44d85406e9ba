"""The retention sweep against many seeded terminal runs: rows/s deleted, and GET /runs meanwhile.

``section(bench)`` is `make bench`'s `retention` section (tests/bench/bench_engine.py): in the bench's
database, with its scheduler and worker running, it seeds 1,000,000 terminal runs that ended 40 days ago
(a step and five events each: 7,000,000 rows, with generate_series), and times GET /runs (through the
Flask app) and step-to-step (a sequential chain through the scheduler and the worker) with and without
the sweep, in alternating windows: without; the first half of the sweep (the scheduler restarted with
the default retention, 30 days: its own retention thread sweeps); without again (restarted with none);
the second half. It reports the sweep's rows/s and each figure's ratio, against a target of 1.5×.

``run(runs=…)`` creates a PostgreSQL database of its own on SWITCHYARD_TEST_PG_URL, migrates it, seeds
``runs`` such runs, times GET /runs before the sweep (the baseline), then runs the sweep
(orchestrator.retention.sweep) on a thread while it keeps timing GET /runs, and drops the database.
``python -m tests.bench.bench_retention [RUNS]`` does that from a shell (default 20,000).
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path
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


# make bench's retention section: the seeded runs' tenant (not the data section's), and the target ratio.
TENANT = "retention"
TARGET_RATIO = 1.5
SECTION_RUNS = 1_000_000
CHAIN_STEPS = 100


def section(bench, runs: int = SECTION_RUNS) -> dict[str, Any]:
    """`make bench`'s retention section (see the module's docstring); ``bench`` is tests.bench.bench_engine's
    Bench, with its scheduler and workers running. Adds its rows to the bench's table and returns the figures."""
    say = _say
    _restart_scheduler(bench, SWITCHYARD_RETENTION_DAYS="0")  # no sweep while seeding and timing the baseline
    say(f"retention: seeding {runs:,} terminal runs that ended 40 days ago (a step and 5 events each)")
    seeded_at = time.monotonic()
    seed_terminal_runs(bench.engine, tenant=TENANT, workflow_id="aged", count=runs, ended_days_ago=40)
    with bench.admin() as conn:
        conn.execute("VACUUM ANALYZE runs, steps, events")
    say(f"  seeded in {time.monotonic() - seeded_at:.0f}s")
    bench.publish("retention-chain", [{"id": f"s{i:03d}", "type": "tool", "tool": "echo", "args": {"text": "x"},
                                       **({"needs": [f"s{i - 1:03d}"]} if i else {})} for i in range(CHAIN_STEPS)])
    get_runs = _RunsPage(bench)
    # The same load with and without the sweep (GET /runs every 50 ms while the chain runs again and
    # again), in alternating windows, so that a machine whose load changes meanwhile weighs on both alike:
    # without, the first half of the sweep, without again (the sweep stopped), the rest of the sweep.
    without, during = _measure(bench, get_runs, lambda chains: chains < 3), {"get": [], "chain": []}
    swept_s = 0.0
    for half in (runs // 2, runs):
        if half == runs:
            _restart_scheduler(bench, SWITCHYARD_RETENTION_DAYS="0")
            _merge(without, _measure(bench, get_runs, lambda chains: chains < 3))
        # The sweep: the scheduler's own retention thread, which sweeps at its start (default settings).
        _restart_scheduler(bench)
        started = time.monotonic()
        _merge(during, _measure(bench, get_runs, lambda _chains, upto=half, since=started: _purged_runs(bench) < upto
                                and time.monotonic() - since < 7200))
        swept_s += time.monotonic() - started
        say(f"  swept {_purged_runs(bench):,} runs so far")
    say(f"  without a sweep: GET /runs p50 {statistics.median(without['get']):.1f} ms, "
        f"step-to-step p50 {statistics.median(without['chain']):.2f} ms")
    rows = bench.sql("SELECT coalesce(sum(rows), 0) FROM purged_rows WHERE tenant_id = :t", t=TENANT)[0][0]
    return _report(bench, without, during, runs=runs, rows=int(rows), swept_s=swept_s,
                   logged=_logged_rate(bench.folder / "scheduler.log"))


def _purged_runs(bench) -> int:
    """The seeded runs the sweep deleted so far (its own count, per table: no scan of the runs)."""
    return int(bench.sql("SELECT coalesce(sum(rows), 0) FROM purged_rows WHERE tenant_id = :t AND table_name = 'runs'",
                         t=TENANT)[0][0])


def _merge(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for key, values in more.items():
        into[key] += values


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _restart_scheduler(bench, **env: str) -> None:
    """Start the bench's scheduler again with ``env`` over the bench's environment."""
    bench.stop("scheduler")
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        bench.start("scheduler", [sys.executable, "-m", "orchestrator.cli", "scheduler"])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _RunsPage:
    """GET /runs?limit=50 of the seeded tenant, through the Flask app in this process."""

    def __init__(self, bench):
        from api import create_app
        from orchestrator.db import repository as repo
        from orchestrator.db.session import transaction

        with transaction(bench.sessions) as session:
            token = repo.create_token(session, TENANT, "viewer", "bench retention")[1]
        self.client = create_app(bench.settings).test_client()
        self.headers = {"Authorization": f"Bearer {token}"}
        self.time()  # warm-up

    def time(self) -> float:
        return _timed_get(self.client, "/api/v1/runs?limit=50", self.headers)

    def keep_timing(self, into: list[float], until: threading.Event) -> None:
        while not until.is_set():
            into.append(self.time())
            until.wait(0.05)


def _measure(bench, get_runs: _RunsPage, go_on) -> dict[str, list[float]]:
    """GET /runs timed every 50 ms on a thread while the chain runs again and again, as long as
    ``go_on(chains run so far)``: the requests' times and the chains' step-to-step gaps, in ms."""
    found: dict[str, list[float]] = {"get": [], "chain": []}
    done = threading.Event()
    poller = threading.Thread(target=get_runs.keep_timing, args=(found["get"], done), daemon=True)
    poller.start()
    try:
        chains = 0
        while go_on(chains):
            found["chain"] += _chain_gaps(bench, 1)
            chains += 1
    finally:
        done.set()
        poller.join()
    return found


def _chain_gaps(bench, chains: int) -> list[float]:
    """Run the chain ``chains`` times; the gaps between one step's end and the next one's start, in ms."""
    gaps = []
    for _ in range(chains):
        run_id = bench.start_run("retention-chain")
        bench.wait_runs("id = :id", 600, id=run_id)
        rows = bench.sql("SELECT started_at, completed_at FROM steps WHERE run_id = :id ORDER BY position", id=run_id)
        gaps += [(b[0] - a[1]).total_seconds() * 1000 for a, b in zip(rows, rows[1:], strict=False)]
    return gaps


def _logged_rate(log: Path) -> str | None:
    """The scheduler's own account of its last sweep (its JSON log line), if it wrote one."""
    found = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else ():
        if "retention sweep deleted" in line:
            try:
                found = json.loads(line).get("message", line)
            except ValueError:
                found = line
    return found


def _report(bench, before: dict, during: dict, *, runs: int, rows: int, swept_s: float,
            logged: str | None) -> dict[str, Any]:
    """The section's rows in the bench's table, and its figures."""
    figures = {"runs": runs, "rows": rows, "swept_s": swept_s, "rows_per_s": rows / max(swept_s, 1e-9),
               "last_sweep_logged": logged}
    bench.rows.append((f"retention sweep of {runs:,} runs ({rows:,} rows), default batches",
                       f"{figures['rows_per_s']:,.0f} rows/s ({swept_s:.0f} s)", "–", "–"))
    for key, label, unit in (("get", "GET /runs?limit=50 p50", "ms"), ("chain", "step-to-step p50", "ms")):
        without, meanwhile = statistics.median(before[key]), statistics.median(during[key] or [float("nan")])
        ratio = meanwhile / without
        figures[key] = {"without": without, "during": meanwhile, "ratio": ratio, "n": len(during[key])}
        verdict = "within" if ratio <= TARGET_RATIO else "over"
        bench.rows.append((f"{label}: without / during the sweep", f"{without:.2f} / {meanwhile:.2f} {unit}", "–",
                           f"{ratio:.2f}× ({verdict} {TARGET_RATIO}×)"))
    _say(f"  retention: {figures}")
    return figures


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
