"""Engines and sessions: the one place that knows how to connect."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import sqlalchemy
from psycopg import pq
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.settings import Settings


def make_engine(settings: Settings, **overrides) -> Engine:
    """An engine for the configured database, with the per-backend settings the engine relies on."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = _create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **overrides)

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
    return _create_engine(url, **options)


def _create_engine(url: str, **options) -> Engine:
    # Looked up when called: with tracing on, the SQLAlchemy instrumentation replaces it (orchestrator.tracing).
    return sqlalchemy.create_engine(url, **options)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class HeldConnectionSessions:
    """A session factory like ``maker``, whose sessions run on a connection each thread keeps open.

    For a worker's statements, a few per step: taking a connection from the pool and giving it back
    costs more CPU than such a statement. A connection found broken (the database restarted) or left
    busy (see ``left_busy``) is replaced by the next session; the one whose statement failed raised
    as a pooled one would.
    """

    def __init__(self, maker: sessionmaker[Session]):
        self.maker = maker
        self._held = threading.local()
        # Every thread's, for close_all; weakly, so as to keep none of a thread that ended alive.
        self._every: weakref.WeakSet[sqlalchemy.Connection] = weakref.WeakSet()
        self._every_lock = threading.Lock()

    def __call__(self) -> Session:
        connection = getattr(self._held, "connection", None)
        if connection is not None:
            self.drop_if_busy()
        if connection is None or connection.closed or connection.invalidated:
            new = self.maker.kw["bind"].connect()
            with self._every_lock:
                self._every.add(new)
            connection = self._held.connection = new
        return self.maker(bind=connection)

    def close_all(self) -> None:
        """Give back every thread's connection (for an owner that is done with these sessions, their
        threads stopped: a connection a thread holds is not the pool's to close)."""
        with self._every_lock:
            every, self._every = list(self._every), weakref.WeakSet()
        for connection in every:
            with suppress(Exception):  # one the server cut is closed all the same
                connection.close()

    def drop_if_busy(self) -> None:
        """Invalidate the calling thread's connection if it was left mid-command: a pooled one would be
        reset or dropped on its way back to the pool, a held one never goes back."""
        connection = getattr(self._held, "connection", None)
        if connection is not None and not (connection.closed or connection.invalidated) and left_busy(connection):
            connection.invalidate()
            connection.close()  # its slot back to the pool


def left_busy(connection: sqlalchemy.Connection) -> bool:
    """Whether a PostgreSQL connection is still in a command, its answer unread: what an exception
    raised while psycopg waited leaves behind (a signal handler's, as Celery's soft time limit raises
    in whatever the worker's child is doing). Every later command on it fails with "another command
    is already in progress" (psycopg cancels and drains only on KeyboardInterrupt)."""
    driver = connection.connection.driver_connection
    return isinstance(driver, psycopg.Connection) and driver.pgconn.transaction_status in _BUSY


# Not INTRANS or INERROR: a transaction still open is its session's to end.
_BUSY = frozenset({pq.TransactionStatus.ACTIVE, pq.TransactionStatus.UNKNOWN})


