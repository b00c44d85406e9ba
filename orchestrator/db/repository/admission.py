"""The dispatch window's statements (orchestrator/admission.py): the publishers' check of a window before
they publish, and the scheduler's admission of held messages.

A step holds a place in its queue's window while it is `queued` and not ``held``, or `running` on a
worker (with a lease: a for-each or sub-workflow step, running while its items or child run, holds none)
(ix_steps_window). Every writer that queues a step commits it holding a place; before the messages
are published, ``pass_or_hold`` checks the window under the queue's lock and holds what does not fit
(``steps.held`` and ``outbox.held``, with the run's tenant and priority on the outbox row). A hold
only ever gives places back, so a publisher may decide while others have committed steps they have
not checked yet: the count of places can only be too high, never too low, and the window is never
overfilled. ``admit`` turns held messages back into places, under the same lock, in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import and_, delete, exists, func, or_, select, text, tuple_, update
from sqlalchemy.orm import Session

from orchestrator import diagnosis
from orchestrator.core.admission import Held
from orchestrator.db.repository.common import OUTBOX, RUNS, STEPS
from orchestrator.db.session import on_driver
from orchestrator.db.types import db_now
from orchestrator.messages import StepMessage
from orchestrator.states import StepStatus

# The first key of the windows' advisory locks (the second: hashtext(queue)).
LOCK_SPACE = 715_001
# A step takes a place while its message is in the broker (queued, not held) or a worker runs it (running,
# with a lease). A for-each step (its items take the places) or a sub-workflow step (its child run's steps
# do) is running with no lease and takes none: counted, enough of them would fill the window for good with
# steps that end only once the steps they keep out have run. The first two terms are ix_steps_window's.
_IN_WINDOW = (STEPS.c.status.in_([StepStatus.QUEUED.value, StepStatus.RUNNING.value]), STEPS.c.held.is_(False),
              or_(STEPS.c.status == StepStatus.QUEUED.value, STEPS.c.lease_expires_at.is_not(None)))


def _window_in_use(queue: str) -> str:
    """_IN_WINDOW's condition in SQL, on steps ``s`` of the queue the SQL expression ``queue`` names."""
    return (f"s.queue = {queue} AND s.status IN ('queued', 'running') AND NOT s.held\n"
            "      AND (s.status = 'queued' OR s.lease_expires_at IS NOT NULL)")


# The places in use in the window of %(queue)s, in the statements below.
_WINDOW_IN_USE = _window_in_use("%(queue)s")

# The publishers' full check on PostgreSQL (when _ALL_PASS_PG below finds it needed), sent after the
# window's lock in one round trip (_under_window_lock), so it takes its snapshot after the lock is
# held. The messages' own steps are not counted; the first
# :room of them pass if nothing is held in the queue already (the database's order comes first), the
# others are held.
# A step is marked held only with its outbox row, and only while it is `queued` at the row's attempt:
# two publishers may check one message (the sweep republishes a row another publisher is still
# sending), and a step marked held whose row the other then deletes as published, or that a worker
# already took, would wait for an admission that never comes (found by the chaos scenario).
_PASS_OR_HOLD_PG = f"""
WITH own AS (
    SELECT * FROM unnest(%(outbox_ids)s::bigint[], %(run_ids)s::varchar[], %(step_ids)s::varchar[])
        WITH ORDINALITY AS o (outbox_id, run_id, step_id, ord)
), verdict AS (
    SELECT %(window)s::int - (
        SELECT count(*) FROM steps s
        WHERE {_WINDOW_IN_USE}
          AND (s.run_id, s.step_id) NOT IN (SELECT run_id, step_id FROM own)
    ) AS room, NOT EXISTS (SELECT 1 FROM outbox WHERE held AND queue = %(queue)s) AS first_in_line
), decided AS (
    SELECT own.*, NOT (verdict.first_in_line AND own.ord <= verdict.room) AS hold FROM own, verdict
), held_rows AS (
    UPDATE outbox SET held = true, tenant_id = runs.tenant_id, priority = runs.priority
    FROM decided JOIN runs ON runs.id = decided.run_id
    WHERE outbox.id = decided.outbox_id AND decided.hold
    RETURNING outbox.id, outbox.attempt
), marked AS (
    UPDATE steps SET held = decided.hold FROM decided LEFT JOIN held_rows ON held_rows.id = decided.outbox_id
    WHERE steps.run_id = decided.run_id AND steps.step_id = decided.step_id AND steps.held <> decided.hold
      AND (NOT decided.hold OR (steps.status = 'queued' AND steps.attempt = held_rows.attempt))
    RETURNING steps.step_id
)
SELECT count(*) FILTER (WHERE NOT hold) AS passed, (SELECT count(*) FROM held_rows) AS held,
       (SELECT count(*) FROM marked) AS marked
FROM decided
"""


