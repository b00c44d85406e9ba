"""The `switchyard` command: api, scheduler, worker, dev, db upgrade, token create|list|revoke, doctor.

The commands for the API and the worker import ``api`` and ``workers`` inside their functions:
the orchestrator does not depend on them, the command line merely starts them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
from click.core import ParameterSource

from orchestrator.settings import DEV_SECRET_KEY, Settings, load

ROLES = ("viewer", "operator", "admin")


def _logging(settings: Settings, level: str = "INFO") -> None:
    from orchestrator import logs

    logs.configure(settings.log_format, level)


@click.group()
@click.version_option(package_name="switchyard", prog_name="switchyard")
def main() -> None:
    """Switchyard: durable runs of AI-agent workflows on Celery workers."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 or :: for all).")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", "-w", default=None, type=click.IntRange(min=1),
              show_default="2 × CPU cores + 1, at most 8",
              help="gunicorn worker processes (each with its own database pool and worker monitor).")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1),
              help="Threads per worker process: requests (open event streams included) served at once "
                   "per process.")
@click.option("--dev", is_flag=True,
              help="werkzeug's development server instead (one process, threaded), restarting on code changes.")
@click.option("--reload/--no-reload", default=None, show_default="on",
              help="With --dev: restart when the code changes.")
def api(host: str, port: int, workers: int | None, threads: int, dev: bool, reload: bool | None) -> None:
    """Serve the REST API and the web UI with gunicorn (WORKERS processes × THREADS threads, the same app
    as gunicorn 'api.wsgi:app'); --dev serves it with werkzeug's development server."""
    from api import serve

    threads_given = click.get_current_context().get_parameter_source("threads") != ParameterSource.DEFAULT
    if dev and (workers is not None or threads_given):
        raise click.UsageError("--workers and --threads are gunicorn's; --dev serves in one threaded process")
    if not dev and reload is not None:
        raise click.UsageError("--reload and --no-reload apply to --dev only (gunicorn does not reload)")
    settings = load()
    _logging(settings)
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if dev:
        if not serve.is_reloader_child():  # the reloader's child runs this again: say it, check it once
            _check_port(serve, host, port)
            click.echo(f"serving the Switchyard API at {base}/api/v1 with werkzeug's development server "
                       f"(threaded{'' if reload is False else ', reloading on code changes'}); not for production")
        serve.serve_werkzeug(settings, host, port, reload is not False)
        return
    workers = workers or serve.default_workers()
    _check_port(serve, host, port)
    click.echo(f"serving the Switchyard API at {base}/api/v1 with gunicorn: {workers} worker "
               f"process{'' if workers == 1 else 'es'} × {threads} thread{'' if threads == 1 else 's'}")
    serve.serve_gunicorn(settings, host, port, workers, threads)


def _check_port(serve, host: str, port: int) -> None:
    try:
        serve.check_port_free(host, port)
    except serve.PortInUse as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def scheduler() -> None:
    """Advance runs: dispatch ready steps, fire due retries and timers, recover lost work."""
    from orchestrator import broker, streams, tracing
    from orchestrator.db.session import make_engine, make_sessionmaker
    from orchestrator.scheduler import Scheduler

    settings = load()
    _logging(settings)
    tracing.configure("switchyard-scheduler")  # off unless OTEL_TRACES_EXPORTER; before the engine
    # No ping before each transaction (a round trip each): the scheduler reconnects after an outage.
    sessions = make_sessionmaker(make_engine(settings, pool_pre_ping=False))
    streams.install_publisher(sessions, streams.make_bus(settings))
    sched = Scheduler(settings, sessions, broker.make_celery(settings))
    sched.install_signal_handlers()
    sched.run_forever()


