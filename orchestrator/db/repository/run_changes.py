"""The guarded update of a locked run with its events (``RunChanges``, ``apply_run_changes``;
``apply_many_run_changes`` for the scheduler's pass), optionally after the guarded move of one of its
steps (``StepMove``), with the statements they build once per shape and cache. Every transaction on a
step's path ends here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ClauseElement, bindparam, column, exists, func, insert, or_, select, true, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.db.repository.changes import RunRow
from orchestrator.db.repository.common import EVENTS, RUNS, STEPS
from orchestrator.db.repository.events import EVENT_COLUMNS, insert_events, stage_written
from orchestrator.db.repository.steps import guarded_step_update, statement_shape, update_steps
from orchestrator.db.session import CompiledOnDriver, rows_on_driver, send_on_driver
from orchestrator.states import RunStatus, StepStatus, run_allowed_from, step_allowed_from


@dataclass(frozen=True)
class StepMove:
    """One step's guarded move (as update_steps makes it, at ``attempt``), left for apply_run_changes to
    write first: on PostgreSQL in the run's own statement."""

    step_id: str
    target: StepStatus
    only_from: frozenset[StepStatus]
    attempt: int
    values: dict[str, Any]


@dataclass
class RunChanges:
    """What one transaction does to one locked run: its new status and values, and its events; and
    optionally the move of one of its steps, which the rest is written only after (``step_move``)."""

    run: RunRow
    events: list[dict] = field(default_factory=list)
    run_values: dict[str, Any] = field(default_factory=dict)
    run_target: RunStatus | None = None
    step_move: StepMove | None = None
    # Not locked but read when the run's last_seq was this: the changes are written only if it still
    # is, in one statement (every change of a run's status or of its steps appends an event).
    unchanged_since: int | None = None

    def event(self, type_: str, step_id: str | None = None, attempt: int | None = None, **data: Any) -> None:
        self.events.append({"type": type_, "step_id": step_id, "attempt": attempt, "data": data})


class StaleRunState(Exception):
    """The run's status changed under a writer that held its lock: a bug, so the transaction is undone."""


def apply_run_changes(session: Session, changes: RunChanges) -> bool:
    """Write the step's move (``changes.step_move``, if any), then the run's new status (guarded), its
    other values and its events. Returns False, having written nothing, if the step's guard matched
    nothing, or, for ``changes.unchanged_since``, if the run changed since or the changes are not one
    statement; True otherwise.

    Raises StaleRunState if the run's guard matched nothing, so the caller's transaction rolls back whole.
    """
    prepared = _prepare(changes)
    run, move = changes.run, changes.step_move
    with_events = prepared is not None and bool(prepared[2]) and session.get_bind().dialect.name == "postgresql"
    # The step's move goes in the run's statement if the run's update cannot miss (no status guard, or
    # one its locked status passes), so that an empty result can only mean the step's guard matched
    # nothing: one round trip less.
    folded = move is not None and with_events and (prepared[0] is None or RunStatus(run.status) in prepared[0])
    if changes.unchanged_since is not None and not folded:
        return False
    if move is not None and not folded and not update_steps(
        session, run.id, [move.step_id], move.target, only_from=move.only_from, at_attempt=move.attempt, **move.values
    ):
        return False
    if prepared is None:
        return True
    guard, values, rows = prepared
    query, params = _run_update(guard, values, with_events, move if folded else None,
                                unchanged=changes.unchanged_since is not None)
    params["of_run"] = run.id
    if changes.unchanged_since is not None:
        params["seen_seq"] = changes.unchanged_since
    if with_events:
        # One round trip for both: every transaction on a step's path ends with this.
        params["new_events"] = _event_params(rows)
        on_driver = _ON_DRIVER.get(id(query))  # a statement built once (the others are this call's own)
        created = dict(rows_on_driver(session, on_driver, params) if on_driver is not None
                       else session.execute(query, params).all())
        if folded and not created:
            return False  # the step did not move, so neither did anything else
        _stamp(rows, created)
        moved = bool(created)
    else:
        moved = session.execute(query, params).rowcount == 1
        if moved:
            insert_events(session, rows)
    if not moved:
        raise StaleRunState(f"run {run.id} is no longer {run.status!r}; cannot move it to {changes.run_target}")
    _stage(session, run, values, rows)
    return True


