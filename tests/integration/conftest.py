"""Integration fixtures: a PostgreSQL database and a Redis db of their own for this test session,
migrated with Alembic, real `switchyard worker` and `switchyard scheduler` processes, and the Flask
app in process against the same database.

Without PostgreSQL or Redis these tests skip on a laptop, and fail when SWITCHYARD_REQUIRE_SERVICES=1
(set by .ci/run).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from orchestrator.db import migrate
from orchestrator.settings import PriceTable, Settings

PG_URL = os.environ.get("SWITCHYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SWITCHYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REQUIRE = os.environ.get("SWITCHYARD_REQUIRE_SERVICES") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _unavailable(what: str, exc: Exception):
    message = f"{what} is not reachable ({exc}); start it or set SWITCHYARD_TEST_PG_URL / SWITCHYARD_TEST_REDIS_URL"
    if REQUIRE:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_database(prefix: str = "switchyard_test") -> Iterator[str]:
    """A new database on the test server, migrated to head, dropped afterwards. Databases of this
    prefix left by a process that was killed are dropped first (see _drop_left_behind)."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg.connect(_libpq(PG_URL), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    _drop_left_behind(admin, prefix)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(Settings(database_url=url))
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _server_is_local() -> bool:
    return make_url(PG_URL).host in (None, "", "localhost", "127.0.0.1", "::1")


def _drop_left_behind(admin: psycopg.Connection, prefix: str) -> list[str]:
    """Drop the databases ``<prefix>_<pid>_<hex>`` whose process is gone from this machine and that
    nobody is connected to: what a test session or a bench killed before its clean-up left. Only on
    a server on this machine, where the pid in the name means something."""
    if not _server_is_local() or not Path("/proc/self").exists():  # no /proc: no way to tell
        return []
    dropped = []
    name = re.compile(rf"{re.escape(prefix)}_(\d+)_[0-9a-f]{{6}}")
    idle = admin.execute("SELECT datname FROM pg_database WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                         "WHERE pg_stat_activity.datname = pg_database.datname)").fetchall()
    for (datname,) in idle:
        left = name.fullmatch(datname)
        if left and not Path(f"/proc/{left.group(1)}").exists():
            try:
                admin.execute(f'DROP DATABASE IF EXISTS "{datname}"')
            except psycopg.errors.ObjectInUse:
                continue  # someone connected meanwhile: not ours to drop
            dropped.append(datname)
    return dropped


# The key that marks a Redis db as a test session's, holding its process id.
REDIS_CLAIM_KEY = "switchyard:test-session"


@contextmanager
def claimed_redis_db(base_url: str = REDIS_URL) -> Iterator[str]:
    """A Redis database number nobody else is using, flushed afterwards. A db still claimed by a
    process that is gone from this machine (a session killed before its clean-up) is flushed and
    taken; a db with keys and no claim is somebody else's and left alone."""
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{base_url}/{db}", socket_connect_timeout=3)
        try:
            claimed = _claim_redis_db(client)
        except redis.ConnectionError as exc:
            _unavailable("Redis", exc)
        if claimed:
            try:
                yield f"{base_url}/{db}"
            finally:
                client.flushdb()
            return
    pytest.fail("every Redis database 1-15 is in use by another test session; flush a stale one")


def _claim_redis_db(client: redis.Redis) -> bool:
    """Claim the client's db if it is empty, or left claimed by a process gone from this machine."""
    me = str(os.getpid())
    if client.set(REDIS_CLAIM_KEY, me, nx=True):
        if client.dbsize() == 1:
            return True
        # Keys of somebody else's: not ours to take, and our claim must not stay to hide it from them.
        _replace_claim(client, me, None)
        return False
    owner = client.get(REDIS_CLAIM_KEY)
    # A claim that is not a pid (a test that keeps its db claimed under a name) is never taken over.
    if owner is None or not owner.isdigit() or not _redis_is_local(client) or Path(f"/proc/{int(owner)}").exists():
        return False
    return _replace_claim(client, owner.decode(), me)


