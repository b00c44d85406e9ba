"""Changing a locked run: locking it (``lock_run``, ``lock_run_with_steps``), reading its steps
(``steps_for_update``, ``steps_of``), the guarded moves of steps (``update_steps``, ``move_steps_many``) and the
run's guarded update with its events (``RunChanges``, ``apply_run_changes``, ``apply_many_run_changes``),
with the statements they build once and cache. Every step's path goes through here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    ClauseElement,
    String,
    and_,
    any_,
    bindparam,
    column,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.core.snapshot import StepState
from orchestrator.db.models import Tenant
from orchestrator.db.repository.common import EVENTS, RUNS, STEPS
from orchestrator.db.repository.events import _EVENT_COLUMNS, _insert_events, _stage_written
from orchestrator.db.types import db_now
from orchestrator.states import RunStatus, StepStatus, run_allowed_from, step_allowed_from

# --- changing a locked run ----------------------------------------------------------------------


# A locked run's row as read (sqlalchemy Row with Run's columns); never an ORM object, so that only
# the guarded statements below write to it.
RunRow = Any


# Statements on every step's path are built once (with bind parameters): building one costs about
# as much as a round trip to the database.
_LOCK_RUN = select(RUNS).where(RUNS.c.id == bindparam("run_id")).with_for_update(of=RUNS)
_LOCK_RUN_WITH_TENANT_POLICY = _LOCK_RUN.add_columns(
    select(Tenant.policy).where(Tenant.id == RUNS.c.tenant_id).scalar_subquery().label("tenant_policy")
)
_OTHER_STEPS = STEPS.alias("other_steps")


def _others_succeeded(run_id):
    """Every step of the run ``run_id`` (an SQL expression) but ``:step_id`` succeeded."""
    return ~exists().where(_OTHER_STEPS.c.run_id == run_id, _OTHER_STEPS.c.step_id != bindparam("step_id"),
                           _OTHER_STEPS.c.status != StepStatus.SUCCEEDED.value)


# The run's columns the worker's path reads (an outcome; with _CLAIM_RUN_COLUMNS, a claim), not all
# of them: every column of a result costs the client more than its share of the statement.
_OUTCOME_RUN_COLUMNS = ("id", "tenant_id", "workflow_id", "workflow_version", "status", "waiting_on", "usage",
                        "last_seq", "risk_level")
_CLAIM_RUN_COLUMNS = (*_OUTCOME_RUN_COLUMNS, "input", "attempt", "limits")
_STEP_COLUMNS = (
    STEPS.c.step_id, STEPS.c.type, STEPS.c.status, STEPS.c.attempt, STEPS.c.max_attempts, STEPS.c.queue,
    (STEPS.c.due_at <= db_now()).label("due"), (STEPS.c.lease_expires_at < db_now()).label("expired"),
    STEPS.c.waiting_on, STEPS.c.policy,
)


def _lock_run_with_steps_query(of_steps):
    return (
        select(
            *(RUNS.c[name].label(f"run_{name}") for name in _OUTCOME_RUN_COLUMNS), *_STEP_COLUMNS,
            # A hint only (this statement's snapshot predates the lock): every step but :step_id succeeded.
            _others_succeeded(RUNS.c.id).label("others_succeeded"),
        )
        .join(STEPS, and_(STEPS.c.run_id == RUNS.c.id, of_steps))
        .where(RUNS.c.id == bindparam("run_id"))
        .order_by(STEPS.c.position)
        .with_for_update(of=RUNS)
    )


# On PostgreSQL the step ids go as one array (one statement text for any number of them).
_LOCK_RUN_WITH_STEPS = {
    "postgresql": _lock_run_with_steps_query(STEPS.c.step_id == any_(bindparam("step_ids", type_=postgresql.ARRAY(String)))),
    "sqlite": _lock_run_with_steps_query(STEPS.c.step_id.in_(bindparam("step_ids", expanding=True))),
}


def lock_run(session: Session, run_id: str, *, with_tenant_policy: bool = False) -> RunRow | None:
    """Lock a run's row for this transaction (waiting for other writers) and return it; with
    ``with_tenant_policy`` the row also carries its tenant's stored policy as ``tenant_policy``
    (read in the same round trip: a worker's claim needs both)."""
    query = _LOCK_RUN_WITH_TENANT_POLICY if with_tenant_policy else _LOCK_RUN
    return session.execute(query, {"run_id": run_id}).one_or_none()


def lock_run_with_steps(session: Session, run_id: str, step_ids: Sequence[str]
                        ) -> tuple[SimpleNamespace, list[StepState], bool] | None:
    """Lock a run's row and read some of its steps in one round trip: (the run, with the columns the
    outcome writer reads; the steps ``step_ids`` in the run's order; a hint, read before the lock,
    that every step but ``step_ids[0]`` succeeded). None if there is no such run or step. The step's
    rows predate the lock too: the writer's guards check them."""
    rows = session.execute(_LOCK_RUN_WITH_STEPS[session.get_bind().dialect.name],
                           {"run_id": run_id, "step_id": step_ids[0], "step_ids": list(step_ids)}).all()
    if not rows:
        return None
    run = SimpleNamespace(**{name: getattr(rows[0], f"run_{name}") for name in _OUTCOME_RUN_COLUMNS})
    return run, [StepState.from_row(row) for row in rows], bool(rows[0].others_succeeded)


def _steps_for_update_query(of_runs):
    return select(STEPS.c.run_id, *_STEP_COLUMNS).where(of_runs).order_by(STEPS.c.run_id, STEPS.c.position)


# On PostgreSQL the run ids go as one array: psycopg parses a statement of more than 50 parameters
# anew on every call, which costs more than the query for a batch of 200 runs.
_STEPS_FOR_UPDATE = {
    "postgresql": _steps_for_update_query(STEPS.c.run_id == any_(bindparam("run_ids", type_=postgresql.ARRAY(String)))),
    "sqlite": _steps_for_update_query(STEPS.c.run_id.in_(bindparam("run_ids", expanding=True))),
}


def steps_for_update(session: Session, run_ids: Sequence[str]) -> dict[str, list[StepState]]:
    """The steps of locked runs, in each run's order, with `due` (due_at passed) and `lease_expired`
    computed by the database."""
    result: dict[str, list[StepState]] = {run_id: [] for run_id in run_ids}
    for row in session.execute(_STEPS_FOR_UPDATE[session.get_bind().dialect.name], {"run_ids": list(run_ids)}):
        result[row.run_id].append(StepState.from_row(row))
    return result


def steps_of(session: Session, run_id: str, step_ids: Sequence[str]) -> list[StepState]:
    """Some steps of a locked run, read now (under the run's lock: exact)."""
    query = select(*_STEP_COLUMNS).where(STEPS.c.run_id == run_id, STEPS.c.step_id.in_(step_ids))
    return [StepState.from_row(row) for row in session.execute(query.order_by(STEPS.c.position))]


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


def update_steps(
    session: Session,
    run_id: str,
    step_ids: Sequence[str],
    target: StepStatus,
    *,
    only_from: Iterable[StepStatus] | None = None,
    at_attempt: int | None = None,
    **values: Any,
) -> list[str]:
    """Move steps to ``target`` where the table allows it; return the ids actually changed.

    ``only_from`` narrows the table's allowed set; ``at_attempt`` also requires that attempt number,
    so a report from an older attempt matches nothing.
    """
    moved = move_steps_many(session, [(run_id, s) for s in step_ids], target, only_from=only_from,
                            at_attempt=at_attempt, **values)
    return [s for s in step_ids if (run_id, s) in moved]


def move_steps_many(
    session: Session,
    keys: Sequence[tuple[str, str]],
    target: StepStatus,
    *,
    only_from: Iterable[StepStatus] | None = None,
    at_attempt: int | None = None,
    **values: Any,
) -> set[tuple[str, str]]:
    """update_steps for the steps of many runs, in one statement: move the steps ``keys`` (run id,
    step id) to ``target`` where the table (narrowed to ``only_from``) allows it; return the keys
    actually changed."""
    if not keys:
        return set()
    allowed = step_allowed_from(target, only_from)
    dialect = session.get_bind().dialect.name
    params: dict[str, Any] = {f"new_{k}": v for k, v in values.items() if not isinstance(v, ClauseElement)}
    params["at_attempt"] = at_attempt
    if dialect == "postgresql":
        params["run_ids"], params["step_ids"] = [k[0] for k in keys], [k[1] for k in keys]
    else:
        params["keys"] = [tuple(k) for k in keys]
    # Built once per shape (it is on every step's path, and building one costs about a round trip):
    # plain values go as parameters; NOW and NEXT_ATTEMPT are the expressions kept in it.
    shape = _shape(values)
    key = (dialect, target, allowed, at_attempt is not None, shape)
    query = _MOVE_STEPS.get(key) if shape is not None else None
    if query is None:
        query = _move_steps_statement(dialect, target, allowed, at_attempt is not None, values)
        if shape is not None:
            _MOVE_STEPS[key] = query
    return {(run_id, step_id) for run_id, step_id in session.execute(query, params)}


# The database clock and the next attempt's number as shared expressions: a statement that sets a
# column to one of them can be built once (see _shape).
NOW = db_now()
NEXT_ATTEMPT = STEPS.c.attempt + 1
_SHARED_EXPRESSIONS = (NOW, NEXT_ATTEMPT)


def _shape(values: dict[str, Any]) -> tuple | None:
    """The columns a statement sets and which shared expression each is set to (None: a parameter),
    or None if one is set to an expression of its own (such a statement cannot be reused)."""
    shape = []
    for key, value in values.items():
        shared = None
        if isinstance(value, ClauseElement):
            shared = next((i for i, e in enumerate(_SHARED_EXPRESSIONS) if value is e), None)
            if shared is None:
                return None
        shape.append((key, shared))
    return tuple(sorted(shape, key=lambda column: column[0]))


_MOVE_STEPS: dict[tuple, Any] = {}
# On PostgreSQL the keys go as two arrays: the statement's text is the same for any number of keys
# (psycopg parses a statement of more than 50 parameters anew on every call).
_KEYS = (
    func.unnest(bindparam("run_ids", type_=postgresql.ARRAY(String)),
                bindparam("step_ids", type_=postgresql.ARRAY(String)))
    .table_valued(column("run_id", String), column("step_id", String))
    .render_derived(name="keys")
)


def _guarded_step_update(target: StepStatus, allowed: Iterable[StepStatus], values: dict, prefix: str, *where):
    """The guarded UPDATE of steps (``where``, and a status in ``allowed``) to ``target``: plain values
    are bind parameters named ``<prefix><column>``, SQL expressions are kept as they are."""
    new = {key: value if isinstance(value, ClauseElement) else bindparam(f"{prefix}{key}", type_=STEPS.c[key].type)
           for key, value in values.items()}
    return (
        update(STEPS)
        .where(*where, or_(*(STEPS.c.status == status.value for status in sorted(allowed))))
        .values(status=target.value, **new)
    )


def _move_steps_statement(dialect: str, target: StepStatus, allowed: frozenset[StepStatus], at_attempt: bool,
                          values: dict):
    of_keys = (
        tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(select(_KEYS.c.run_id, _KEYS.c.step_id))
        if dialect == "postgresql"
        else tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(bindparam("keys", expanding=True))
    )
    at = [STEPS.c.attempt == bindparam("at_attempt")] if at_attempt else []
    return _guarded_step_update(target, allowed, values, "new_", of_keys, *at).returning(STEPS.c.run_id,
                                                                                        STEPS.c.step_id)


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
        params["new_events"] = [{k: row[k] for k in _RUN_EVENT_COLUMNS} for row in rows]
        created = dict(session.execute(query, params).all())
        if folded and not created:
            return False  # the step did not move, so neither did anything else
        for row in rows:
            row["created_at"] = created.get(row["seq"])
        moved = bool(created)
    else:
        moved = session.execute(query, params).rowcount == 1
        if moved:
            _insert_events(session, rows)
    if not moved:
        raise StaleRunState(f"run {run.id} is no longer {run.status!r}; cannot move it to {changes.run_target}")
    _stage(session, run, values, rows)
    return True


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
        _stage_written(session, run, rows, previous_status=run.status if status else None, status=status or run.status,
                       waiting_on=values.get("waiting_on", run.waiting_on), status_changed=status is not None)


_RUN_UPDATES: dict[tuple, Any] = {}


def _run_update(guard: frozenset[RunStatus] | None, values: dict[str, Any], with_events: bool,
                step_move: StepMove | None = None, unchanged: bool = False) -> tuple[Any, dict]:
    """The run's guarded UPDATE (on PostgreSQL ``with_events``: and its events' INSERT, in one
    statement; with ``step_move`` too: the step's guarded UPDATE first, and the rest only if it
    matched; with ``unchanged``, only if the run's last_seq is still ``seen_seq``) and its
    parameters. Built once per shape, like update_steps' statements; values that are SQL
    expressions of their own (not NOW or NEXT_ATTEMPT) make a statement for this call only."""
    params = {f"new_{k}": v for k, v in values.items() if not isinstance(v, ClauseElement)}
    shape, step_key = _shape(values), None
    if step_move is not None:
        params.update({f"step_{k}": v for k, v in step_move.values.items() if not isinstance(v, ClauseElement)})
        params.update(of_step=step_move.step_id, step_attempt=step_move.attempt)
        step_shape = _shape(step_move.values)
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
        _guarded_step_update(move.target, step_allowed_from(move.target, move.only_from), move.values, "step_",
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


_RUN_EVENT_COLUMNS = _EVENT_COLUMNS[1:]  # a run's own events: run_id comes from its update
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
    _insert_events(session, [row for _, _, rows in written for row in rows])
    for run, values, rows in written:
        _stage(session, run, values, rows)