@dataclass(frozen=True)
class RunStatement:
    """A locked run's changes with its step's move, as the one statement apply_run_changes sends on the
    driver (PostgreSQL), to send with others in one pipeline (``session.sent_together``)."""

    run: RunRow
    values: dict[str, Any]
    rows: list[dict]
    statement: CompiledOnDriver
    params: dict[str, Any]

    def send(self, session: Session) -> Callable[[], bool]:
        """Send it in ``sent_together``'s pipeline; what it answers once the pipeline ended: whether it
        wrote (False, having written nothing, if the step's guard matched nothing)."""
        sent = send_on_driver(session, self.statement, self.params)

        def written() -> bool:
            created = dict(sent.rows())
            if not created:
                return False
            _stamp(self.rows, created)
            _stage(session, self.run, self.values, self.rows)
            return True

        return written


def run_statement(session: Session, changes: RunChanges) -> RunStatement | None:
    """``changes`` (of a locked run, with ``step_move``) as the one statement apply_run_changes would
    send on the driver; None where it would not (another database, no events, a status guard the
    run's locked status does not pass, or a statement of this call's own)."""
    prepared = _prepare(changes)
    if (prepared is None or not prepared[2] or changes.step_move is None or changes.unchanged_since is not None
            or session.get_bind().dialect.name != "postgresql"):
        return None
    guard, values, rows = prepared
    if guard is not None and RunStatus(changes.run.status) not in guard:
        return None
    query, params = _run_update(guard, values, True, changes.step_move)
    statement = _ON_DRIVER.get(id(query))
    if statement is None:
        return None
    params.update(of_run=changes.run.id, new_events=_event_params(rows))
    return RunStatement(changes.run, values, rows, statement, params)


def _event_params(rows: list[dict]) -> list[dict]:
    return [{k: row[k] for k in _RUN_EVENT_COLUMNS} for row in rows]


def _stamp(rows: list[dict], created: dict) -> None:
    """The events' created_at as the statement that wrote them answered it (by seq)."""
    for row in rows:
        row["created_at"] = created.get(row["seq"])


def _prepare(changes: RunChanges) -> tuple[frozenset[RunStatus] | None, dict[str, Any], list[dict]] | None:
    """What writing ``changes`` takes: the status guard (None: the status stays), the run's new
    values (status and last_seq included) and the event rows; None if nothing changes."""
    run, values, guard = changes.run, dict(changes.run_values), None
    if changes.run_target is not None and changes.run_target != run.status:
        values["status"] = changes.run_target.value
        guard = run_allowed_from(changes.run_target)
    if changes.events:
        values["last_seq"] = run.last_seq + len(changes.events)
    if not values:
        return None
    rows = [dict(run_id=run.id, seq=run.last_seq + i + 1, **e) for i, e in enumerate(changes.events)]
    return guard, values, rows


def _stage(session: Session, run, values: dict[str, Any], rows: list[dict]) -> None:
    """Leave the rows written to the run's log for the publisher, with the run's status after them."""
    if rows:
        status = values.get("status")
        stage_written(session, run, rows, previous_status=run.status if status else None, status=status or run.status,
                      waiting_on=values.get("waiting_on", run.waiting_on), status_changed=status is not None)


# The run's guarded updates built so far, by (guard, with events, shape, the step's move, unchanged).
_RUN_UPDATES: dict[tuple, Any] = {}
# Those with events (PostgreSQL), to run on the driver, by id of the statement, which the cache above
# keeps for the process's life: every worker's outcome ends with one, and SQLAlchemy's execution of it
# cost more client CPU than the rest of the outcome.
_ON_DRIVER: dict[int, CompiledOnDriver] = {}


def _run_update(guard: frozenset[RunStatus] | None, values: dict[str, Any], with_events: bool,
                step_move: StepMove | None = None, unchanged: bool = False) -> tuple[Any, dict]:
    """The run's guarded UPDATE (on PostgreSQL ``with_events``: and its events' INSERT, in one
    statement; with ``step_move`` too: the step's guarded UPDATE first, and the rest only if it
    matched; with ``unchanged``, only if the run's last_seq is still ``seen_seq``) and its
    parameters. Built once per shape, like update_steps' statements; values that are SQL
    expressions of their own (not NOW or NEXT_ATTEMPT) make a statement for this call only."""
    params = {f"new_{k}": v for k, v in values.items() if not isinstance(v, ClauseElement)}
    shape, step_key = statement_shape(values), None
    if step_move is not None:
        params.update({f"step_{k}": v for k, v in step_move.values.items() if not isinstance(v, ClauseElement)})
        params.update(of_step=step_move.step_id, step_attempt=step_move.attempt)
        step_shape = statement_shape(step_move.values)
        step_key = (step_move.target, step_move.only_from, step_shape)
        shape = shape if step_shape is not None else None
    key = (guard, with_events, shape, step_key, unchanged)
    query = _RUN_UPDATES.get(key) if shape is not None else None
    if query is not None:
        return query, params
    new = {key: value if isinstance(value, ClauseElement) else bindparam(f"new_{key}", type_=RUNS.c[key].type)
           for key, value in values.items()}
    query = update(RUNS).where(RUNS.c.id == bindparam("of_run")).values(**new)
    if guard is not None:
        # OR, not IN: an IN list is an expanding parameter, which executemany does not take.
        query = query.where(or_(*(RUNS.c.status == s.value for s in sorted(guard))))
    if unchanged:
        query = query.where(RUNS.c.last_seq == bindparam("seen_seq"))
    if step_move is not None:
        query = query.where(exists(select(_moved_step(step_move, unchanged).c.step_id)))
    if with_events:
        moved = query.returning(RUNS.c.id).cte("moved_run")
        query = insert(EVENTS).from_select(
            ["run_id", *_RUN_EVENT_COLUMNS],
            select(moved.c.id, *(_NEW_EVENTS.c[name] for name in _RUN_EVENT_COLUMNS)).select_from(moved)
            .join(_NEW_EVENTS, true()),
        ).returning(EVENTS.c.seq, EVENTS.c.created_at)
    if shape is not None:
        _RUN_UPDATES[key] = query
        if with_events:
            _ON_DRIVER[id(query)] = CompiledOnDriver(query)
    return query, params


