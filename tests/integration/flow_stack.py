"""A Switchyard of its own for the flow-control tests: a fresh database, a scheduler and workers as
processes, and the API in process, all sharing one dispatch-window configuration (windows are the
installation's: the session's scheduler would admit with its own)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.db import migrate
from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import Api, Processes, close_connections_of, fresh_database, wait_for


@dataclass
class FlowStack:
    settings: Settings
    procs: Processes
    app: object
    sessions: object
    tokens: dict[str, str]

    def api(self, tenant: str) -> Api:
        return Api(self.app.test_client(), self.tokens[tenant])


@contextmanager
def flow_stack(settings: Settings, folder, *, tenants: tuple[str, ...], workers: dict[str, tuple[str, int]],
               windows: dict[str, int], env: dict[str, str] | None = None) -> Iterator[FlowStack]:
    """``workers``: name -> (queues, threads). Every process and the API get ``windows`` and ``env``."""
    from api import create_app
    from orchestrator.broker import make_celery

    tag = secrets.token_hex(3)
    with fresh_database("switchyard_flow") as url:
        extra = {"SWITCHYARD_QUEUE_WINDOWS": json.dumps(windows), "SWITCHYARD_WAKE_QUEUE": f"flow.wake.{tag}",
                 **(env or {})}
        flow = settings.model_copy(update={"database_url": url, "queue_windows": windows,
                                           "wake_queue": f"flow.wake.{tag}"})
        migrate.upgrade(flow)
        sessions = make_sessionmaker(make_engine(flow))
        with transaction(sessions) as session:
            tokens = {t: repo.create_token(session, t, "admin", f"flow {t}")[1] for t in tenants}
        procs = Processes(flow, folder)
        app = None
        try:
            for name, (queues, threads) in workers.items():
                procs.start(f"flow-{tag}-{name}", "worker", "--concurrency", str(threads), "--pool", "threads",
                            "--queues", queues, env={**extra, "SWITCHYARD_DATABASE_URL": url})
            procs.start(f"flow-{tag}-scheduler", "scheduler", env={**extra, "SWITCHYARD_DATABASE_URL": url})
            celery = make_celery(flow)
            pids = {f"switchyard-{procs.procs[f'flow-{tag}-{name}'].pid}@" for name in workers}

            def all_answer() -> bool:
                answered = {name for reply in celery.control.ping(timeout=0.5) for name in reply}
                return all(any(a.startswith(p) for a in answered) for p in pids)

            wait_for(all_answer, 60, "the flow workers to answer ping")
            app = create_app(flow)
            yield FlowStack(flow, procs, app, sessions, tokens)
        finally:
            procs.stop_all()
            if app is not None:
                close_connections_of(app)
            sessions.kw["bind"].dispose()
