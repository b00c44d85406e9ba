"""The Flask API: ``create_app(settings)`` builds it; nothing happens at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from celery import Celery
from flask import Flask, g, request
from sqlalchemy.orm import Session, sessionmaker

from api.auth import TokenCache
from orchestrator import broker, logs, streams, tracing
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db.session import AutocommitSessions, make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings, load


@dataclass
class Services:
    """What the views need, built once per app and reachable as ``current_app.extensions['switchyard']``."""

    settings: Settings
    sessions: sessionmaker[Session]
    doorbell: broker.Doorbell
    celery: Celery
    catalog: DefinitionCatalog
    bus: streams.Bus | None
    # Broker calls off the request path: a request never waits on the broker (the outbox and the sweep cover a lost one).
    courier: broker.Courier
    # On PostgreSQL, sessions in autocommit for work done in single statements (a token's lookup, a
    # run's start): no ping, no BEGIN and no COMMIT (_statement_sessions).
    statements: AutocommitSessions | None = None
    # With SWITCHYARD_TOKEN_CACHE_S, the token lookups this process reuses (api.auth.TokenCache).
    tokens: TokenCache | None = None

    def dispose(self) -> None:
        """Close the database connections the app's pools keep (an app made for a while, as in tests)."""
        self.sessions.kw["bind"].dispose()
        if self.statements is not None:
            self.statements.close()
            self.statements.maker.kw["bind"].dispose()

    def at_once(self) -> AbstractContextManager[Session]:
        """A session for work whose writes are one statement: in autocommit where there are such
        sessions (each statement commits on its own), else a transaction."""
        return self.statements() if self.statements is not None else transaction(self.sessions)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for a few reads."""
        if self.statements is not None:
            with self.statements() as session:
                yield session
        else:
            with self.sessions() as session:
                yield session

    def after_commit(self, effects) -> None:
        """Signal what a committed control asks for: wake the scheduler, revoke stopped tasks."""
        if effects.ring:
            self.doorbell.ring(effects.run_id)
        if effects.revoke:
            self.courier.send(lambda: broker.revoke(self.celery, effects.revoke), "revoke")


def create_app(settings: Settings | None = None, *, server_threads: int | None = None) -> Flask:
    """The API for ``settings`` (from the environment if None), its services built and every route and
    hook registered.

    ``server_threads``: given by a server whose request threads live as long as the app (gunicorn's
    gthread workers: that many threads), each of which then keeps a database connection for its
    one-statement work. None for a server whose threads come and go (werkzeug's starts one per
    request): those sessions take a connection from a pool for each use."""
    settings = settings or load()
    app = _flask_app(settings)
    tracing.configure("switchyard-api", flask_app=app)  # off unless OTEL_TRACES_EXPORTER; before the engines
    app.extensions["switchyard"] = _services(settings, server_threads)
    _register_routes(app, settings)
    return app


def _flask_app(settings: Settings) -> Flask:
    """A bare Flask app configured from ``settings``: body limit, the web UI's session cookie, JSON order."""
    # No static route: every route of this app is in api.auth.ROUTE_ROLES.
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # The web UI's session cookie: signed with the secret key, never readable by scripts.
    app.config.update(SECRET_KEY=settings.secret_key, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=settings.ui_secure_cookies, SESSION_COOKIE_NAME="switchyard_session",
                      PERMANENT_SESSION_LIFETIME=settings.ui_session_s)
    app.json.sort_keys = False
    return app


def _services(settings: Settings, server_threads: int | None) -> Services:
    """The broker, database and event-bus connections the views share, with the stream publisher installed."""
    celery = broker.make_celery(settings)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    statements = _statement_sessions(settings, server_threads) if engine.dialect.name == "postgresql" else None
    bus = streams.make_bus(settings)
    streams.install_publisher([sessions] + ([statements] if statements else []), bus)
    courier = broker.Courier("switchyard-broker-calls")
    return Services(
        settings=settings,
        sessions=sessions,
        doorbell=broker.Doorbell(celery, settings.wake_queue, courier),
        celery=celery,
        catalog=DefinitionCatalog(),
        bus=bus,
        courier=courier,
        statements=statements,
        tokens=TokenCache(settings.token_cache_s) if settings.token_cache_s > 0 else None,
    )


def _statement_sessions(settings: Settings, server_threads: int | None) -> AutocommitSessions:
    """Sessions in autocommit for the API's one-statement work (a token's lookup, a run's start, the
    broker thread's window check), on connections of a pool of their own, without a ping: a ping is a
    round trip, as much as the statement. A connection the database dropped fails its one request
    (503, retry) and is replaced.

    With ``server_threads`` (threads that live as long as the app), each thread keeps its session and
    connection: a request's two uses took a fifth of its CPU to check a connection out of the pool and
    back twice. The pool then has a place for every one of them and the broker thread. Otherwise each
    use takes one from the pool: a connection kept by a thread that ended would stay open until a
    garbage collection."""
    size = max(5, server_threads + 2) if server_threads else 5
    engine = make_engine(settings, pool_pre_ping=False, pool_size=size, max_overflow=15)
    return AutocommitSessions(make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")),
                              held=server_threads is not None)


def _register_routes(app: Flask, settings: Settings) -> None:
    """Every blueprint, then the hooks in the order they must run: auth, log context, rate limits."""
    from api import (
        analytics,
        approvals,
        auth,
        controls,
        errors,
        events,
        evidence,
        files,
        forks,
        limits,
        live,
        monitoring,
        openapi,
        policies,
        runs,
        schedules,
        system,
        tokens,
        webhooks,
        workflows,
    )
    from api.ui import schedules as _ui_schedules  # noqa: F401 - adds the schedules' routes to the UI's blueprint
    from api.ui import views as ui

    errors.register(app)
    for blueprint in (system.bp, workflows.bp, runs.bp, controls.bp, approvals.bp, events.bp, tokens.bp,
                      webhooks.bp, files.bp, forks.bp, openapi.bp, policies.bp, monitoring.bp, analytics.bp, live.bp, evidence.bp):
        app.register_blueprint(blueprint, url_prefix="/api/v1")
    app.register_blueprint(schedules.bp, url_prefix="/api/v1")
    app.register_blueprint(ui.bp)  # the web UI at /; before auth, whose hook it precedes (cookie, not token)
    auth.register(app)  # after the blueprints: it checks that every endpoint has an access rule
    _log_context(app)  # after auth, whose hook names the caller
    limits.register(app, settings)  # after auth: the rate limit counts per tenant


def _log_context(app: Flask) -> None:
    """Every log line of a request names the caller's tenant, and the run its URL names."""

    @app.before_request
    def _bind():  # runs after authentication, which registered its hook first
        principal = g.get("principal")
        g.log_token = logs.bind(tenant=principal.tenant_id if principal else None,
                                run_id=(request.view_args or {}).get("run_id"))

    @app.teardown_request
    def _unbind(_exc):
        token = g.pop("log_token", None)
        if token is not None:
            try:
                logs.unbind(token)
            except ValueError:  # a streamed response may finish in another context; it ends with it
                pass