def pass_or_hold(session: Session, queue: str, messages: Sequence[StepMessage], window: int) -> int:
    """Check the window of ``queue`` for ``messages`` (committed, each with its outbox row, all of that
    queue): the first of them that fit pass, if nothing is held in the queue already; the others are
    held. Returns how many pass (the first n of ``messages``)."""
    if session.get_bind().dialect.name == "postgresql":
        return _pass_or_hold_pg(session, queue, messages, window)
    return _pass_or_hold_portable(session, queue, messages, window)


# The common case first, in a statement cheaper to plan (the full one's round trip was mostly its
# planning): whether the messages all pass with nothing to write, that is the room holds them all and
# nothing is held in the queue (so none of their steps is: a step is held only with its outbox row).
# Only otherwise is the full statement sent, which decides again under the lock taken anew.
_ALL_PASS_PG = f"""
SELECT %(window)s::int - (
        SELECT count(*) FROM steps s
        WHERE {_WINDOW_IN_USE}
          AND (s.run_id, s.step_id) NOT IN (SELECT * FROM unnest(%(run_ids)s::varchar[], %(step_ids)s::varchar[]))
    ) >= %(count)s AND NOT EXISTS (SELECT 1 FROM outbox WHERE held AND queue = %(queue)s) AS all_pass
"""

# The queues whose last check in this process held messages: while one has a backlog, the full statement
# goes first (the cheap one would only find it needed). A hint: either order decides the same.
_BACKLOGGED: set[str] = set()


def _pass_or_hold_pg(session: Session, queue: str, messages: Sequence[StepMessage], window: int) -> int:
    params = {"queue": queue, "window": window, "count": len(messages), "outbox_ids": [m.outbox_id for m in messages],
              "run_ids": [m.run_id for m in messages], "step_ids": [m.step_id for m in messages]}
    with on_driver(session) as driver:
        if queue not in _BACKLOGGED and _under_window_lock(driver, _ALL_PASS_PG, params).all_pass:
            return len(messages)
        passed = _under_window_lock(driver, _PASS_OR_HOLD_PG, params).passed
    if passed < len(messages):
        _BACKLOGGED.add(queue)
    else:
        _BACKLOGGED.discard(queue)
    return passed


_LOCK_PG = f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, hashtext(%(queue)s))"


def _under_window_lock(driver: psycopg.Connection, query: str, params: Mapping[str, Any]) -> Any:
    """The first row of ``query`` (a named tuple), read under the window's lock of ``params["queue"]`` in
    one round trip: the lock and the query go in one pipeline, each prepared once per connection (sent
    as one simple query, a check was planned anew every time, most of its round trip). In autocommit
    with no transaction open, the transaction is written out around them, so the lock is held until
    the query has read; else they run in the open one (psycopg's, or one written out on the autocommit
    connection whose BEGIN went: AutocommitSessions.transaction)."""
    own = driver.autocommit and driver.info.transaction_status == TransactionStatus.IDLE
    with _rolled_back_on_error(driver, own):
        with driver.pipeline():
            if own:
                driver.execute("BEGIN")
            driver.execute(_LOCK_PG, params)
            cursor = driver.cursor(row_factory=namedtuple_row)
            cursor.execute(query, params)
            if own:
                driver.execute("COMMIT")
    return cursor.fetchone()


