"""`make bench`: Switchyard against a raw Celery baseline, in one run, on the same broker.

Creates a PostgreSQL database and claims a Redis db of its own, starts real worker processes (the same
count and pool for Switchyard and for the raw Celery app of tests/bench/raw_app.py) and a scheduler,
runs each benchmark, prints a table and writes BENCHMARKS.md. Not a test: no figure here fails a build.

    python -m tests.bench.bench_engine [--steps 20000] [--workers 1 --concurrency 2] [--runs 1000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from celery import chain
from sqlalchemy import text

from tests.bench import census
from tests.bench.bench_analytics import SEED, _libpq
from tests.integration.conftest import PG_URL, REDIS_URL, claimed_redis_db, fresh_database

ROOT = Path(__file__).resolve().parents[2]
TENANT = "perf"
# The names tests/bench/raw_app.py uses (not imported: that module builds its app from the environment).
RAW_QUEUE, CHAIN_KEY = "bench.raw", "bench:chain"
COUNT_KEY, FIRST_KEY, LAST_KEY = "bench:noop:count", "bench:noop:first", "bench:noop:last"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Bench:
    """The database, broker and processes of one `make bench`, and the figures it collects."""

    def __init__(self, args, database_url: str, broker_url: str, folder: Path):
        from orchestrator import broker
        from orchestrator.db.session import make_engine, make_sessionmaker
        from orchestrator.settings import Settings

        self.args, self.folder = args, folder
        self.settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=folder / "data",
                                 max_steps_per_definition=2000, rate_limit_per_min=0, log_format="json")
        self.engine = make_engine(self.settings)
        self.sessions = make_sessionmaker(self.engine)
        self.celery = broker.make_celery(self.settings)
        self.doorbell = broker.Doorbell(self.celery, self.settings.wake_queue)
        self.redis = redis.Redis.from_url(broker_url)
        self.procs: dict[str, subprocess.Popen] = {}
        self.rows: list[tuple[str, str, str, str]] = []  # (figure, switchyard, raw celery, ratio)
        self.notes: dict[str, object] = {}

    # --- processes -----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        s = self.settings
        return {**os.environ, "SWITCHYARD_DATABASE_URL": s.database_url, "SWITCHYARD_BROKER_URL": s.broker_url,
                "SWITCHYARD_DATA_DIR": str(s.data_dir), "SWITCHYARD_MAX_STEPS_PER_DEFINITION": "2000",
                "SWITCHYARD_RATE_LIMIT_PER_MIN": "0", "SWITCHYARD_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def start_workers(self, prefix: str, argv: list[str]) -> None:
        a = self.args
        for i in range(a.workers):
            self.start(f"{prefix}{i}", [*argv, f"--concurrency={a.concurrency}", "--pool=prefork",
                                        "--loglevel=WARNING"])
        deadline = time.monotonic() + 60
        while len(self.celery.control.ping(timeout=0.5)) < self.live_workers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{prefix} workers did not answer ping; see {self.folder}")

    def live_workers(self) -> int:
        return sum(1 for n in self.procs if n.startswith(("sy-worker", "raw-worker")))

    def start_switchyard(self) -> None:
        self.start("scheduler", [sys.executable, "-m", "orchestrator.cli", "scheduler"])
        self.start_workers("sy-worker", [sys.executable, "-m", "orchestrator.cli", "worker"])

    def start_raw(self) -> None:
        self.start_workers("raw-worker", [sys.executable, "-m", "celery", "--app", "tests.bench.raw_app",
                                          "worker", "--queues=bench.raw", f"--hostname=raw-{os.getpid()}@%h"])

    def stop_raw(self) -> None:
        for name in [n for n in self.procs if n.startswith("raw-worker")]:
            self.stop(name)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    # --- helpers -------------------------------------------------------------------------------

    def publish(self, workflow_id: str, steps: list[dict]) -> None:
        from orchestrator import service
        from orchestrator.db.session import transaction

        with transaction(self.sessions) as session:
            service.publish_workflow(session, self.settings, TENANT, workflow_id,
                                     {"name": workflow_id, "steps": steps})

    def start_run(self, workflow_id: str, run_input: dict | None = None) -> str:
        from orchestrator import service
        from orchestrator.db.session import transaction

        with transaction(self.sessions) as session:
            run = service.start_run(session, self.settings, TENANT, workflow_id, run_input or {}).run
            run_id = run.id
        self.doorbell.ring("bench")
        return run_id

    def admin(self) -> psycopg.Connection:
        """A psycopg connection to the bench's database in autocommit (VACUUM needs one)."""
        return psycopg.connect(_libpq(self.settings.database_url), autocommit=True)

    def sql(self, query: str, **params):
        with self.engine.connect() as conn:
            result = conn.execute(text(query), params).all()
            conn.commit()
            return result

    def wait_runs(self, where: str, timeout: float, poll_s: float = 0.1, **params) -> None:
        """Until no run ``where`` is unfinished. Asks for one unfinished run through the tenant-status
        index: the bench's own polling must not cost the database it measures (counting a 4,000-run
        round's runs ten times a second took a fifth of PostgreSQL's CPU in the throughput run)."""
        from orchestrator.states import TERMINAL_RUN, RunStatus

        deadline = time.monotonic() + timeout
        unfinished = ", ".join(f"'{s}'" for s in RunStatus if s not in TERMINAL_RUN)
        while self.sql(f"SELECT 1 FROM runs WHERE tenant_id = :tenant AND status IN ({unfinished}) AND {where} "
                       "LIMIT 1", tenant=TENANT, **params):
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs ({where}) did not finish in {timeout}s")
            time.sleep(poll_s)

    def row(self, figure: str, ours: float | None, raw: float | None, unit: str, fmt: str = "{:.1f}") -> None:
        ratio = f"{ours / raw:.2f}×" if ours is not None and raw else "–"
        self.rows.append((figure, f"{fmt.format(ours)} {unit}" if ours is not None else "–",
                          f"{fmt.format(raw)} {unit}" if raw is not None else "–", ratio))
        say(f"  {figure}: switchyard {self.rows[-1][1]}, raw celery {self.rows[-1][2]}, ratio {ratio}")

    # --- the benchmarks ------------------------------------------------------------------------

    def step_to_step(self) -> None:
        n = 200
        say(f"step-to-step: a {n}-step sequential workflow, then a raw Celery chain of {n} tasks")
        steps = [{"id": f"s{i:03d}", "type": "tool", "tool": "echo", "args": {"text": "x"},
                  **({"needs": [f"s{i - 1:03d}"]} if i else {})} for i in range(n)]
        self.publish("chain", steps)
        run_id = self.start_run("chain")
        self.wait_runs("id = :id", 300, id=run_id)
        rows = self.sql("SELECT status, started_at, completed_at FROM steps WHERE run_id = :id ORDER BY position",
                        id=run_id)
        assert all(r[0] == "succeeded" for r in rows), "a step of the chain did not succeed"
        ours = [(b[1] - a[2]).total_seconds() * 1000 for a, b in zip(rows, rows[1:], strict=False)]
        self.redis.delete(CHAIN_KEY)
        self.start_raw()
        chain(*[self.celery.signature("bench.link", args=(i,), immutable=True, queue=RAW_QUEUE)
                for i in range(n)]).apply_async()
        deadline = time.monotonic() + 120
        while self.redis.llen(CHAIN_KEY) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the raw chain did not finish")
            time.sleep(0.05)
        self.stop_raw()
        links = sorted((int(i), float(s), float(e)) for i, s, e in
                       (x.decode().split() for x in self.redis.lrange(CHAIN_KEY, 0, -1)))
        raw = [(b[1] - a[2]) * 1000 for a, b in zip(links, links[1:], strict=False)]
        self.row("step-to-step p50", statistics.median(ours), statistics.median(raw), "ms", "{:.2f}")
        self.row("step-to-step p99", pct(ours, 99), pct(raw, 99), "ms", "{:.2f}")
        self.notes["chain_total_s"] = (rows[-1][2] - rows[0][1]).total_seconds()

    def throughput(self) -> None:
        n, rounds = self.args.steps, self.args.rounds
        sizes = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
        say(f"throughput: {n:,} one-step runs and {n:,} raw Celery no-op tasks, in {rounds} alternating rounds")
        self.publish("one", [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}])
        # Alternating rounds give both sides the same share of a host whose speed drifts over minutes
        # (a shared VM: the same work took a quarter longer from one minute to the next).
        ours_s = raw_s = 0.0
        ours_cpu, raw_cpu, commits, ratios, steady = CpuTally(), CpuTally(), 0, [], []
        for r, size in enumerate(sizes):
            ours, raw = self._throughput_ours(r, size), self._throughput_raw(size, last=r == rounds - 1)
            ours_s, raw_s, commits = ours_s + ours.seconds, raw_s + raw.seconds, commits + ours.commits
            ours_cpu.add(ours.cpu, ours.cpu_steps)
            raw_cpu.add(raw.cpu, raw.cpu_steps)
            ratios.append(raw.seconds / ours.seconds)
            steady.append(ours.steady_rate)
            say(f"  round {r + 1}/{rounds}: switchyard {size / ours.seconds:.0f} steps/s ({ours.steady_rate:.0f} in "
                f"its steady state), raw celery {size / raw.seconds:.0f} tasks/s, ratio {ratios[-1]:.2f}")
        self.notes["cpu_switchyard"], self.notes["cpu_raw"] = ours_cpu.per_step(), raw_cpu.per_step()
        self.notes["commits_per_step"] = commits / n
        self.notes["throughput_rounds"] = ", ".join(f"{x:.2f}" for x in ratios)
        self.row(f"throughput ({n:,} no-op steps)", n / ours_s, n / raw_s, "steps/s", "{:.0f}")
        self.row(f"throughput, steady state (the last {STEADY_SHARE:.0%} of each round's runs)",
                 statistics.median(steady), None, "steps/s", "{:.0f}")
        say(f"  CPU per step, Switchyard: {cpu_line(self.notes['cpu_switchyard'])}")
        say(f"  CPU per step, raw Celery: {cpu_line(self.notes['cpu_raw'])}")

    def _throughput_ours(self, round_: int, size: int) -> Round:
        """One round of one-step runs, timed from their release to the last one's end. They are seeded
        beforehand, as `queued` with no work flagged."""
        prefix = f"run_tp{round_:02d}_"
        with self.admin() as conn:
            for statement in THROUGHPUT_SEED.split(";")[:2]:
                conn.execute(statement, {"n": size, "tenant": TENANT, "prefix": prefix})
            tidy_tables(conn)
            commits0 = _commits(conn)
            cpu = CpuSplit(self.switchyard_roles)
            t0 = conn.execute("UPDATE runs SET has_work = true WHERE workflow_id = 'one' AND id LIKE %(p)s "
                              "RETURNING now()", {"p": prefix + "%"}).fetchone()[0]
        self.doorbell.ring("bench")
        # Timed by the database (the last completed_at), so polling twice a second loses nothing.
        self.wait_runs("workflow_id = 'one' AND id LIKE :p", 3600, poll_s=0.5, p=prefix + "%")
        spent = cpu.spent()
        with self.admin() as conn:
            commits = _commits(conn) - commits0
            end, ok = conn.execute("SELECT max(completed_at), count(*) FILTER (WHERE status = 'succeeded') FROM runs "
                                   "WHERE workflow_id = 'one' AND id LIKE %(p)s", {"p": prefix + "%"}).fetchone()
        assert ok == size, f"only {ok} of {size} throughput runs succeeded"
        self.memory("switchyard")
        return Round((end - t0).total_seconds(), spent, size, commits, self._steady_rate(prefix, size, t0))

    def _steady_rate(self, prefix: str, size: int, t0) -> float:
        """Steps/s over the round's last STEADY_SHARE of runs (by completion): after the scheduler's first
        passes over the released runs, which take the CPU the workers would use (a flood's first second
        or two runs at about 60 % of the rate after it, on 2 cores). Also says when each share of the
        round was done (from the release at ``t0``): whether a gap between two codes is in the flood's
        first passes or spread over the round."""
        with self.admin() as conn:
            ends = [row[0] for row in conn.execute(
                "SELECT completed_at FROM runs WHERE workflow_id = 'one' AND id LIKE %(p)s ORDER BY completed_at",
                {"p": prefix + "%"})]
        say("    done by share of the round: " + ", ".join(
            f"{share:.0%} at {(ends[min(int(size * share), size) - 1] - t0).total_seconds():.2f} s"
            for share in (0.1, 0.3, 0.8, 1.0)))
        first = int(size * (1 - STEADY_SHARE))
        return (size - 1 - first) / max((ends[-1] - ends[first]).total_seconds(), 1e-6)

    def _throughput_raw(self, size: int, last: bool) -> Round:
        """One round of raw Celery no-op tasks, queued before the worker starts, timed from the first
        one's start to the last one's end."""
        self.redis.delete(COUNT_KEY, FIRST_KEY, LAST_KEY)
        with self.celery.producer_or_acquire() as producer:
            for _ in range(size):
                self.celery.send_task("bench.noop", queue=RAW_QUEUE, producer=producer)
        self.start_raw()
        deadline = time.monotonic() + 1800
        done_at_start, cpu = None, None
        while (done := int(self.redis.get(COUNT_KEY) or 0)) < size:
            if time.monotonic() > deadline:
                raise RuntimeError("the raw no-op tasks did not finish")
            if cpu is None and done:  # from the first task on: the workers' start-up is not per-task work
                done_at_start, cpu = done, CpuSplit(self.raw_roles)
            time.sleep(0.1)
        spent = cpu.spent() if cpu is not None else ({}, 0.0)
        took = float(self.redis.get(LAST_KEY)) - float(self.redis.get(FIRST_KEY))
        if last:
            self.memory("raw")
        self.stop_raw()
        return Round(took, spent, size - (done_at_start or size))

    def switchyard_roles(self) -> dict[str, list[int]]:
        mains = [p.pid for name, p in self.procs.items() if name.startswith("sy-worker")]
        return {"worker main": mains, "pool children": [c for m in mains for c in _children(m, none=[])],
                "scheduler": [self.procs["scheduler"].pid], **_services()}

    def raw_roles(self) -> dict[str, list[int]]:
        mains = [p.pid for name, p in self.procs.items() if name.startswith("raw-worker")]
        return {"worker main": mains, "pool children": [c for m in mains for c in _children(m, none=[])],
                **_services()}

    def memory(self, which: str) -> None:
        if which == "switchyard":
            self.notes["rss_scheduler_mb"] = _rss_mb(self.procs["scheduler"].pid)
            self.notes["rss_worker_main_mb"] = _rss_mb(self.procs["sy-worker0"].pid)
            self.notes["rss_worker_child_mb"] = _rss_mb(_children(self.procs["sy-worker0"].pid)[0])
        else:
            self.notes["rss_raw_worker_main_mb"] = _rss_mb(self.procs["raw-worker0"].pid)
            self.notes["rss_raw_worker_child_mb"] = _rss_mb(_children(self.procs["raw-worker0"].pid)[0])

    def fan_out(self) -> None:
        n = 1000
        say(f"fan-out: one run of {n} parallel steps and a join")
        steps = [{"id": f"p{i:04d}", "type": "tool", "tool": "echo", "args": {"text": "x"}} for i in range(n)]
        steps.append({"id": "join", "type": "tool", "tool": "echo", "args": {"text": "done"},
                      "needs": [s["id"] for s in steps]})
        self.publish("fan", steps)
        with self.admin() as conn:
            tidy_tables(conn)
        pid = self.procs["scheduler"].pid
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        run_id = self.start_run("fan")
        self.wait_runs("id = :id", 900, id=run_id)
        cpu = _cpu_s(pid) - cpu0
        status, wall = self.sql("SELECT status, extract(epoch FROM completed_at - created_at) FROM runs "
                                "WHERE id = :id", id=run_id)[0]
        succeeded = self.sql("SELECT count(*) FROM steps WHERE run_id = :id AND status = 'succeeded' "
                             "AND attempt = 1", id=run_id)[0][0]
        join_starts = self.sql("SELECT count(*) FROM events WHERE run_id = :id AND step_id = 'join' "
                               "AND type = 'step_started'", id=run_id)[0][0]
        self.notes["fan_out"] = dict(status=status, wall_s=float(wall), scheduler_cpu_s=cpu, succeeded=succeeded,
                                     steps=n + 1, join_started=join_starts, measured_s=time.monotonic() - t0)
        self.rows.append((f"fan-out {n} + join: wall", f"{float(wall):.2f} s", "–", "–"))
        self.rows.append(("fan-out: scheduler CPU", f"{cpu:.2f} s", "–", "–"))
        self.rows.append(("fan-out: steps succeeded / join runs", f"{succeeded}/{n + 1}, join ran {join_starts}×",
                          "–", "–"))
        say(f"  fan-out: {self.notes['fan_out']}")

    def for_each(self) -> None:
        n, parallel = 1000, 40
        say(f"for-each: one run of a step over {n} items, {parallel} at a time")
        self.publish("map", [{"id": "each", "type": "tool", "tool": "echo", "args": {"n": "{{ item }}"},
                              "for_each": "input.numbers", "max_parallel": parallel}])
        with self.admin() as conn:
            tidy_tables(conn)
        pid = self.procs["scheduler"].pid
        cpu0 = _cpu_s(pid)
        run_id = self.start_run("map", {"numbers": list(range(n))})
        self.wait_runs("id = :id", 900, id=run_id)
        cpu = _cpu_s(pid) - cpu0
        status, wall = self.sql("SELECT status, extract(epoch FROM completed_at - created_at) FROM runs "
                                "WHERE id = :id", id=run_id)[0]
        once = self.sql("SELECT count(DISTINCT step_id), count(*) FROM events WHERE run_id = :id "
                        "AND type = 'step_completed' AND step_id IN (SELECT step_id FROM steps WHERE run_id = :id "
                        "AND item_of = 'each')", id=run_id)[0]
        self.notes["for_each"] = dict(status=status, wall_s=float(wall), scheduler_cpu_s=cpu, items_completed=once[1],
                                      distinct_items=once[0])
        self.rows.append((f"for-each {n} items, {parallel} at a time: wall", f"{float(wall):.2f} s", "–", "–"))
        self.rows.append(("for-each: scheduler CPU", f"{cpu:.2f} s", "–", "–"))
        self.rows.append(("for-each: items completed / distinct", f"{once[1]}/{once[0]}", "–", "–"))
        say(f"  for-each: {self.notes['for_each']}")

    def sub_runs(self) -> None:
        levels = 10
        say(f"sub-runs: a chain of {levels} levels, each run's one step a child run of the next level's workflow")
        self.publish("level0", [{"id": "leaf", "type": "tool", "tool": "echo", "args": {"depth": levels}}])
        for level in range(1, levels):
            self.publish(f"level{level}", [{"id": "call", "type": "workflow", "workflow_id": f"level{level - 1}"}])
        run_id = self.start_run(f"level{levels - 1}")
        self.wait_runs("id = :id", 600, id=run_id)
        status, wall = self.sql("SELECT status, extract(epoch FROM completed_at - created_at) FROM runs "
                                "WHERE id = :id", id=run_id)[0]
        # Each level: from the parent's step starting to its child's start, and the child's end to the parent's.
        hops = self.sql("SELECT extract(epoch FROM c.created_at - s.started_at), "
                        "extract(epoch FROM s.completed_at - c.completed_at) FROM runs c JOIN steps s "
                        "ON s.run_id = c.parent_run_id AND s.step_id = c.parent_step_id WHERE c.tenant_id = :t "
                        "AND c.workflow_id LIKE 'level%%' AND c.created_at >= (SELECT created_at FROM runs "
                        "WHERE id = :id)", id=run_id, t=TENANT)
        down = [float(h[0]) * 1000 for h in hops]
        up = [float(h[1]) * 1000 for h in hops]
        self.notes["sub_runs"] = dict(status=status, wall_s=float(wall), levels=levels, hops=len(hops))
        self.rows.append((f"sub-runs: {levels}-level chain, submit → done", f"{float(wall):.2f} s", "–", "–"))
        if down:
            self.rows.append(("sub-runs: per level, parent step → child created (p50)",
                              f"{statistics.median(down):.1f} ms", "–", "–"))
            self.rows.append(("sub-runs: per level, child done → parent step done (p50)",
                              f"{statistics.median(up):.1f} ms", "–", "–"))
        say(f"  sub-runs: {self.notes['sub_runs']}")

    def ui_render(self) -> None:
        from tests.bench import bench_ui

        for label, shape in (("200-step run (each step retried once)", {"steps": 200}),
                             ("for-each run of 1,000 items", {"items": 1000})):
            say(f"web UI: timing the run page of a {label}")
            result = bench_ui.time_run_page(**shape)
            self.rows.append((f"web UI run page, {label}: render p50 (server CPU)",
                              f"{result['median_ms']:.0f} ms ({result['cpu_median_ms']:.0f} ms)",
                              f"budget {result['budget_ms']:.0f} ms", "–"))
            say(f"  {result}")

    def front(self) -> None:
        """What a user sees, through the API, against raw Celery and DBOS (tests/bench/bench_front.py)."""
        from tests.bench.bench_front import Front

        Front(self, rounds=self.args.front_rounds, burst=self.args.front_burst).run()

    def api(self) -> None:
        from orchestrator.db import repository as repo
        from orchestrator.db.session import transaction

        clients, per_client = 8, self.args.api_requests
        say(f"API: gunicorn on loopback, {clients} concurrent clients, {per_client} requests each")
        with transaction(self.sessions) as session:
            token = repo.create_token(session, TENANT, "operator", "bench")[1]
        port = 18000 + os.getpid() % 1000
        self.start("gunicorn", [sys.executable, "-m", "gunicorn", "--workers", str(self.args.api_workers),
                                "--bind", f"127.0.0.1:{port}", "api.wsgi:app"])
        base = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        _wait_http(f"{base}/healthz", headers)
        body = json.dumps({"workflow_id": "one", "input": {}}).encode()
        posts, created = _hammer(clients, per_client, lambda i: (f"{base}/runs", body), headers)
        ids = [json.loads(b)["id"] for b in created]
        gets, _ = _hammer(clients, per_client, lambda i: (f"{base}/runs/{ids[i % len(ids)]}", None), headers)
        self.stop("gunicorn")
        self.rows.append(("API POST /runs p50 / p99", f"{statistics.median(posts):.1f} / {pct(posts, 99):.1f} ms",
                          "–", "–"))
        self.rows.append(("API GET /runs/{id} p50 / p99", f"{statistics.median(gets):.1f} / {pct(gets, 99):.1f} ms",
                          "–", "–"))
        say(f"  POST p50 {statistics.median(posts):.1f} p99 {pct(posts, 99):.1f}; "
            f"GET p50 {statistics.median(gets):.1f} p99 {pct(gets, 99):.1f} ms")

    def monitoring(self) -> None:
        """GET /workers and GET /queues, one after the other, with two workers running: answered from the
        API's worker monitor (heartbeats, task events, a background inspect), not from the workers' replies."""
        from orchestrator.db import repository as repo
        from orchestrator.db.session import transaction

        n = 50
        extra = [f"sy-worker{i}" for i in range(self.args.workers, 2)]  # two workers, whatever --workers says
        for name in extra:
            self.start(name, [sys.executable, "-m", "orchestrator.cli", "worker", f"--concurrency={self.args.concurrency}",
                              "--pool=prefork", "--loglevel=WARNING"])
        with transaction(self.sessions) as session:
            token = repo.create_token(session, TENANT, "viewer", "bench monitoring")[1]
        port = 19000 + os.getpid() % 1000
        self.start("gunicorn-monitoring", [sys.executable, "-m", "gunicorn", "--workers", "1",
                                           "--bind", f"127.0.0.1:{port}", "api.wsgi:app"])
        base = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": f"Bearer {token}"}
        _wait_http(f"{base}/healthz", headers)
        deadline = time.monotonic() + 60
        while len(json.loads(_get(f"{base}/workers", headers))["workers"]) < 2:  # the monitor's first rounds
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET /workers did not list two workers; see {self.folder}")
            time.sleep(0.2)
        say(f"monitoring: {n} GET /workers and {n} GET /queues, one at a time, two workers running")
        for path in ("/workers", "/queues"):
            times = []
            for _ in range(n):
                t = time.perf_counter()
                _get(base + path, headers)
                times.append((time.perf_counter() - t) * 1000)
            self.rows.append((f"monitoring GET {path} p50 / p99 (2 workers)",
                              f"{statistics.median(times):.1f} / {pct(times, 99):.1f} ms", "–", "–"))
            say(f"  GET {path} p50 {statistics.median(times):.1f} p99 {pct(times, 99):.1f} ms")
        for name in ["gunicorn-monitoring", *extra]:
            self.stop(name)

    def data_scale(self) -> None:
        from api import create_app
        from orchestrator.db import repository as repo
        from orchestrator.db.session import transaction

        n = self.args.runs
        say(f"data scale: seeding {n:,} runs (and a step each) in SQL")
        started = time.monotonic()
        with self.admin() as conn:
            conn.execute(SEED.replace("%(runs)s", str(n)).replace("FROM runs;", "FROM runs WHERE tenant_id = 'bench';"))
            conn.execute("VACUUM ANALYZE")
        say(f"  seeded in {time.monotonic() - started:.0f}s")
        with transaction(self.sessions) as session:
            token = repo.create_token(session, "bench", "viewer")[1]
        client = create_app(self.settings).test_client()
        headers = {"Authorization": f"Bearer {token}"}
        first = client.get("/api/v1/runs?status=failed&limit=50", headers=headers).get_json()
        cursor = first["next_cursor"]
        for label, path, count in [
            ("GET /runs?status=failed&limit=50", "/api/v1/runs?status=failed&limit=50", 100),
            ("GET /runs?status=failed, next page", f"/api/v1/runs?status=failed&limit=50&cursor={cursor}", 100),
            ("GET /analytics/summary", "/api/v1/analytics/summary", 20),
        ]:
            client.get(path, headers=headers)  # warm-up
            times = []
            for _ in range(count):
                t = time.perf_counter()
                response = client.get(path, headers=headers)
                times.append((time.perf_counter() - t) * 1000)
                assert response.status_code == 200, response.get_data(as_text=True)
            self.rows.append((f"{label} @ {n:,} runs, p50 / p99", f"{statistics.median(times):.1f} / "
                              f"{pct(times, 99):.1f} ms", "–", "–"))
            say(f"  {label}: p50 {statistics.median(times):.1f} p99 {pct(times, 99):.1f} ms")

    def round_trips(self) -> None:
        say("round trips per step: one step through the claim, the outcome that queues the next step and its publish")
        self.notes["round_trips"] = census.count(self.settings, self.celery, TENANT)
        say(f"  {self.notes['round_trips']}")
        few, many = (census.item_outcome(self.settings, self.celery, TENANT, n) for n in (10, 1000))
        self.rows.append(("for-each: one item's outcome (10 items / 1,000 items)",
                          f"{few['sql statements']} / {many['sql statements']} statements", "–", "–"))
        say(f"  an item's outcome: {few} with 10 items, {many} with 1,000")

    def retention(self) -> None:
        """The retention sweep of 1,000,000 terminal runs, and GET /runs and step-to-step meanwhile
        (tests/bench/bench_retention.py)."""
        from tests.bench import bench_retention

        self.notes["retention"] = bench_retention.section(self)


