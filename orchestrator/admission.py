"""The dispatch window (docs/flow-control.md): the broker holds a bounded number of step messages per
queue; the rest wait in the database, held, and are admitted fairly by the scheduler.

Two kinds of caller:
- publishers (the API after a start, a worker after an outcome, the scheduler after a pass) check the
  window before they publish (``checked``): what fits goes to the broker at once, the rest is held and
  the scheduler is woken. A worker whose step queued the one next step of its chain on the same queue
  hands its place over and publishes without a check (the place it held is the one the next step takes).
- the scheduler's ``admit_backlog``, woken by such a ring or while a backlog is left, fills every
  queue's room from the held messages (core.admission.choose: fair across tenants, then priority, age).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import broker
from orchestrator.core import admission as decide
from orchestrator.db.repository import admission as rows
from orchestrator.db.repository.scheduling import delete_outbox
from orchestrator.db.session import transaction
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# The app's conf keys the publishers read their windows from (set by broker.make_celery).
CONF_WINDOW, CONF_QUEUE_WINDOWS, CONF_WAKE_QUEUE = "switchyard_window", "switchyard_queue_windows", "switchyard_wake"


def _window(celery: Celery, queue: str) -> int:
    conf = celery.conf
    return (conf.get(CONF_QUEUE_WINDOWS) or {}).get(queue, conf.get(CONF_WINDOW) or 32)


def checked(celery: Celery, one_statement: Callable[[], AbstractContextManager[Session]],
            messages: Sequence[StepMessage], *, handoff_queue: str | None = None) -> list[StepMessage]:
    """The messages (of steps a committed transaction queued, with their outbox rows) that fit their
    queues' windows now, to publish; the others are held in the database and the scheduler is woken
    to admit them. A lone message on ``handoff_queue`` (the queue of the step whose end queued it)
    takes its predecessor's place: no check. Raises the database's errors (the rows stay for the sweep)."""
    if len(messages) == 1 and messages[0].queue == handoff_queue:
        return list(messages)
    by_queue: dict[str, list[StepMessage]] = {}
    for message in messages:
        by_queue.setdefault(message.queue, []).append(message)
    passed: list[StepMessage] = []
    for queue in sorted(by_queue):  # one lock at a time, in one order
        group = by_queue[queue]
        with one_statement() as session:
            fits = rows.pass_or_hold(session, queue, group, _window(celery, queue))
        passed += group[:fits]
    if len(passed) < len(messages):
        _doorbell(celery).ring("window")
    return passed


_DOORBELLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _doorbell(celery: Celery) -> broker.Doorbell:
    bell = _DOORBELLS.get(celery)
    if bell is None:
        bell = _DOORBELLS[celery] = broker.Doorbell(celery, celery.conf.get(CONF_WAKE_QUEUE) or "switchyard.wake")
    return bell


@dataclass
class Admission:
    """What an ``admit_backlog`` did: the messages admitted (to publish), the queues where held
    messages are left, and each queue with held messages as found (for the pace of the next look)."""

    messages: list[StepMessage] = field(default_factory=list)
    left_in: set[str] = field(default_factory=set)
    looked: list[decide.Looked] = field(default_factory=list)
    forgotten: int = 0


def admit_backlog(sessions: sessionmaker[Session], settings: Settings, published: Sequence[int] = (), *,
                  statements: Callable[[], AbstractContextManager[Session]] | None = None,
                  queues: Sequence[str] | None = None, windows: Mapping[str, int] | None = None) -> Admission:
    """Look for room in the windows of the queues with held messages (one statement, no lock, no
    transaction); fill the room of each that has some (a transaction per queue, under its window's
    lock). A full window costs the look only. The outbox rows ``published`` (their messages sent) are
    deleted by the first transaction, if one is made (``forgotten``: how many).

    ``statements``: sessions in autocommit for the look and the admissions on PostgreSQL (the
    scheduler's, on a connection it keeps), else each takes one from the pool. ``queues`` (on
    PostgreSQL): the queues known to have held messages, admitted into without the look, each in its
    transaction even if its window is full (which then admits nothing). ``windows``: the windows the
    scheduler stretched (core.admission.stretched), by queue; the others are their own size."""
    one_statement = statements or (lambda: _autocommit(sessions))
    if queues is None:
        with one_statement() as session:
            in_use: dict[str, int | None] = dict(rows.backlog_in_use(session))
            on_postgres = session.get_bind().dialect.name == "postgresql"
    else:
        in_use, on_postgres = dict.fromkeys(queues), True  # not looked at: None
    done = Admission()
    for queue, used in sorted(in_use.items()):
        window = (windows or {}).get(queue) or settings.window_of(queue)
        messages, more = [], True  # a full window keeps its held messages
        if used is None or decide.has_room(used, window):
            forget = published if not done.forgotten else ()
            if on_postgres:
                with one_statement() as session:
                    messages, more = _admit_queue_pg(session, settings, queue, window, forget)
            else:
                with transaction(sessions) as session:
                    rows.lock_window(session, queue)
                    messages, more = _admit_queue(session, settings, queue, window)
                    if forget:
                        delete_outbox(session, forget)
            done.forgotten = len(published)
        done.messages += messages
        if more:
            done.left_in.add(queue)
        done.looked.append(decide.Looked(window, len(messages), queue))
    return done


@contextmanager
def _autocommit(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for one read on its own, in autocommit: no BEGIN nor COMMIT to send (a transaction
    if the sessions are not bound to an engine)."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, Engine):
        with transaction(sessions) as session:
            yield session
        return
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with Session(bind=connection) as session:
            yield session


def _admit_queue(session: Session, settings: Settings, queue: str, window: int) -> tuple[list[StepMessage], bool]:
    """Admit into the room of ``queue`` (its window, of ``window`` places, held); True beside them if
    some are left held."""
    holders = {tenant: n for (_, tenant), n in rows.window_holders(session, queue).items()}
    room = window - sum(holders.values())
    if room <= 0:
        return [], True
    candidates = rows.held_candidates(session, queue, room)
    chosen = decide.choose(room, holders, candidates, weights=settings.tenant_weights)
    messages = rows.admit(session, chosen)
    # Not every candidate fitted, some were gone (their steps moved on), or the room is filled and
    # more may wait beyond the candidates read: look again soon.
    return messages, len(candidates) > len(messages) or len(messages) >= room


def _admit_queue_pg(session: Session, settings: Settings, queue: str, window: int,
                    forget: Sequence[int]) -> tuple[list[StepMessage], bool]:
    """``_admit_queue`` on PostgreSQL in two round trips: the window's lock, its holders and the
    candidates in one; the admission, the deletion of the outbox rows ``forget`` and the commit in the
    other (the same work in seven round trips was most of the scheduler's time under a backlog)."""
    with rows.window_transaction(session) as trip:
        holders, candidates = trip.holders_and_candidates(queue, window)
        room = window - sum(holders.values())
        chosen = decide.choose(room, holders, candidates, weights=settings.tenant_weights)
        messages = trip.admit_and_commit(chosen, forget)
    return messages, len(candidates) > len(messages) or len(messages) >= room


def window_report(session: Session, settings: Settings, tenant_id: str) -> dict[str, dict]:
    """Each queue's window as GET /queues shows it: its size, the places in use and the messages held
    (waiting for room), the tenant's own share of both, and how many tenants hold or wait for places
    (other tenants are counted, never named)."""
    holders, held = rows.window_holders(session), rows.held_counts(session)
    report: dict[str, dict] = {}
    for queue in sorted({q for q, _ in holders} | {q for q, _ in held}):
        in_use = sum(n for (q, _), n in holders.items() if q == queue)
        size, yours = settings.window_of(queue), holders.get((queue, tenant_id), 0)
        report[queue] = {
            "size": size, "in_use": in_use, "held": sum(n for (q, _), n in held.items() if q == queue),
            "tenant": {"in_window": yours, "held": held.get((queue, tenant_id), 0),
                       "share": round(yours / in_use, 3) if in_use else 0.0},
            "tenants": len({t for (q, t) in holders if q == queue} | {t for (q, t) in held if q == queue}),
        }
    return report


def empty_window(settings: Settings, queue: str) -> dict:
    """The window of a queue with nothing in it and nothing held, as window_report shows one."""
    return {"size": settings.window_of(queue), "in_use": 0, "held": 0,
            "tenant": {"in_window": 0, "held": 0, "share": 0.0}, "tenants": 0}