@contextmanager
def _rolled_back_on_error(driver: psycopg.Connection, own: bool = True) -> Iterator[None]:
    """Roll back the transaction the block wrote out (``own``) if it raises before its commit."""
    try:
        yield
    except BaseException:
        if own and not driver.closed and driver.info.transaction_status != TransactionStatus.IDLE:
            with suppress(Exception):  # a connection the server cut is discarded by the pool
                driver.execute("ROLLBACK")
        raise


def _pass_or_hold_portable(session: Session, queue: str, messages: Sequence[StepMessage], window: int) -> int:
    """The same on SQLite, where one writer holds the whole database for its transaction."""
    own = [(m.run_id, m.step_id) for m in messages]
    used = session.execute(select(func.count()).select_from(STEPS).where(
        STEPS.c.queue == queue, *_IN_WINDOW, tuple_(STEPS.c.run_id, STEPS.c.step_id).not_in(own))).scalar_one()
    backlog = session.execute(select(exists().where(OUTBOX.c.held.is_(True), OUTBOX.c.queue == queue))).scalar()
    passed = 0 if backlog else max(0, min(len(messages), window - used))
    if passed:  # statements of a fixed number, however many messages
        session.execute(update(STEPS).where(tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(
            [(m.run_id, m.step_id) for m in messages[:passed]])).values(held=False))
    if passed < len(messages):
        of_run = RUNS.c.id == OUTBOX.c.run_id
        held_rows = session.execute(
            update(OUTBOX).where(OUTBOX.c.id.in_([m.outbox_id for m in messages[passed:]])).values(
                held=True, tenant_id=select(RUNS.c.tenant_id).where(of_run).scalar_subquery(),
                priority=select(RUNS.c.priority).where(of_run).scalar_subquery())
            .returning(OUTBOX.c.run_id, OUTBOX.c.step_id, OUTBOX.c.attempt)).all()
        if held_rows:  # as on PostgreSQL: a step is held with its row, if still queued at its attempt
            session.execute(update(STEPS).where(
                tuple_(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.attempt).in_([tuple(r) for r in held_rows]),
                STEPS.c.status == StepStatus.QUEUED.value).values(held=True))
    return passed


# The admission of one queue on PostgreSQL in two round trips (orchestrator/admission._admit_queue_pg),
# in autocommit with the transaction written out: BEGIN, its bounds, the window's lock, the places held
# by tenant and each tenant's best held messages (no more than the room), sent together in one pipeline;
# then the admission, the deletion of published rows and COMMIT in another. Each statement is one of its
# own, so psycopg prepares it once per connection: planned anew for every admission (as one simple
# query), their planning took more of PostgreSQL's time than their execution.
_BOUNDS_PG = ("SELECT set_config('idle_in_transaction_session_timeout', '2000', true) AS idle, "
              "set_config('statement_timeout', '30000', true) AS statement")
