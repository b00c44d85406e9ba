"""Engines and sessions: the one place that knows how to connect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.settings import Settings


def make_engine(settings: Settings, **overrides) -> Engine:
    """An engine for the configured database, with the per-backend settings the engine relies on."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **overrides)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # Several processes share the file in `switchyard dev`: WAL lets readers run beside the writer.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            # Let SQLAlchemy, not the driver, decide when a transaction begins (see _begin_immediate).
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # SQLite has no row locks: SELECT … FOR UPDATE is a no-op. Taking the write lock when the
            # transaction begins gives every writer the same serialisation the row lock gives on
            # PostgreSQL, so a run's event sequence cannot be read stale.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    options = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20, "pool_recycle": 1800}
    options.update(overrides)
    return create_engine(url, **options)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class HeldConnectionSessions:
    """A session factory like ``maker``, whose sessions run on a connection each thread keeps open.

    For a worker's statements, a few per step: taking a connection from the pool and giving it back
    costs more CPU than such a statement. A connection found broken (the database restarted) is
    replaced by the next session; the one whose statement failed raised as a pooled one would.
    """

    def __init__(self, maker: sessionmaker[Session]):
        self.maker = maker
        self._held = threading.local()

    def __call__(self) -> Session:
        connection = getattr(self._held, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self._held.connection = self.maker.kw["bind"].connect()
        return self.maker(bind=connection)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def database_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` means the database cannot be reached (down, restarting, connection dropped),
    so the same request may succeed later, as opposed to a bug or a constraint violation."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
