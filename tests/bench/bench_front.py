"""`make bench`, section `front`: what a user sees, from a run's submission to its end, side by side in one
run with raw Celery and DBOS Transact (tests/bench/dbos_app.py), alternating the sides round by round.

- Switchyard is driven through its REST API (`switchyard api`: gunicorn with its default processes and
  threads), with the scheduler and worker processes of the rest of the bench; clients keep their HTTP
  connections open, as a client library does.
- raw Celery: the same no-op tasks on the same Redis (tests/bench/raw_app.py), sent by the clients.
- DBOS in process: workflows run in the bench's own process, checkpointed in PostgreSQL; DBOS through a
  queue: enqueued with DBOSClient, run by a worker process polling every 0.1 s. Each with a system
  database of its own on the same PostgreSQL server.

A run's end is read where each side records it, on this machine's clock: Switchyard's run completed_at
(the database's clock), the raw chain's last task's end (time.time() in the worker), DBOS's workflow
status updated_at; the submission is the client's time.time() before sending. All sides stay up for the
whole section: an idle side costs the others little (a DBOS queue poll every 0.1 s, a Celery worker
blocked on its queue).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable

import httpx
import psycopg
from celery import chain
from sqlalchemy.engine import make_url

from tests.bench.bench_analytics import _libpq
from tests.integration.conftest import PG_URL

ONE_STEP = [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}]
TEN_STEPS = [{"id": f"s{i}", "type": "tool", "tool": "echo", "args": {"text": "x"},
              **({"needs": [f"s{i - 1}"]} if i else {})} for i in range(10)]
CLIENTS = 8


def say(message: str) -> None:
    print(f"[bench front] {message}", flush=True)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _timed_posts(client: httpx.Client, url: str, n: int, *, warm: int) -> list[float]:
    """Milliseconds of each of ``n`` POSTs of a one-step run's start body to ``url``, one after the other,
    after ``warm`` untimed ones."""
    body = {"workflow_id": "front-one", "input": {}}
    for _ in range(warm):
        client.post(url, json=body).raise_for_status()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.post(url, json=body).raise_for_status()
        times.append((time.perf_counter() - t) * 1000)
    return times


class Front:
    """The front-door figures of one `make bench`; ``bench`` is tests.bench.bench_engine.Bench."""

    def __init__(self, bench, *, rounds: int = 3, chain_runs: int = 10, burst: int = 400):
        self.bench, self.rounds, self.chain_runs, self.burst = bench, rounds, chain_runs, burst
        self.base = ""
        self.headers: dict[str, str] = {}
        self.dbos_client = None
        self.queue_db = ""
        self.databases: list[str] = []
        self.posts: list[float] = []
        self.client: httpx.Client | None = None

    # --- set-up ----------------------------------------------------------------------------------

    def setup(self) -> None:
        from orchestrator.db import repository as repo
        from orchestrator.db.session import transaction

        b = self.bench
        b.publish("front-one", ONE_STEP)
        b.publish("front-ten", TEN_STEPS)
        with transaction(b.sessions) as session:
            token = repo.create_token(session, "perf", "operator", "bench front")[1]
        port = 19000 + b.folder.stat().st_ino % 1000
        b.start("front-api", [sys.executable, "-m", "orchestrator.cli", "api", "--port", str(port)])
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.base}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"`switchyard api` did not answer; see {b.folder}/front-api.log") from None
                time.sleep(0.2)
        b.start_raw()
        self._setup_dbos()

    def _setup_dbos(self) -> None:
        from dbos import DBOSClient

        from tests.bench import dbos_app

        b = self.bench
        own = make_url(b.settings.database_url).database
        in_process_db, self.queue_db = (self._database(f"{own}_dbos_{k}") for k in ("in_process", "queue"))
        say("DBOS: launching in process, and a queue worker process (system databases of their own)")
        dbos_app.launch(in_process_db)
        b.start("dbos-worker", [sys.executable, "-m", "tests.bench.dbos_app", self.queue_db])
        self.dbos_client = DBOSClient(system_database_url=self.queue_db)
        deadline = time.monotonic() + 90
        while "dbos worker ready" not in (b.folder / "dbos-worker.log").read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the DBOS worker did not start; see {b.folder}/dbos-worker.log")
            time.sleep(0.2)

    def _database(self, name: str) -> str:
        """A new database on the bench's server (dropped by teardown), as a libpq URL."""
        with psycopg.connect(_libpq(PG_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return _libpq(make_url(self.bench.settings.database_url).set(database=name).render_as_string(False))

    def teardown(self) -> None:
        from dbos import DBOS

        if self.client is not None:
            self.client.close()
        if self.dbos_client is not None:
            self.dbos_client.destroy()
        DBOS.destroy()
        for name in ("front-api", "dbos-worker"):
            if name in self.bench.procs:
                self.bench.stop(name)
        self.bench.stop_raw()
        with psycopg.connect(_libpq(PG_URL), autocommit=True) as admin:
            for name in self.databases:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # --- the figures -----------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        try:
            insert_ms = self.insert_and_commit()
            self.post_alone(insert_ms)
            self.floor(insert_ms)
            self.ten_steps()
            self.single_step_runs()
        finally:
            self.teardown()

    def insert_and_commit(self, n: int = 500) -> float:
        """A single-row INSERT and its commit, on an open psycopg connection in autocommit: one round trip
        with a WAL flush, the least a durable start can cost."""
        with psycopg.connect(_libpq(self.bench.settings.database_url), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_round_trip (id serial PRIMARY KEY, v text)")
            times = []
            for i in range(n):
                t = time.perf_counter()
                conn.execute("INSERT INTO bench_round_trip (v) VALUES (%s)", (str(i),), prepare=True)
                times.append((time.perf_counter() - t) * 1000)
        median = statistics.median(times)
        say(f"PostgreSQL single-row insert-and-commit: p50 {median:.2f} ms, p99 {p(times, 99):.2f} ms")
        self.bench.rows.append(("PostgreSQL single-row insert + commit (one round trip) p50",
                                f"{median:.2f} ms", "–", "–"))
        return median

    def post_alone(self, insert_ms: float, n: int = 300) -> None:
        """POST /runs one after the other from one client (its runs run meanwhile)."""
        with httpx.Client(headers=self.headers, timeout=30) as client:
            times = _timed_posts(client, f"{self.base}/runs", n, warm=20)  # warm: every API process's caches
        self.bench.wait_runs("workflow_id = 'front-one'", timeout=300)
        median = statistics.median(times)
        say(f"POST /runs alone: p50 {median:.2f} ms, p99 {p(times, 99):.2f} ms; {median / insert_ms:.1f}× an insert")
        self.bench.rows.append(("POST /runs alone p50 / p99 (ratio: p50 over an insert + commit)",
                                f"{median:.1f} / {p(times, 99):.1f} ms", "–", f"{median / insert_ms:.2f}×"))

    def floor(self, insert_ms: float, n: int = 300) -> None:
        """The floor under POST /runs on this stack (tests/bench/floor_app.py): a bare Flask route that
        inserts one row and commits, under gunicorn as `switchyard api` runs it, one request after the
        other from the same kind of client."""
        from api.serve import default_workers

        port = 19000 + (self.bench.folder.stat().st_ino + 500) % 1000
        self.bench.start("floor-api", [sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
                                       "--workers", str(default_workers()), "--threads", "4",
                                       "--bind", f"127.0.0.1:{port}", "tests.bench.floor_app:app"])
        url = f"http://127.0.0.1:{port}/floor"
        try:
            with httpx.Client(timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        client.post(url, json={"workflow_id": "front-one", "input": {}}).raise_for_status()
                        break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the floor app did not answer; see {self.bench.folder}/floor-api.log"
                                               ) from None
                        time.sleep(0.2)
                times = _timed_posts(client, url, n, warm=40)  # warm: every process's connection opened
        finally:
            self.bench.stop("floor-api")
        median = statistics.median(times)
        say(f"the floor (a bare Flask route that inserts one row, same gunicorn): p50 {median:.2f} ms; "
            f"{median / insert_ms:.1f}× an insert")
        self.bench.rows.append(("the floor: a bare Flask POST that inserts one row, same gunicorn, p50 / p99 "
                                "(ratio: over an insert + commit)",
                                f"{median:.2f} / {p(times, 99):.2f} ms", "–", f"{median / insert_ms:.2f}×"))

    def ten_steps(self) -> None:
        """A 10-step sequential workflow from submission to its end, one run at a time, each side in turn."""
        sides: dict[str, Callable[[], float]] = {
            "raw Celery chain of 10": self._raw_chain, "Switchyard via the API": self._switchyard_ten,
            "DBOS in process": self._dbos_in_process, "DBOS through a queue": self._dbos_queue_ten}
        samples = self._rounds(sides, self.chain_runs, "10-step runs", lambda v: f"{statistics.median(v):.1f} ms")
        raw = statistics.median(samples["raw Celery chain of 10"])
        for name, values in samples.items():
            median = statistics.median(values)
            self.bench.rows.append((f"10-step run submit → done p50 / p99: {name}",
                                    f"{median:.1f} / {p(values, 99):.1f} ms",
                                    f"{raw:.1f} ms" if name != "raw Celery chain of 10" else "–",
                                    f"{median / raw:.2f}×"))

    def _raw_chain(self) -> float:
        r = self.bench.redis
        r.delete("bench:chain")
        t0 = time.time()
        chain(*[self.bench.celery.signature("bench.link", args=(i,), queue="bench.raw", immutable=True)
                for i in range(10)]).apply_async()
        deadline = time.monotonic() + 60
        while r.llen("bench:chain") < 10:
            if time.monotonic() > deadline:
                raise RuntimeError("the raw chain did not finish")
            time.sleep(0.0005)
        return (float(r.lindex("bench:chain", -1).split()[2]) - t0) * 1000

    def _switchyard_ten(self) -> float:
        # A client kept open, as the other figures' clients and a client library do: a new httpx client
        # per run builds an SSL context (the CA bundle read) inside the timed window, ~10 ms.
        if self.client is None:
            self.client = httpx.Client(headers=self.headers, timeout=30)
        t0 = time.time()
        response = self.client.post(f"{self.base}/runs", json={"workflow_id": "front-ten", "input": {}})
        response.raise_for_status()
        return (self._completed_at(response.json()["id"]) - t0) * 1000

    def _completed_at(self, run_id: str) -> float:
        deadline = time.monotonic() + 60
        with psycopg.connect(_libpq(self.bench.settings.database_url), autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT status, extract(epoch FROM completed_at) FROM runs WHERE id = %s",
                                   (run_id,), prepare=True).fetchone()
                if row and row[1] is not None:
                    if row[0] != "succeeded":
                        raise RuntimeError(f"run {run_id} ended {row[0]}")
                    return float(row[1])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} did not finish")
                time.sleep(0.001)

    def _dbos_in_process(self) -> float:
        from dbos import DBOS

        from tests.bench import dbos_app

        t0 = time.time()
        DBOS.start_workflow(dbos_app.ten_steps).get_result()
        return (time.time() - t0) * 1000

    def _dbos_queue_ten(self) -> float:
        t0 = time.time()
        handle = self.dbos_client.enqueue({"queue_name": "bench", "workflow_name": "ten_steps"})
        return (self._dbos_done([handle.workflow_id]) - t0) * 1000

    def _dbos_done(self, workflow_ids: list[str]) -> float:
        """When the last of ``workflow_ids`` succeeded (epoch seconds), read from DBOS's status table."""
        deadline = time.monotonic() + 300
        with psycopg.connect(self.queue_db, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status <> 'SUCCESS'), max(updated_at) FROM dbos.workflow_status "
                    "WHERE workflow_uuid = ANY(%s)", (workflow_ids,)).fetchone()
                if row[0] == 0:
                    return row[1] / 1000
                if time.monotonic() > deadline:
                    raise RuntimeError("DBOS queue workflows did not finish")
                time.sleep(0.001 if len(workflow_ids) == 1 else 0.05)

    def single_step_runs(self) -> None:
        """``burst`` one-step runs submitted by 8 clients at once, from the first submission to the last
        run's end, each side in turn; POST /runs under 8 clients comes with Switchyard's rounds."""
        sides: dict[str, Callable[[], float]] = {
            "raw Celery no-op tasks": self._raw_burst, "Switchyard via the API": self._switchyard_burst,
            "DBOS in process": self._dbos_in_process_burst, "DBOS through a queue": self._dbos_queue_burst}
        self.posts = []
        names = list(sides)
        rates = self._rounds(sides, 1, f"{self.burst} one-step runs from {CLIENTS} clients", lambda v: f"{v[-1]:.0f}/s")
        raw = statistics.median(rates["raw Celery no-op tasks"])
        for name, values in rates.items():
            median = statistics.median(values)
            self.bench.rows.append((f"{self.burst} one-step runs from {CLIENTS} clients, submit → all done: {name}",
                                    f"{median:.0f} runs/s", f"{raw:.0f} tasks/s" if name != names[0] else "–",
                                    f"{median / raw:.2f}×"))
        self.bench.rows.append((f"POST /runs under {CLIENTS} clients p50 / p99",
                                f"{statistics.median(self.posts):.1f} / {p(self.posts, 99):.1f} ms", "–", "–"))

    def _rounds(self, sides: dict[str, Callable[[], float]], per_round: int, what: str,
                shown: Callable[[list[float]], str]) -> dict[str, list[float]]:
        """Each side ``per_round`` times a round, the sides' order turned by one each round (no side is
        always first or always after the same one); the samples by side."""
        samples: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for round_ in range(self.rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                samples[name] += [sides[name]() for _ in range(per_round)]
            say(f"{what}, round {round_ + 1}/{self.rounds}: " + ", ".join(f"{n} {shown(v)}" for n, v in samples.items()))
        return samples

    def _clients(self, send: Callable[[int], None]) -> float:
        """``burst`` submissions from 8 threads; the time.time() of the first."""
        per = [self.burst // CLIENTS + (1 if k < self.burst % CLIENTS else 0) for k in range(CLIENTS)]
        threads = [threading.Thread(target=lambda n=n: [send(i) for i in range(n)]) for n in per]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return t0

    def _raw_burst(self) -> float:
        r = self.bench.redis
        r.delete("bench:noop:count", "bench:noop:first", "bench:noop:last")
        t0 = self._clients(lambda _: self.bench.celery.send_task("bench.noop", queue="bench.raw"))
        deadline = time.monotonic() + 300
        while int(r.get("bench:noop:count") or 0) < self.burst:
            if time.monotonic() > deadline:
                raise RuntimeError("the raw no-op tasks did not finish")
            time.sleep(0.01)
        return self.burst / (float(r.get("bench:noop:last")) - t0)

    def _switchyard_burst(self) -> float:
        local = threading.local()
        lock = threading.Lock()
        ids: list[str] = []

        def send(_: int) -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(headers=self.headers, timeout=30)
            t = time.perf_counter()
            response = client.post(f"{self.base}/runs", json={"workflow_id": "front-one", "input": {}})
            elapsed = (time.perf_counter() - t) * 1000
            response.raise_for_status()
            with lock:
                self.posts.append(elapsed)
                ids.append(response.json()["id"])

        t0 = self._clients(send)
        self.bench.wait_runs("workflow_id = 'front-one'", timeout=600, poll_s=0.02)
        with psycopg.connect(_libpq(self.bench.settings.database_url), autocommit=True) as conn:
            last = conn.execute("SELECT extract(epoch FROM max(completed_at)) FROM runs WHERE id = ANY(%s)",
                                (ids,)).fetchone()[0]
        return self.burst / (float(last) - t0)

    def _dbos_in_process_burst(self) -> float:
        from dbos import DBOS

        from tests.bench import dbos_app

        t0 = self._clients(lambda _: DBOS.start_workflow(dbos_app.one_step).get_result())
        return self.burst / (time.time() - t0)

    def _dbos_queue_burst(self) -> float:
        lock = threading.Lock()
        ids: list[str] = []

        def send(_: int) -> None:
            handle = self.dbos_client.enqueue({"queue_name": "bench", "workflow_name": "one_step"})
            with lock:
                ids.append(handle.workflow_id)

        t0 = self._clients(send)
        return self.burst / (self._dbos_done(ids) - t0)