def _moved_step(move: StepMove, unchanged: bool = False):
    """The step's guarded move as a CTE of the run's statement (parameters ``of_step``,
    ``step_attempt`` and ``step_<column>``); with ``unchanged``, only once the run is locked and
    found at last_seq ``seen_seq``.

    A data-modifying CTE runs whatever the statement around it does, so the run's update must not
    be able to miss once the step moved: the run's lock and its check come first, in the step's guard.
    """
    run_unchanged = [exists(select(_run_locked_if_unchanged().c.id))] if unchanged else []
    return (
        guarded_step_update(move.target, step_allowed_from(move.target, move.only_from), move.values, "step_",
                            STEPS.c.run_id == bindparam("of_run"), STEPS.c.step_id == bindparam("of_step"),
                            STEPS.c.attempt == bindparam("step_attempt"), *run_unchanged)
        .returning(STEPS.c.step_id)
        .cte("moved_step")
    )


def _run_locked_if_unchanged():
    """The run, locked, if its last_seq is still ``seen_seq``: FOR UPDATE waits for a writer holding
    it and checks the row that writer left (the claim's statement takes the run's lock the same way)."""
    return (
        select(RUNS.c.id)
        .where(RUNS.c.id == bindparam("of_run"), RUNS.c.last_seq == bindparam("seen_seq"))
        .with_for_update()
        .cte("unchanged_run")
    )


_RUN_EVENT_COLUMNS = EVENT_COLUMNS[1:]  # a run's own events: run_id comes from its update
# The events as one JSON parameter, so the statement's text (and SQLAlchemy's compiled cache entry)
# is the same whatever the number of events.
_NEW_EVENTS = (
    func.jsonb_to_recordset(bindparam("new_events", type_=postgresql.JSONB))
    .table_valued(*(column(name, EVENTS.c[name].type) for name in _RUN_EVENT_COLUMNS))
    .render_derived(name="new_events", with_types=True)
)


# --- the scheduler's pass: the guarded writes of many locked runs at once -------------------------


def apply_many_run_changes(session: Session, many: Sequence[RunChanges]) -> None:
    """apply_run_changes for many locked runs: the runs whose changes set the same columns (with the
    same SQL expressions) and take the same guard are written by one executemany, and the events of
    all of them are inserted by one statement.

    Raises StaleRunState if a guard matched nothing, so the caller's transaction rolls back whole.
    """
    if len(many) == 1:
        # One run (a chain's every pass): its update and its events in one statement on PostgreSQL.
        apply_run_changes(session, many[0])
        return
    groups: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
    written: list[tuple[RunRow, dict[str, Any], list[dict]]] = []
    for changes in many:
        prepared = _prepare(changes)
        if prepared is None:
            continue
        guard, values, rows = prepared
        # Runs of one shape of change get the same (cached) statement: one executemany for them all.
        query, params = _run_update(guard, values, with_events=False)
        groups.setdefault(id(query), (query, []))[1].append({"of_run": changes.run.id, **params})
        written.append((changes.run, values, rows))
    for query, params in groups.values():
        if session.execute(query, params).rowcount != len(params):
            stale = [p["of_run"] for p in params]
            raise StaleRunState(f"one of runs {stale} is no longer in the status its changes were decided from")
    insert_events(session, [row for _, _, rows in written for row in rows])
    for run, values, rows in written:
        _stage(session, run, values, rows)