class AutocommitSessions:
    """Sessions for work done in single statements, each of which commits on its own: one session per
    thread, kept from use to use, on a connection the thread keeps (HeldConnectionSessions) in
    autocommit. ``maker`` must make sessions on an engine in AUTOCOMMIT.

    For a worker's statements around its tasks (the claim, a success written as claimed, an outbox
    row's deletion): a session's begin, commit and close cost about as much client CPU as what the
    claim does besides (a claim in process: 0.36 ms of client CPU in a session of its own, 0.21 in a
    kept one). In autocommit a commit has nothing to send, so there is none: after each use, the
    functions in ``after_use`` get the session instead (the live streams' publisher takes what the
    statements wrote to the event log, as it does after a commit). A use that raised drops its
    session; the next one starts anew, on a new connection if the error broke the held one.

    With ``held=False`` each use has a session of its own on a connection from the pool, given back
    after the use: for processes whose threads come and go (a development server starts one per
    request), where a connection kept per thread would outlive its thread until a garbage collection.
    """

    def __init__(self, maker: sessionmaker[Session], *, held: bool = True):
        self.held = HeldConnectionSessions(maker)
        self.maker = maker
        self.keep = held
        self.after_use: list[Callable[[Session], None]] = []
        self._kept = threading.local()
        # A statement SQLAlchemy sends in a transaction() whose BEGIN is still to go sends it first.
        event.listen(maker.kw["bind"], "before_cursor_execute", _begin_if_pending)

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        if not self.keep:
            with self._pooled() as session:
                yield session
            return
        session: Session | None = getattr(self._kept, "session", None)
        if session is None or session.bind.closed or session.bind.invalidated:
            session = self._kept.session = self.held()
        failed = True
        try:
            yield session
            session.flush()  # ORM changes, if any, as a commit would write them (in autocommit, committed)
            failed = False
        finally:
            # What committed before an error was committed all the same: it is handed on too.
            for hook in self.after_use:
                hook(session)
            if failed:
                self._kept.session = None
                # First: a rollback on a connection left busy fails, and its error would hide this one.
                self.held.drop_if_busy()
                session.close()
            else:
                session.expunge_all()  # nothing it loaded may be served stale to the next use

    def close(self) -> None:
        """Give back the connections every thread keeps (for an owner whose threads are done with them)."""
        self.held.close_all()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction written out on this thread's connection in autocommit (PostgreSQL): committed
        when the block ends, rolled back if it raises. Its BEGIN is not sent on its own but with the
        first statement run on the driver (``rows_on_driver``, ``first_row_on_driver``), in one
        pipeline: a round trip less than psycopg's own transaction, whose BEGIN it sends and waits for
        before the first statement, even in a pipeline. The worker's outcome (a chain's every step)
        starts with such a statement, its run's lock."""
        with self() as session:
            connection = session.connection()
            connection.info[_BEGIN_PENDING] = True
            try:
                yield session
                session.flush()
                if not connection.info.pop(_BEGIN_PENDING, False):  # nothing sent, nothing to commit
                    with on_driver(session, "COMMIT") as driver:
                        driver.execute("COMMIT")
            except BaseException:
                if not connection.info.pop(_BEGIN_PENDING, False):
                    _roll_back_written_out(connection)
                # Nothing of it committed: the live streams get none of the events it wrote. (Imported
                # here: the repository imports this module.)
                from orchestrator.db.repository.events import WRITTEN_EVENTS

                session.info.pop(WRITTEN_EVENTS, None)
                raise

    @contextmanager
    def _pooled(self) -> Iterator[Session]:
        """A session of its own for this use, on a connection from the pool, given back after."""
        session = self.maker()
        try:
            yield session
            session.flush()
        finally:
            for hook in self.after_use:
                hook(session)
            session.close()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def first_row_on_driver(session: Session, sql: str, params: Mapping[str, Any]) -> Any:
    """Run one PostgreSQL statement (placeholders ``%(name)s``) straight on the session's psycopg
    connection, prepared, and return its first row as a named tuple, or None; in the session's
    transaction, like any of its statements.

    For the statement on a worker's path between two tasks (the claim): SQLAlchemy's execution of it
    (statement cache, parameter and result processing, the session's bookkeeping) cost five times the
    client CPU psycopg does (0.7 against 0.13 ms). The result's values are psycopg's own: JSON as
    Python values, timestamps as aware datetimes in the connection's time zone. An error is raised as
    SQLAlchemy's (DBAPIError), and a connection it broke is invalidated, as SQLAlchemy would.
    """
    with _driver_cursor(session, sql, params, namedtuple_row) as cursor:
        return cursor.fetchone()