_HOLDERS_PG = f"""
SELECT r.tenant_id, count(*) AS n FROM steps s JOIN runs r ON r.id = s.run_id WHERE {_WINDOW_IN_USE} GROUP BY r.tenant_id
"""
_CANDIDATES_IN_ROOM_PG = f"""
WITH RECURSIVE used AS (SELECT count(*) AS n FROM steps s WHERE {_WINDOW_IN_USE}), t AS (
    (SELECT tenant_id FROM outbox WHERE held AND queue = %(queue)s ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.tenant_id FROM outbox o WHERE o.held AND o.queue = %(queue)s AND o.tenant_id > t.tenant_id
            ORDER BY o.tenant_id LIMIT 1)
    FROM t WHERE t.tenant_id IS NOT NULL
)
SELECT c.* FROM t, LATERAL (
    SELECT * FROM outbox o WHERE o.held AND o.queue = %(queue)s AND o.tenant_id = t.tenant_id
    ORDER BY o.priority, o.id LIMIT greatest(0, %(window)s - (SELECT n FROM used))
) c WHERE t.tenant_id IS NOT NULL
"""
# A chosen message whose step is no longer `queued` and held at that attempt (cancelled, or moved on
# while it waited) is deleted, as ``admit`` does. An admitted row's age starts again: it is now a
# message being published, which the sweep republishes only if it is still there after the delay
# (its age as held is the wait for room, not a lost publish).
_ADMIT_PG = """
WITH chosen AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(run_ids)s::varchar[], %(step_ids)s::varchar[], %(attempts)s::int[])
        AS c (id, run_id, step_id, attempt)
), moved AS (
    UPDATE steps s SET held = false FROM chosen c
    WHERE s.run_id = c.run_id AND s.step_id = c.step_id AND s.attempt = c.attempt AND s.status = 'queued' AND s.held
    RETURNING c.id
), admitted AS (
    UPDATE outbox SET held = false, created_at = clock_timestamp() WHERE id IN (SELECT id FROM moved) RETURNING id
), gone AS (
    DELETE FROM outbox WHERE id IN (SELECT id FROM chosen EXCEPT SELECT id FROM moved) RETURNING id
), forgotten AS (
    DELETE FROM outbox WHERE id = ANY(%(forget)s::bigint[]) AND NOT held RETURNING id
)
SELECT id FROM admitted
"""


class WindowTransaction:
    """One queue's admission on PostgreSQL, in a transaction of two round trips (``window_transaction``)."""

    def __init__(self, driver: psycopg.Connection):
        self.driver = driver

    def _cursor(self) -> psycopg.Cursor:
        return self.driver.cursor(row_factory=namedtuple_row)

    def holders_and_candidates(self, queue: str, window: int) -> tuple[dict[str, int], list[Held]]:
        """Begin, hold the window of ``queue``, and read the places held by tenant and each tenant's best
        held messages (as many as the room, by priority then age)."""
        params = {"queue": queue, "window": window}
        with self.driver.pipeline():
            self.driver.execute("BEGIN")
            self.driver.execute(_BOUNDS_PG)
            self.driver.execute(_LOCK_PG, params)
            holders, candidates = self._cursor().execute(_HOLDERS_PG, params), self._cursor()
            candidates.execute(_CANDIDATES_IN_ROOM_PG, params)
        return ({r.tenant_id: r.n for r in holders.fetchall()},
                [Held(r.id, r.tenant_id or "", r.priority or 5, r.run_id, r.step_id, r.attempt, r.queue,
                      r.soft_time_limit) for r in candidates.fetchall()])

    def admit_and_commit(self, chosen: Sequence[Held], forget: Sequence[int]) -> list[StepMessage]:
        """Admit ``chosen`` as ``admit`` does, delete the outbox rows ``forget`` (published), commit."""
        with self.driver.pipeline():
            admitted = self._cursor().execute(_ADMIT_PG, {
                "ids": [h.id for h in chosen], "run_ids": [h.run_id for h in chosen],
                "step_ids": [h.step_id for h in chosen], "attempts": [h.attempt for h in chosen],
                "forget": list(forget)})
            self.driver.execute("COMMIT")
        ids = {r.id for r in admitted.fetchall()}
        return [StepMessage(h.run_id, h.step_id, h.attempt, h.queue, h.soft_time_limit, outbox_id=h.id)
                for h in chosen if h.id in ids]


@contextmanager
def window_transaction(session: Session) -> Iterator[WindowTransaction]:
    """A window's admission on ``session`` (in autocommit, on PostgreSQL); rolled back if it raises
    before its commit."""
    with on_driver(session) as driver, _rolled_back_on_error(driver):
        yield WindowTransaction(driver)