# The throughput run's steady state: the last 60 % of a round's runs by completion, after its first passes.
STEADY_SHARE = 0.6

THROUGHPUT_SEED = """
INSERT INTO runs (id, tenant_id, workflow_id, workflow_version, status, input, usage, trigger_type, attempt,
                  has_work, last_seq, created_at)
SELECT %(prefix)s || lpad(i::text, 12, '0'), %(tenant)s, 'one', 1, 'queued', '{}'::jsonb,
       '{"steps": 0, "tool_calls": 0, "llm_calls": 0, "tokens_in": 0, "tokens_out": 0, "credits": 0}'::jsonb,
       'api', 1, false, 0, now()
FROM generate_series(1, %(n)s) AS i;
INSERT INTO steps (run_id, step_id, position, type, status, attempt, max_attempts, queue, cancel_requested)
SELECT id, 'a', 0, 'tool', 'pending', 0, 3, 'steps', false FROM runs WHERE id LIKE %(prefix)s || '%%';
"""


def tidy_tables(conn) -> None:
    """What autovacuum does on a production server, done before a timed phase: this machine's
    PostgreSQL runs with autovacuum off, so a bench database would never be analyzed and the planner
    would take a table of thousands of pending steps for one row (the scheduler's batched dispatch
    then compared every pending step with every key: 0.2 s a batch of 200 instead of 2 ms)."""
    conn.execute("VACUUM ANALYZE runs, steps, events, outbox")