class CompiledOnDriver:
    """A SQLAlchemy Core statement to run with ``rows_on_driver``, compiled for PostgreSQL (psycopg) at
    its first run and kept: its SQL text, the bind parameters SQLAlchemy would process (JSON wrapped
    for psycopg, a type's own conversion) with their processors, and the result columns it would
    convert."""

    __slots__ = ("statement", "compiled", "sql", "processors", "converters")

    def __init__(self, statement):
        self.statement, self.compiled = statement, None

    def _compile(self, dialect) -> None:
        self.compiled = self.statement.compile(dialect=dialect)
        self.sql = self.compiled.string
        # SQLAlchemy's execution applies these to the parameters (DefaultExecutionContext); so do we.
        self.processors = dict(self.compiled._bind_processors)
        # And the result columns SQLAlchemy converts on the way out (UTCDateTime: aware, in UTC, where
        # psycopg answers in the connection's time zone), by position.
        self.converters = [(position, convert) for position, column in enumerate(self.compiled._result_columns)
                           if (convert := column[3]._cached_result_processor(dialect, None)) is not None]

    def row(self, row: Any) -> Any:
        """A row as SQLAlchemy's execution would answer it (its result columns converted)."""
        if not self.converters:
            return row
        values = list(row)
        for position, convert in self.converters:
            values[position] = convert(values[position])
        return type(row)._make(values)

    def rows(self, cursor: psycopg.Cursor) -> list[Any]:
        """Every row the cursor that ran it holds, as SQLAlchemy's execution would answer them."""
        return [self.row(row) for row in cursor.fetchall()] if cursor.description is not None else []

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with the statement's own bound values (its literals) added, processed."""
        values = self.compiled.construct_params(params)
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        return values


def rows_on_driver(session: Session, statement: CompiledOnDriver, params: Mapping[str, Any]) -> list[Any]:
    """Every row (named tuples) of a Core statement run straight on the session's psycopg connection,
    prepared (as ``first_row_on_driver``), in the session's transaction: for the statements every
    worker's outcome sends, where SQLAlchemy's execution costs several times psycopg's client CPU.
    The session's pending ORM changes are flushed first, as its own execute would."""
    if statement.compiled is None:
        statement._compile(session.get_bind().dialect)
    session.flush()
    with _driver_cursor(session, statement.sql, statement.parameters(params), namedtuple_row) as cursor:
        return statement.rows(cursor)


@contextmanager
def sent_together(session: Session) -> Iterator[None]:
    """The statements sent with ``send_on_driver`` in the block go to the server together, in one
    pipeline (after a written-out transaction's BEGIN still to go): one round trip, when the block
    ends; their rows are read after it (``Sent.rows``). An error of any of them is raised when the
    block ends, as SQLAlchemy's, and the ones after it were not run."""
    session.flush()  # ORM changes first: SQLAlchemy's statements cannot run in a pipeline
    with on_driver(session) as driver, driver.pipeline():
        _send_pending_begin(session, driver)
        yield


class Sent:
    """A statement sent in ``sent_together``'s pipeline, its rows to read once the pipeline ended."""

    __slots__ = ("statement", "cursor", "session")

    def __init__(self, statement: CompiledOnDriver, cursor: psycopg.Cursor, session: Session):
        self.statement, self.cursor, self.session = statement, cursor, session

    def rows(self) -> list[Any]:
        """Every row (named tuples, as ``rows_on_driver`` answers them)."""
        with on_driver(self.session, self.statement.sql), self.cursor as cursor:
            return self.statement.rows(cursor)


def send_on_driver(session: Session, statement: CompiledOnDriver, params: Mapping[str, Any]) -> Sent:
    """Send a Core statement (as ``rows_on_driver`` runs it) in the pipeline of ``sent_together``."""
    if statement.compiled is None:
        statement._compile(session.get_bind().dialect)
    return Sent(statement, _sent_cursor(session, statement.sql, statement.parameters(params)), session)


