"""Locking a run for a change and reading its steps under the lock: ``lock_run``,
``lock_run_with_steps``, ``steps_for_update`` and ``steps_of``, with the statements they build once.
The guarded writes that follow are in ``steps`` (a run's steps) and ``run_changes`` (the run itself
and its events). Every step's path starts here."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import String, and_, any_, bindparam, exists, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.core.snapshot import StepState
from orchestrator.db.models import Tenant
from orchestrator.db.repository.common import RUNS, STEPS
from orchestrator.db.session import CompiledOnDriver, rows_on_driver
from orchestrator.db.types import db_now
from orchestrator.states import StepStatus

# A locked run's row as read (sqlalchemy Row with Run's columns); never an ORM object, so that only
# the guarded statements of ``steps`` and ``run_changes`` write to it.
RunRow = Any

# The run's columns the outcome writer reads (with CLAIM_RUN_COLUMNS, those a claim reads), not all
# of them: every column of a result costs the client more than its share of the statement.
OUTCOME_RUN_COLUMNS = ("id", "tenant_id", "workflow_id", "workflow_version", "status", "waiting_on", "usage",
                       "last_seq", "risk_level", "parent_run_id")
CLAIM_RUN_COLUMNS = (*OUTCOME_RUN_COLUMNS, "input", "attempt", "limits")

# A step's columns as StepState reads them, with `due` (due_at passed) and `expired` (lease passed)
# computed by the database's clock.
_STEP_COLUMNS = (
    STEPS.c.step_id, STEPS.c.type, STEPS.c.status, STEPS.c.attempt, STEPS.c.max_attempts, STEPS.c.queue,
    (STEPS.c.due_at <= db_now()).label("due"), (STEPS.c.lease_expires_at < db_now()).label("expired"),
    STEPS.c.waiting_on, STEPS.c.item_counts,
)
# A report's step also carries its policy decisions so far (JSON: not read for every step of a pass).
_REPORTED_STEP_COLUMNS = (*_STEP_COLUMNS, STEPS.c.policy)
_OTHER_STEPS = STEPS.alias("other_steps")


def others_succeeded(run_id):
    """An SQL condition: every step of the run ``run_id`` (an SQL expression) but the bind parameter
    ``:step_id`` succeeded."""
    return ~exists().where(_OTHER_STEPS.c.run_id == run_id, _OTHER_STEPS.c.step_id != bindparam("step_id"),
                           _OTHER_STEPS.c.status != StepStatus.SUCCEEDED.value, _OTHER_STEPS.c.item_of.is_(None))


# Statements on every step's path are built once (with bind parameters): building one costs about
# as much as a round trip to the database.

# Lock a run's row (FOR UPDATE, waiting for other writers) and read it.
_LOCK_RUN = select(RUNS).where(RUNS.c.id == bindparam("run_id")).with_for_update(of=RUNS)
# The same, with the run's tenant's stored policy as `tenant_policy`.
_LOCK_RUN_WITH_TENANT_POLICY = _LOCK_RUN.add_columns(
    select(Tenant.policy).where(Tenant.id == RUNS.c.tenant_id).scalar_subquery().label("tenant_policy")
)


def _lock_run_with_steps_query(of_steps):
    return (
        select(
            *(RUNS.c[name].label(f"run_{name}") for name in OUTCOME_RUN_COLUMNS), *_REPORTED_STEP_COLUMNS,
            # A hint only (this statement's snapshot predates the lock): every step but :step_id succeeded.
            others_succeeded(RUNS.c.id).label("others_succeeded"),
        )
        .join(STEPS, and_(STEPS.c.run_id == RUNS.c.id, of_steps))
        .where(RUNS.c.id == bindparam("run_id"))
        .order_by(STEPS.c.position)
        .with_for_update(of=RUNS)
    )


# Lock a run's row and read it with some of its steps, by dialect. On PostgreSQL the step ids go as
# one array (one statement text for any number of them).
_LOCK_RUN_WITH_STEPS = {
    "postgresql": _lock_run_with_steps_query(STEPS.c.step_id == any_(bindparam("step_ids", type_=postgresql.ARRAY(String)))),
    "sqlite": _lock_run_with_steps_query(STEPS.c.step_id.in_(bindparam("step_ids", expanding=True))),
}
_LOCK_RUN_WITH_STEPS_ON_DRIVER = CompiledOnDriver(_LOCK_RUN_WITH_STEPS["postgresql"])


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
    params = {"run_id": run_id, "step_id": step_ids[0], "step_ids": list(step_ids)}
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":  # every locked outcome (a chain's step) starts with it: on the driver
        rows = rows_on_driver(session, _LOCK_RUN_WITH_STEPS_ON_DRIVER, params)
    else:
        rows = session.execute(_LOCK_RUN_WITH_STEPS[dialect.name], params).all()
    if not rows:
        return None
    run = SimpleNamespace(**{name: getattr(rows[0], f"run_{name}") for name in OUTCOME_RUN_COLUMNS})
    first = len(OUTCOME_RUN_COLUMNS)
    return run, [StepState.from_row(row[first:first + len(_REPORTED_STEP_COLUMNS)]) for row in rows], \
        bool(rows[0].others_succeeded)


def _steps_for_update_query(of_runs):
    # A for-each step's items are read only where a decision must act on them (a retry came due, a
    # lease expired, a person's answer or approval awaited): their step's row carries their counts, so
    # a pass never reads a thousand items.
    clock = db_now()
    item_needs_a_pass = or_(STEPS.c.due_at <= clock, STEPS.c.status == StepStatus.WAITING.value,
                            and_(STEPS.c.status == StepStatus.RUNNING.value, STEPS.c.lease_expires_at < clock))
    return (select(STEPS.c.run_id, *_STEP_COLUMNS).where(of_runs, or_(STEPS.c.item_of.is_(None), item_needs_a_pass))
            .order_by(STEPS.c.run_id, STEPS.c.position, STEPS.c.item_index))


# Read the steps of locked runs, by dialect. On PostgreSQL the run ids go as one array: psycopg
# parses a statement of more than 50 parameters anew on every call, which costs more than the query
# for a batch of 200 runs.
_STEPS_FOR_UPDATE = {
    "postgresql": _steps_for_update_query(STEPS.c.run_id == any_(bindparam("run_ids", type_=postgresql.ARRAY(String)))),
    "sqlite": _steps_for_update_query(STEPS.c.run_id.in_(bindparam("run_ids", expanding=True))),
}


def steps_for_update(session: Session, run_ids: Sequence[str]) -> dict[str, list[StepState]]:
    """The steps of locked runs, in each run's order, with `due` (due_at passed) and `lease_expired`
    computed by the database; of a for-each step's items, only those due or lost."""
    result: dict[str, list[StepState]] = {run_id: [] for run_id in run_ids}
    rows = session.execute(_STEPS_FOR_UPDATE[session.get_bind().dialect.name], {"run_ids": list(run_ids)}).all()
    for row in rows:  # (run_id, *the step's columns)
        result[row[0]].append(StepState.from_row(row[1:]))
    return result


# Read some steps of a locked run, in its order (a list of step ids: expanding).
_STEPS_OF = (
    select(*_STEP_COLUMNS)
    .where(STEPS.c.run_id == bindparam("run_id"), STEPS.c.step_id.in_(bindparam("step_ids", expanding=True)))
    .order_by(STEPS.c.position)
)


def steps_of(session: Session, run_id: str, step_ids: Sequence[str]) -> list[StepState]:
    """Some steps of a locked run, read now (under the run's lock: exact)."""
    rows = session.execute(_STEPS_OF, {"run_id": run_id, "step_ids": list(step_ids)}).all()
    return [StepState.from_row(row) for row in rows]