def lock_window(session: Session, queue: str) -> None:
    """Hold the window of ``queue`` for the rest of the transaction (PostgreSQL; SQLite has one writer)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, hashtext(:queue))"), {"queue": queue})


def window_holders(session: Session, queue: str | None = None) -> dict[tuple[str, str], int]:
    """The places held in windows, by (queue, tenant): of ``queue`` only, if given."""
    query = (select(STEPS.c.queue, RUNS.c.tenant_id, func.count())
             .select_from(STEPS.join(RUNS, RUNS.c.id == STEPS.c.run_id))
             .where(*_IN_WINDOW).group_by(STEPS.c.queue, RUNS.c.tenant_id))
    if queue is not None:
        query = query.where(STEPS.c.queue == queue)
    return {(q, tenant): n for q, tenant, n in session.execute(query)}


def held_counts(session: Session) -> dict[tuple[str, str], int]:
    """The messages held (waiting for room), by (queue, tenant)."""
    query = (select(OUTBOX.c.queue, OUTBOX.c.tenant_id, func.count()).where(OUTBOX.c.held.is_(True))
             .group_by(OUTBOX.c.queue, OUTBOX.c.tenant_id))
    return {(q, tenant): n for q, tenant, n in session.execute(query)}


# The queues with held messages, by a skip scan of ix_outbox_backlog (a few queues, however long the backlog).
_HELD_QUEUES = """
WITH RECURSIVE q AS (
    (SELECT queue FROM outbox WHERE held ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT o.queue FROM outbox o WHERE o.held AND o.queue > q.queue ORDER BY o.queue LIMIT 1)
    FROM q WHERE q.queue IS NOT NULL
)"""
_BACKLOG_QUEUES_PG = text(_HELD_QUEUES + "\nSELECT queue FROM q WHERE queue IS NOT NULL")

# Each tenant's best :per_tenant held messages of :queue (priority, then age), by the same skip scan.
_CANDIDATES_PG = text("""
WITH RECURSIVE t AS (
    (SELECT tenant_id FROM outbox WHERE held AND queue = :queue ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.tenant_id FROM outbox o WHERE o.held AND o.queue = :queue AND o.tenant_id > t.tenant_id
            ORDER BY o.tenant_id LIMIT 1)
    FROM t WHERE t.tenant_id IS NOT NULL
)
SELECT c.* FROM t, LATERAL (
    SELECT * FROM outbox o WHERE o.held AND o.queue = :queue AND o.tenant_id = t.tenant_id
    ORDER BY o.priority, o.id LIMIT :per_tenant
) c WHERE t.tenant_id IS NOT NULL
""")


# The places in use in the window of each queue with held messages, in one statement: the scheduler's
# look for room before it takes any lock (no room, no transaction). The count is ix_steps_window's.
_BACKLOG_IN_USE_PG = text(_HELD_QUEUES + f"""
SELECT q.queue, (
    SELECT count(*) FROM steps s
    WHERE {_window_in_use("q.queue")}
) AS in_use
FROM q WHERE q.queue IS NOT NULL
""")


def backlog_in_use(session: Session) -> dict[str, int]:
    """The places in use in the window of each queue that has held messages (not locked: a look)."""
    if session.get_bind().dialect.name == "postgresql":
        return {queue: n for queue, n in session.execute(_BACKLOG_IN_USE_PG)}
    queues = backlog_queues(session)
    used = dict(session.execute(select(STEPS.c.queue, func.count()).where(STEPS.c.queue.in_(queues), *_IN_WINDOW)
                                .group_by(STEPS.c.queue)).all()) if queues else {}
    return {queue: used.get(queue, 0) for queue in queues}


def backlog_queues(session: Session) -> list[str]:
    """The queues that have held messages."""
    if session.get_bind().dialect.name == "postgresql":
        return list(session.execute(_BACKLOG_QUEUES_PG).scalars())
    return list(session.execute(select(OUTBOX.c.queue).where(OUTBOX.c.held.is_(True)).distinct()).scalars())


def held_candidates(session: Session, queue: str, per_tenant: int) -> list[Held]:
    """Each tenant's best ``per_tenant`` held messages of ``queue``, by priority then age."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(_CANDIDATES_PG, {"queue": queue, "per_tenant": per_tenant}).all()
    else:
        ranked = (select(OUTBOX, func.row_number().over(partition_by=OUTBOX.c.tenant_id,
                                                        order_by=(OUTBOX.c.priority, OUTBOX.c.id)).label("rank"))
                  .where(OUTBOX.c.held.is_(True), OUTBOX.c.queue == queue).subquery())
        rows = session.execute(select(ranked).where(ranked.c.rank <= per_tenant)).all()
    return [Held(r.id, r.tenant_id or "", r.priority or 5, r.run_id, r.step_id, r.attempt, r.queue,
                 r.soft_time_limit) for r in rows]