def _replace_claim(client: redis.Redis, owner: str, new_owner: str | None) -> bool:
    """If ``owner`` still holds the db's claim: flush the db and claim it for ``new_owner`` (None:
    only drop the claim, keeping the db's keys). False if someone else took it meanwhile."""
    with client.pipeline() as pipe:
        try:
            pipe.watch(REDIS_CLAIM_KEY)
            if pipe.get(REDIS_CLAIM_KEY) != owner.encode():
                return False
            pipe.multi()
            if new_owner is None:
                pipe.delete(REDIS_CLAIM_KEY)
            else:
                pipe.flushdb()
                pipe.set(REDIS_CLAIM_KEY, new_owner)
            pipe.execute()
            return new_owner is not None
        except redis.WatchError:
            return False


def _redis_is_local(client: redis.Redis) -> bool:
    """Whether Redis runs on this machine, where the process id in a claim means something."""
    return client.connection_pool.connection_kwargs.get("host") in ("localhost", "127.0.0.1", "::1") and \
        Path("/proc/self").exists()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    with claimed_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("processes")


@pytest.fixture(scope="session")
def fake_llm():
    """An OpenAI-compatible endpoint on loopback (see tests/integration/fake_openai.py)."""
    from tests.integration.fake_openai import FakeOpenAI

    server = FakeOpenAI()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(database_url, broker_url, artifacts, fake_llm) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        data_dir=artifacts / "data",
        sweep_interval_s=1.0,
        lease_s=6.0,
        outbox_republish_after_s=3.0,
        stranded_after_s=3.0,
        openai_base_url=fake_llm.url,
        openai_api_key="test-key",
        prices=PRICES,
        log_format="json",
    )


# Credits per unit for the whole session; the scripted model's output tokens have a price of their own.
PRICES = PriceTable(
    steps=0.5, tool_calls=0.25, llm_calls=0.125, tokens_in=0.001, tokens_out=0.002,
    models={"scripted": {"tokens_out": 0.004}},
)


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SWITCHYARD_DATABASE_URL": settings.database_url,
        "SWITCHYARD_BROKER_URL": settings.broker_url,
        "SWITCHYARD_DATA_DIR": str(settings.data_dir),
        "SWITCHYARD_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
        "SWITCHYARD_LEASE_S": str(settings.lease_s),
        "SWITCHYARD_OUTBOX_REPUBLISH_AFTER_S": str(settings.outbox_republish_after_s),
        "SWITCHYARD_STRANDED_AFTER_S": str(settings.stranded_after_s),
        "SWITCHYARD_OPENAI_BASE_URL": settings.openai_base_url,
        "SWITCHYARD_OPENAI_API_KEY": settings.openai_api_key,
        "SWITCHYARD_PRICES": settings.prices.model_dump_json(),
        "SWITCHYARD_LOG_FORMAT": settings.log_format,
        "PYTHONPATH": str(ROOT),
    })
    return env