@main.command()
@click.option("--concurrency", "-c", default=2, show_default=True, type=int)
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: the steps queue).")
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "threads", "solo"]))
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int, queues: str | None, pool: str, loglevel: str) -> None:
    """Run a Celery worker that executes agent, tool and LLM steps."""
    from workers import metrics, pools
    from workers.app import make_worker_app

    settings = load()
    metrics.serve(settings)  # before the pool forks its children, who inherit the set-up
    app = make_worker_app(settings)
    argv = [
        "worker", f"--concurrency={concurrency}", f"--queues={queues or settings.default_queue}",
        f"--loglevel={loglevel}", f"--hostname=switchyard-{os.getpid()}@%h",
    ]
    if pool in pools.POOLS:
        # Celery's thread and solo pools cannot terminate a revoked task (a traceback per cancel): ours,
        # configured, which Celery takes over its default --pool (prefork).
        app.conf.worker_pool = pools.POOLS[pool]
    else:
        argv.append(f"--pool={pool}")
    if settings.uses_embedded_broker:
        # The embedded broker has no broadcast channel for worker gossip.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv=argv)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply Alembic migrations up to head."""
    from orchestrator.db import migrate

    settings = load()
    migrate.upgrade(settings)
    click.echo("database schema is at head")


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--tenant", required=True)
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--name", default="")
def token_create(tenant: str, role: str, name: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    click.echo(_create_token(load(), tenant, role, name))


@token.command("list")
@click.option("--tenant", default=None, help="Only this tenant's tokens (default: every tenant's).")
def token_list(tenant: str | None) -> None:
    """List tokens: id, tenant, role, name, created, revoked (never the secret: it is not stored)."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker

    settings = load()
    with make_sessionmaker(make_engine(settings))() as session:
        for t in repo.list_tokens(session, tenant):
            revoked = t.revoked_at.isoformat() if t.revoked_at else "-"
            click.echo(f"{t.id}\t{t.tenant_id}\t{t.role}\t{t.name or '-'}\t{t.created_at.isoformat()}\t{revoked}")


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    """Revoke a token by its id (tok_…); it answers 401 from now on."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    with transaction(make_sessionmaker(make_engine(load()))) as session:
        found = repo.revoke_token(session, None, token_id)
    if found is None:
        raise click.ClickException(f"no token {token_id!r}")
    click.echo(f"revoked {token_id}")


def _create_token(settings: Settings, tenant: str, role: str, name: str = "") -> str:
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    with transaction(make_sessionmaker(make_engine(settings))) as session:
        _, plaintext = repo.create_token(session, tenant, role, name)
    return plaintext


def _publish_sample(settings: Settings, tenant: str) -> None:
    from orchestrator import service
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction
    from orchestrator.sample import SAMPLE_DEFINITION, SAMPLE_WORKFLOW_ID

    with transaction(make_sessionmaker(make_engine(settings))) as session:
        if repo.get_workflow(session, tenant, SAMPLE_WORKFLOW_ID) is None:
            service.publish_workflow(session, settings, tenant, SAMPLE_WORKFLOW_ID, SAMPLE_DEFINITION)


@main.group()
def evidence() -> None:
    """Evidence packs (GET /runs/{id}/evidence)."""


@evidence.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-hmac", is_flag=True, help="Check the files' hashes only, not the manifest's HMAC "
              "(when SWITCHYARD_SECRET_KEY is not the key of the installation that made the pack).")
def evidence_verify(file: Path, no_hmac: bool) -> None:
    """Check every file of a pack (output files included) against its manifest; exit 1 naming the problem
    (every file that does not match) and what to do."""
    from orchestrator import evidence as packs

    try:
        found = packs.verify(file, None if no_hmac else load().secret_key)
    except packs.Invalid as exc:
        advice = f"\nWhat to do: {exc.what_to_do}" if exc.what_to_do else ""
        raise click.ClickException(f"{file}: NOT VERIFIED: {exc}{advice}") from None
    outputs = sum(name.startswith(packs.FILES_DIR) for name in found["files"])
    click.echo(f"{file}: OK: {len(found['files'])} files match the manifest"
               f"{'' if no_hmac else ' and its HMAC'} (run {found.get('run_id')}, {outputs} output "
               f"file{'' if outputs == 1 else 's'}, generated {found.get('generated_at')})")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--tenant", default="demo", show_default=True)
@click.option("--concurrency", "-c", default=2, show_default=True, type=click.IntRange(min=1),
              help="Steps the worker runs at once (threads).")