def send_first_row_on_driver(session: Session, sql: str, params: Mapping[str, Any]) -> Callable[[], Any]:
    """Send a PostgreSQL statement (as ``first_row_on_driver`` runs it) in the pipeline of
    ``sent_together``; its first row (a named tuple) or None, to read once the pipeline ended."""
    cursor = _sent_cursor(session, sql, params)

    def first_row() -> Any:
        with on_driver(session, sql), cursor:
            return cursor.fetchone()
    return first_row


def _sent_cursor(session: Session, sql: str, params: Mapping[str, Any]) -> psycopg.Cursor:
    """A cursor that has sent ``sql`` (prepared) in the pipeline of ``sent_together``, its rows to read later."""
    with on_driver(session, sql, params) as driver:
        cursor = driver.cursor(row_factory=namedtuple_row)
        cursor.execute(sql, params, prepare=True)
    return cursor


@contextmanager
def _driver_cursor(session: Session, sql: str, params: Mapping[str, Any], row_factory: Any) -> Iterator[Any]:
    """A psycopg cursor of the session's connection that has run ``sql`` (prepared); psycopg's errors
    raised as SQLAlchemy's, a connection they broke invalidated. The first statement of a transaction
    written out (AutocommitSessions.transaction) goes with its BEGIN."""
    with on_driver(session, sql, params) as driver, driver.cursor(row_factory=row_factory) as cursor:
        if session.connection().info.get(_BEGIN_PENDING):
            with driver.pipeline():  # both in one round trip; the results are read after its sync
                _send_pending_begin(session, driver)
                cursor.execute(sql, params, prepare=True)
        else:
            cursor.execute(sql, params, prepare=True)
        yield cursor


# The info key of a connection whose written-out transaction (AutocommitSessions.transaction) has not
# sent its BEGIN yet.
_BEGIN_PENDING = "switchyard.begin_pending"


def _send_pending_begin(session: Session, driver: psycopg.Connection) -> None:
    """Send (in the caller's pipeline) the BEGIN of a written-out transaction that has not gone yet."""
    if session.connection().info.pop(_BEGIN_PENDING, False):
        driver.execute("BEGIN")


def _begin_if_pending(connection: sqlalchemy.Connection, cursor, *_args) -> None:
    if connection.info.pop(_BEGIN_PENDING, False):
        cursor.connection.execute("BEGIN")


def _roll_back_written_out(connection: sqlalchemy.Connection) -> None:
    """Roll back a written-out transaction that raised; a connection that cannot be brought back to
    idle (broken, or left mid-command by a signal's exception) is invalidated, so that no later use
    of it runs inside the transaction left open."""
    driver = connection.connection.driver_connection
    if not driver.closed and driver.pgconn.transaction_status in (pq.TransactionStatus.INTRANS,
                                                                  pq.TransactionStatus.INERROR):
        with suppress(psycopg.Error):
            driver.execute("ROLLBACK")
    if driver.closed or driver.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        connection.invalidate()


@contextmanager
def on_driver(session: Session, sql: str | None = None, params: Mapping[str, Any] | None = None,
              ) -> Iterator[psycopg.Connection]:
    """The session's psycopg connection, for statements sent past SQLAlchemy (``sql``, if one, for the
    error's message): psycopg's errors are raised as SQLAlchemy's (DBAPIError), which callers catch,
    and a connection they broke is invalidated, as SQLAlchemy would."""
    connection = session.connection()
    driver = connection.connection.driver_connection
    try:
        yield driver
    except psycopg.Error as exc:
        if driver.broken:
            connection.invalidate(exc)
        raise DBAPIError.instance(sql, params, exc, psycopg.Error, connection_invalidated=driver.broken) from exc


def database_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` means the database cannot be reached (down, restarting, connection dropped),
    so the same request may succeed later, as opposed to a bug or a constraint violation."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