def _commits(conn) -> int:
    return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int, none: list[int] | None = None) -> list[int]:
    """The child processes of ``pid``; ``none`` (by default [pid] itself) if it has none."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found) or ([pid] if none is None else none)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _services() -> dict[str, list[int]]:
    """Every PostgreSQL process (backends, and the server's own: a share of the machine's, not only of
    the bench's database) and the Redis server."""
    found: dict[str, list[int]] = {"PostgreSQL": [], "Redis": []}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        role = {"postgres": "PostgreSQL", "redis-server": "Redis"}.get(name)
        if role:
            found[role].append(int(comm.parent.name))
    return found


class CpuSplit:
    """CPU time (user + system, from /proc) spent by each role's processes from now until per_step().

    ``roles`` is called at the start and at the end: processes that started in between (a PostgreSQL
    backend for a new connection) count from zero; one that ended in between is not counted.
    """

    def __init__(self, roles):
        self.roles, self.wall0 = roles, time.monotonic()
        self.start = {role: self._cpu(pids) for role, pids in roles().items()}

    @staticmethod
    def _cpu(pids: list[int]) -> dict[int, float]:
        found = {}
        for pid in pids:
            try:
                found[pid] = _cpu_s(pid)
            except OSError:
                continue
        return found

    def spent(self) -> tuple[dict[str, float], float]:
        """CPU seconds by role since the start, and the wall seconds."""
        spent = {}
        for role, pids in self.roles().items():
            before = self.start.get(role, {})
            spent[role] = sum(now - before.get(pid, 0.0) for pid, now in self._cpu(pids).items())
        return spent, time.monotonic() - self.wall0


@dataclass
class Round:
    """One side's round of the throughput run: its seconds, the CPU its processes spent (CpuSplit.spent)
    over ``cpu_steps`` of its steps, and PostgreSQL's commits."""

    seconds: float
    cpu: tuple[dict[str, float], float]
    cpu_steps: int
    commits: int = 0
    steady_rate: float | None = None  # Switchyard's steps/s over the round's last STEADY_SHARE of runs


class CpuTally:
    """CpuSplit's figures summed over several rounds."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.wall = 0.0
        self.steps = 0

    def add(self, spent: tuple[dict[str, float], float], steps: int) -> None:
        by_role, wall = spent
        for role, seconds in by_role.items():
            self.cpu[role] = self.cpu.get(role, 0.0) + seconds
        self.wall += wall
        self.steps += steps

    def per_step(self) -> dict[str, float] | None:
        """Milliseconds of CPU per step by role, their total, and the cores busy on average."""
        if not self.steps or not self.wall:
            return None
        split = {role: seconds / self.steps * 1000 for role, seconds in self.cpu.items()}
        total = sum(split.values())
        return {**split, "total": total, "cores busy": total * self.steps / 1000 / self.wall}


def cpu_line(split: dict[str, float] | None) -> str:
    if not split:
        return "not measured"
    parts = [f"{role} {ms:.2f}" for role, ms in split.items() if role not in ("total", "cores busy")]
    return f"{', '.join(parts)}; total {split['total']:.2f} ms ({split['cores busy']:.2f} cores busy on average)"


def _wait_http(url: str, headers: dict) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2).read()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _get(url: str, headers: dict) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        return response.read()


def _hammer(clients: int, per_client: int, request_of, headers: dict) -> tuple[list[float], list[bytes]]:
    """``clients`` threads, each sending ``per_client`` requests one after the other; latencies in ms."""
    times: list[float] = []
    bodies: list[bytes] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(per_client):
            url, data = request_of(k * per_client + j)
            request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
            t = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
            elapsed = (time.perf_counter() - t) * 1000
            with lock:
                times.append(elapsed)
                bodies.append(body)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, bodies


def machine(args) -> dict[str, str]:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    with psycopg.connect(_libpq(PG_URL)) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    rd = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    import celery

    return {"cores": str(os.cpu_count()), "cpu": cpu, "ram": f"{int(mem.split()[1]) / 1024 / 1024:.1f} GiB",
            "python": platform.python_version(), "postgres": pg, "redis": rd, "celery": celery.__version__,
            "os": platform.platform()}


def others() -> str:
    """What else was running: the other processes by CPU % over their lifetime (ps), grouped by command."""
    out = subprocess.run(["ps", "-eo", "pid,pcpu,args"], capture_output=True, text=True).stdout
    mine = {os.getpid()}
    groups: dict[str, list[float]] = {}
    for line in out.splitlines()[1:]:
        pid, cpu, args = line.split(None, 2)
        if int(pid) in mine or "bench_engine" in args:
            continue
        label = " ".join(a.rsplit("/", 1)[-1] if i == 0 else a for i, a in enumerate(args.split()[:4]))[:70]
        groups.setdefault(label, []).append(float(cpu))
    busiest = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:10]
    return "; ".join(f"`{label}` ×{len(cpus)} ({sum(cpus):.0f}% CPU)" for label, cpus in busiest)


def write_report(bench: Bench, args, info: dict, started: str, load_before: str, others_seen: str) -> str:
    lines = ["| figure | Switchyard | raw Celery | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in bench.rows]
    table = "\n".join(lines)
    n = bench.notes
    memory = (f"scheduler {n.get('rss_scheduler_mb', 0):.0f} MiB; Switchyard worker: main process "
              f"{n.get('rss_worker_main_mb', 0):.0f} MiB, a pool child {n.get('rss_worker_child_mb', 0):.0f} MiB; raw "
              f"Celery worker: main {n.get('rss_raw_worker_main_mb', 0):.0f} MiB, a pool child "
              f"{n.get('rss_raw_worker_child_mb', 0):.0f} MiB")
    generated = GENERATED.format(
        date=started, command="make bench " + " ".join(sys.argv[1:]), table=table, memory=memory,
        machine="\n".join(f"- {k}: {v}" for k, v in info.items()), load=load_before, others=others_seen,
        workers=f"{args.workers} worker process(es), prefork, concurrency {args.concurrency}",
        round_trips=n.get("round_trips", "not measured"),
        commits=f"{n.get('commits_per_step', 0):.2f}",
        rounds=args.rounds, round_ratios=n.get("throughput_rounds", "not measured"),
        cpu_ours=cpu_line(n.get("cpu_switchyard")), cpu_raw=cpu_line(n.get("cpu_raw")),
    )
    path = ROOT / "BENCHMARKS.md"
    old = path.read_text() if path.exists() else ""
    notes = old.split(NOTES_MARK, 1)[1] if NOTES_MARK in old else "\n(analysis to be written)\n"
    path.write_text(generated + NOTES_MARK + notes)
    return table


NOTES_MARK = "<!-- everything below is written by hand and kept by make bench -->"
GENERATED = """# Benchmarks

Written by `make bench` (tests/bench/bench_engine.py) on {date}. Command: `{command}`.

{table}

Memory after the throughput run (RSS): {memory}.

Round trips of one step on the hot path (counted in process, see tests/bench/census.py): {round_trips}
PostgreSQL commits per step in the throughput run (pg_stat_database): {commits}.

CPU per step in the throughput run, in ms by process (/proc; PostgreSQL counts all its processes):
- Switchyard: {cpu_ours}
- raw Celery: {cpu_raw}

Workers: {workers}, the same for Switchyard and the raw Celery app, on the same Redis db, one side at a time.
The throughput run alternates the two sides in {rounds} rounds; Switchyard's rate over raw Celery's, round by
round: {round_ratios}.

## The machine

{machine}

Load average before the run: {load}. Other processes (ps: CPU % over each process's lifetime, grouped by\ncommand) {others}.

"""


# The sections, in the order they run: (the name --only takes, the Bench method that runs it).
SECTIONS = (("front", "front"), ("chain", "step_to_step"), ("throughput", "throughput"), ("fanout", "fan_out"),
            ("foreach", "for_each"), ("subruns", "sub_runs"), ("api", "api"), ("monitoring", "monitoring"),
            ("ui", "ui_render"), ("retention", "retention"), ("census", "round_trips"), ("data", "data_scale"))


def sections(text: str) -> set[str]:
    """The sections --only names (comma-separated; empty: all of them)."""
    named = set(filter(None, text.split(",")))
    unknown = sorted(named - {name for name, _ in SECTIONS})
    if unknown:
        raise argparse.ArgumentTypeError(f"no section {', '.join(unknown)}; the sections are "
                                         f"{','.join(name for name, _ in SECTIONS)}")
    return named


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20000, help="no-op steps in the throughput run")
    parser.add_argument("--rounds", type=int, default=5,
                        help="the throughput run alternates Switchyard and raw Celery in this many rounds")
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs seeded for the data-scale figures")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each side)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker process")
    parser.add_argument("--api-workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--api-requests", type=int, default=50, help="requests per API client")
    parser.add_argument("--front-rounds", type=int, default=3,
                        help="rounds of the front section (each side in turn, alternating the order)")
    parser.add_argument("--front-burst", type=int, default=400, help="one-step runs per side and round (front)")
    parser.add_argument("--only", type=sections, default=set(),
                        help=f"comma-separated sections to run: {','.join(name for name, _ in SECTIONS)}")
    args = parser.parse_args()
    only = args.only
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    info = machine(args)
    say(f"machine: {info}")
    seen_before = others()
    say(f"also running: {seen_before}")
    folder = Path(os.environ.get("BENCH_DIR", "/tmp")) / f"switchyard-bench-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    with fresh_database("switchyard_bench") as database_url, claimed_redis_db() as broker_url:
        say(f"database {database_url.rsplit('/', 1)[1]}, redis {broker_url}, process logs in {folder}")
        bench = Bench(args, database_url, broker_url, folder)
        try:
            bench.start_switchyard()
            say("scheduler and workers are up")
            for name, method in SECTIONS:
                if not only or name in only:
                    if name in ("census", "data"):
                        bench.stop_all()  # the census drives the hot path itself; the seed wants the machine
                    getattr(bench, method)()
        finally:
            bench.stop_all()
            bench.engine.dispose()
        seen = f"at the start: {seen_before}. At the end: {others()}"
        table = write_report(bench, args, info, started, " ".join(load_before), seen)
    print(table)
    say("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