def admit(session: Session, chosen: Sequence[Held]) -> list[StepMessage]:
    """Admit the held messages ``chosen`` (the caller holds their queue's window): each whose step is
    still `queued` at that attempt takes a place and is returned, to publish; the others (the step was
    cancelled or moved on while it waited) are deleted."""
    if not chosen:
        return []
    keys = [(h.run_id, h.step_id, h.attempt) for h in chosen]
    moved = {(r.run_id, r.step_id) for r in session.execute(
        update(STEPS).where(tuple_(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.attempt).in_(keys),
                            STEPS.c.status == StepStatus.QUEUED.value, STEPS.c.held.is_(True))
        .values(held=False).returning(STEPS.c.run_id, STEPS.c.step_id))}
    admitted = [h for h in chosen if (h.run_id, h.step_id) in moved]
    if admitted:
        session.execute(update(OUTBOX).where(OUTBOX.c.id.in_([h.id for h in admitted]))
                        .values(held=False, created_at=db_now()))
    gone = [h.id for h in chosen if (h.run_id, h.step_id) not in moved]
    if gone:
        session.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(gone)))
    return [StepMessage(h.run_id, h.step_id, h.attempt, h.queue, h.soft_time_limit, outbox_id=h.id) for h in admitted]


def forget_orphans(session: Session, limit: int = 1000) -> int:
    """Delete up to ``limit`` held outbox rows whose step is no longer `queued` at that attempt (the
    sweep's tidy-up: an admission deletes such a row anyway when it comes to it). Rows another
    transaction holds are skipped, not waited for: under a flood the scheduler must not wait on
    publishers (a plain DELETE here took 230 ms of each sweep under 6,000 held messages)."""
    step = and_(STEPS.c.run_id == OUTBOX.c.run_id, STEPS.c.step_id == OUTBOX.c.step_id,
                STEPS.c.attempt == OUTBOX.c.attempt, STEPS.c.status == StepStatus.QUEUED.value)
    orphans = (select(OUTBOX.c.id).where(OUTBOX.c.held.is_(True), ~exists().where(step)).limit(limit)
               .with_for_update(skip_locked=True))
    return session.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(orphans.scalar_subquery()))).rowcount


def held_of_run(session: Session, run_id: str) -> list[Any]:
    """The run's held messages (step id, queue, when it was queued) for its diagnosis."""
    return list(session.execute(select(OUTBOX.c.step_id, OUTBOX.c.queue, OUTBOX.c.created_at)
                                .where(OUTBOX.c.run_id == run_id, OUTBOX.c.held.is_(True))).all())


def held_window(session: Session, step: Any) -> diagnosis.WindowFacts | None:
    """For a held step's diagnosis: the places in use in its queue's window and the held messages of
    the queue ahead of it (higher priority, or as high and older); None if its message is not held."""
    mine = session.execute(select(OUTBOX.c.id, OUTBOX.c.priority).where(
        OUTBOX.c.run_id == step.run_id, OUTBOX.c.step_id == step.step_id, OUTBOX.c.attempt == step.attempt,
        OUTBOX.c.held.is_(True))).first()
    if mine is None:
        return None
    ahead = session.execute(select(func.count()).select_from(OUTBOX).where(
        OUTBOX.c.held.is_(True), OUTBOX.c.queue == step.queue,
        (OUTBOX.c.priority < mine.priority) | ((OUTBOX.c.priority == mine.priority) & (OUTBOX.c.id < mine.id)))
    ).scalar_one()
    in_use = session.execute(select(func.count()).select_from(STEPS).where(STEPS.c.queue == step.queue, *_IN_WINDOW)
                             ).scalar_one()
    return diagnosis.WindowFacts(in_use=in_use, size=None, held_ahead=ahead)