class Processes:
    """Real `switchyard` processes started for the session; their output goes to files."""

    def __init__(self, settings: Settings, folder: Path):
        self.settings, self.folder = settings, folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, module: str = "orchestrator.cli", env: dict | None = None
              ) -> subprocess.Popen:
        """Start ``python -m module *args`` (by default the `switchyard` command) with the session's env."""
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        # A session of its own, so that kill() takes the worker's pool children with it, as when its
        # machine dies.
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**_env(self.settings), **(env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, kill: bool = False) -> None:
        """SIGTERM (a warm shutdown) or, with ``kill`` or after 20 s, SIGKILL to the whole process group.
        A process that outlives its 20 s has its threads' stacks (and its children's) written to
        ``<name>.stacks.txt`` first: what it was waiting on."""
        proc = self.procs.pop(name)
        if not kill:
            proc.terminate()
            try:
                proc.wait(timeout=20)
                return
            except subprocess.TimeoutExpired:
                self.dump_stacks(name, proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def dump_stacks(self, name: str, pid: int) -> Path | None:
        """py-spy's dump of the process ``pid`` and of its children (a worker's pool) into
        ``<name>.stacks.txt``; None, with nothing written, where py-spy is not installed."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            return None
        children = Path(f"/proc/{pid}/task/{pid}/children")
        pids = [pid, *(int(p) for p in children.read_text().split())] if children.exists() else [pid]
        path = self.folder / f"{name}.stacks.txt"
        with path.open("w") as out:
            for each in pids:
                out.write(f"--- pid {each}\n")
                out.flush()
                subprocess.run([spy, "dump", "--pid", str(each)], stdout=out, stderr=subprocess.STDOUT, timeout=30,
                               check=False)
        return path

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.folder / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@contextmanager
def stack_of_its_own(prefix: str, folder: Path, **overrides) -> Iterator[tuple[Settings, Processes]]:
    """A database (``prefix``) and a Redis db of the test's own, settings for them (a sweep every second,
    then ``overrides``) and the Processes to start on them, all stopped at the end: for a scenario whose
    processes and faults must not touch the session's."""
    with fresh_database(prefix) as database_url, claimed_redis_db() as broker_url:
        settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=folder / "data",
                            **{"sweep_interval_s": 1.0, **overrides})
        procs = Processes(settings, folder)
        try:
            yield settings, procs
        finally:
            procs.stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        pytest.fail(f"{name} is not installed; install Debian's postgresql package")
    return str(found)


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free port (initdb into a temporary folder, as the `postgres`
    user, since PostgreSQL refuses to run as root): a test may stop it without disturbing anything else."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="switchyard-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.as_postgres = as_postgres
        if as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run([*as_postgres, _postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/switchyard"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, _postgres_bin("pg_ctl"), "-D", str(self.data), *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.folder / "server.log"), "-w", "start")

    def stop(self) -> None:
        """Like a crash: no checkpoint, every connection cut."""
        self._ctl("-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_postgres(tmp_path) -> Iterator[tuple[Settings, Processes, PostgresServer]]:
    """A PostgreSQL cluster of the test's own with a migrated database `switchyard`, a Redis db of the
    test's own, settings for them (a sweep every second, 6 s leases, the outbox re-published after 2 s)
    and the Processes to start on them, all stopped and removed at the end: for a scenario that stops
    or restarts PostgreSQL."""
    server = PostgresServer()
    server.start()
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE switchyard")
        with claimed_redis_db() as broker_url:
            settings = Settings(database_url=server.url, broker_url=broker_url, data_dir=tmp_path / "data",
                                sweep_interval_s=1.0, lease_s=6.0, outbox_republish_after_s=2.0)
            migrate.upgrade(settings)
            procs = Processes(settings, tmp_path)
            try:
                yield settings, procs, server
            finally:
                procs.stop_all()
    finally:
        server.remove()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes (then fail, saying what)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def engine_processes(settings, artifacts) -> Iterator[Processes]:
    """Two worker processes (prefork, 3 children each) and one scheduler, for the whole session."""
    from orchestrator.broker import make_celery

    procs = Processes(settings, artifacts)
    for i in (1, 2):
        procs.start(f"worker{i}", "worker", "--concurrency", "3", "--pool", "prefork", "--loglevel", "INFO")
    procs.start("scheduler", "scheduler")
    celery = make_celery(settings)

    def both_workers_answer():
        for name in ("worker1", "worker2", "scheduler"):
            if procs.procs[name].poll() is not None:
                pytest.fail(f"{name} exited during start-up:\n{procs.log_tail(name)}")
        return len(celery.control.ping(timeout=0.5)) >= 2

    wait_for(both_workers_answer, 60, "two Celery workers to answer ping")
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def app(settings):
    from api import create_app

    made = create_app(settings)
    _SESSION_CELERY.append(made.extensions["switchyard"].celery)
    return made


# The session app's Celery app: its worker monitor lives as long as the session.
_SESSION_CELERY: list = []


@pytest.fixture(autouse=True)
def _stop_other_monitors():
    """After each test, stop the worker monitors of the apps it made (the session app's stays): each
    listens to every Celery event of the session's workers on a thread of this process, and tens of
    them left running starved the session app's own monitor of the GIL (a new worker went unlisted for
    a minute late in the suite)."""
    yield
    from orchestrator import monitor

    for running in monitor.running():
        if not any(running.app is kept for kept in _SESSION_CELERY):
            running.stop()


@pytest.fixture(scope="session")
def tokens(settings) -> dict[str, str]:
    """Tokens of every role for tenant 'acme', and an admin token for tenant 'globex'."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    sessions = make_sessionmaker(make_engine(settings))
    result = {}
    with transaction(sessions) as session:
        for role in ("viewer", "operator", "admin"):
            result[role] = repo.create_token(session, "acme", role, f"test {role}")[1]
        result["other_tenant"] = repo.create_token(session, "globex", "admin", "other tenant")[1]
    return result


class Api:
    """The Flask test client with a token, speaking JSON."""

    def __init__(self, client, token: str | None):
        self.client, self.token = client, token

    def _headers(self, headers):
        result = dict(headers or {})
        if self.token:
            result.setdefault("Authorization", f"Bearer {self.token}")
        return result

    def get(self, path, **kw):
        return self.client.get(f"/api/v1{path}", headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path, json=None, **kw):
        return self.client.post(f"/api/v1{path}", json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def put(self, path, json=None, **kw):
        return self.client.put(f"/api/v1{path}", json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, path, **kw):
        return self.client.delete(f"/api/v1{path}", headers=self._headers(kw.pop("headers", None)), **kw)

    def as_(self, token: str | None) -> Api:
        return Api(self.client, token)


@contextmanager
def served(app) -> Iterator[str]:
    """``app`` on a real threaded HTTP server on a loopback port; yields its base URL."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        thread.join(10)
        close_connections_of(app)


def close_connections_of(app) -> None:
    """Close an app's database connections now rather than when it is collected: apps made one test
    after another kept theirs open, and once, late in a run, PostgreSQL's 100 ran out."""
    services = getattr(app, "extensions", {}).get("switchyard")
    if services is not None:
        services.dispose()


@pytest.fixture
def app_for() -> Iterator[Callable[[Settings], Any]]:
    """``create_app`` for one test: the apps it makes have their connections closed when it ends."""
    from api import create_app

    made = []

    def make(settings: Settings):
        made.append(create_app(settings))
        return made[-1]
    yield make
    for app in made:
        close_connections_of(app)


class Ui:
    """A Flask test client signed in to the web UI, with the session's CSRF token."""

    def __init__(self, client, csrf: str):
        self.client, self.csrf = client, csrf

    def post(self, path, data: dict):
        return self.client.post(path, data={**data, "csrf_token": self.csrf})


def signed_in(app, token: str) -> Ui:
    """Sign in to the web UI with ``token`` as a browser would (the form, then its CSRF token)."""
    client = app.test_client()
    csrf = re.compile(r'name="csrf_token" value="([^"]+)"')
    page = client.get("/sign-in").get_data(as_text=True)
    response = client.post("/sign-in", data={"token": token, "csrf_token": csrf.search(page).group(1)})
    assert response.status_code == 302, response.get_data(as_text=True)
    return Ui(client, csrf.search(client.get("/runs").get_data(as_text=True)).group(1))


@pytest.fixture
def api(app, tokens) -> Api:
    return Api(app.test_client(), tokens["admin"])


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def publish(api: Api, definition: dict, workflow_id: str | None = None) -> str:
    workflow_id = workflow_id or unique("wf")
    response = api.put(f"/workflows/{workflow_id}", json=definition)
    assert response.status_code == 201, response.get_json()
    return workflow_id


def start(api: Api, workflow_id: str, run_input=None) -> str:
    response = api.post("/runs", json={"workflow_id": workflow_id, "input": run_input or {}})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def wait_run(api: Api, run_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 60) -> dict:
    def finished():
        run = api.get(f"/runs/{run_id}").get_json()
        return run if run["status"] in statuses else None

    return wait_for(finished, timeout, f"run {run_id} to reach {statuses}", interval=0.1)


def events(api: Api, run_id: str) -> list[dict]:
    return api.get(f"/runs/{run_id}/events").get_json()["events"]


def by_id(run: dict) -> dict[str, dict]:
    """A run's steps by step id."""
    return {s["id"]: s for s in run["steps"]}


def wait_no_task_of(settings: Settings, run_id: str, timeout: float, what: str) -> None:
    """Poll the workers (Celery's inspect) until none runs a task of ``run_id``."""
    from orchestrator.broker import make_celery

    celery = make_celery(settings)

    def none_active():
        active = celery.control.inspect(timeout=0.5).active() or {}
        return not any(run_id in task["id"] for tasks in active.values() for task in tasks)

    wait_for(none_active, timeout, what)