def dev(host: str, port: int, tenant: str, concurrency: int) -> None:
    """API + scheduler + worker on embedded defaults (SQLite file, filesystem broker), with a sample workflow."""
    from orchestrator.db import migrate
    from orchestrator.sample import SAMPLE_WORKFLOW_ID

    settings = load()
    if settings.secret_key == DEV_SECRET_KEY:
        click.echo("note: using the development secret key; set SWITCHYARD_SECRET_KEY outside development")
    click.echo(f"[1/4] migrating {settings.resolved_database_url}")
    migrate.upgrade(settings)
    click.echo(f"[2/4] publishing the sample workflow '{SAMPLE_WORKFLOW_ID}' for tenant '{tenant}'")
    _publish_sample(settings, tenant)
    plaintext, reused = _dev_token(settings, tenant)
    click.echo("[3/4] starting the API, the scheduler and a worker")
    exe = [sys.executable, "-m", "orchestrator.cli"]
    children = [
        # One threaded werkzeug process, as ever: `api --dev`, without the reloader (this supervises).
        subprocess.Popen([*exe, "api", "--host", host, "--port", str(port), "--dev", "--no-reload"]),
        subprocess.Popen([*exe, "scheduler"]),
        subprocess.Popen([*exe, "worker", "--concurrency", str(concurrency), "--pool", "threads", "--loglevel", "WARNING"]),
    ]
    base = f"http://{host}:{port}/api/v1"
    _wait_healthy(base, children)
    body = json.dumps({"workflow_id": SAMPLE_WORKFLOW_ID, "input": SAMPLE_INPUT})
    click.echo(
        f"[4/4] Switchyard is up at {base}\n\n  token: {plaintext}"
        f"{f' (the same as at the last start, kept in {settings.data_dir / DEV_TOKEN_FILE})' if reused else ''}\n"
        f"  web UI: http://{host}:{port}/ (sign in with the token)\n\n"
        f"Start a run of the sample workflow:\n\n"
        f"  curl -s -X POST {base}/runs -H 'Authorization: Bearer {plaintext}' "
        f"-H 'Content-Type: application/json' -d '{body}'\n\n"
        f"Then watch it: curl -s {base}/runs/<run id> -H 'Authorization: Bearer {plaintext}'\n\n"
        f"Or with the command line (docs/cli.md):\n\n"
        f"  export SWITCHYARD_URL=http://{host}:{port} SWITCHYARD_TOKEN={plaintext}\n"
        f"  switchyard runs start {SAMPLE_WORKFLOW_ID} --input '{json.dumps(SAMPLE_INPUT)}' --follow\n\n"
        f"Press Ctrl-C to stop.",
    )
    _supervise(children)


DEV_TOKEN_FILE = "dev-token"
SAMPLE_INPUT = {"ticket": "My invoice is wrong"}


def _dev_token(settings: Settings, tenant: str) -> tuple[str, bool]:
    """The admin token of `switchyard dev`: the one kept in the data dir if it is still live for this
    tenant (so a restart does not make another), else a new one, kept there. (token, reused)."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker

    path = settings.data_dir / DEV_TOKEN_FILE
    kept = path.read_text().strip() if path.exists() else ""
    if kept:
        with make_sessionmaker(make_engine(settings))() as session:
            found = repo.find_token(session, kept)
            if found is not None and found.tenant_id == tenant and found.role == "admin":
                return kept, True
    plaintext = _create_token(settings, tenant, "admin", "switchyard dev")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(plaintext + "\n")
    return plaintext, False


def _wait_healthy(base: str, children: list[subprocess.Popen], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if any(c.poll() is not None for c in children):
            _stop(children)
            raise click.ClickException("a process exited during start-up; see its output above")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    _stop(children)
    raise click.ClickException(f"the API did not answer {base}/healthz within {deadline_s}s; is the port free?")


def _supervise(children: list[subprocess.Popen]) -> None:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop["now"] = True  # the children had the Ctrl-C too
    exited = [] if stop["now"] else [c for c in children if c.poll() is not None]
    _stop(children)
    if exited:
        raise click.ClickException(
            f"`{' '.join(exited[0].args[3:])}` exited with code {exited[0].returncode} (its output is above); the "
            "others were stopped. Run `switchyard dev` again once it is fixed.")


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


from orchestrator.doctor import doctor  # noqa: E402 - a command of its own module, registered here

main.add_command(doctor)

from switchyard import cli as remote_commands  # noqa: E402 - workflows, runs, approvals…: talk to an API

remote_commands.register(main)

if __name__ == "__main__":
    main()
