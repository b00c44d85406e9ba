"""The guarded moves of a locked run's steps (``update_steps``, ``move_steps_many``: ``UPDATE … WHERE
status IN (allowed_from)``), with the statements they build once per shape and cache, and the shared
expressions (``NOW``, ``NEXT_ATTEMPT``) such a statement may set a column to."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ClauseElement, String, bindparam, column, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.db.repository.common import STEPS
from orchestrator.db.types import db_now
from orchestrator.states import StepStatus, step_allowed_from

# The database clock and the next attempt's number as shared expressions: a statement that sets a
# column to one of them can be built once (see statement_shape).
NOW = db_now()
NEXT_ATTEMPT = STEPS.c.attempt + 1
_SHARED_EXPRESSIONS = (NOW, NEXT_ATTEMPT)


def statement_shape(values: dict[str, Any]) -> tuple | None:
    """The key under which a statement setting ``values`` is cached: the columns it sets and which
    shared expression (NOW, NEXT_ATTEMPT) each is set to (None: a bind parameter); None if one is set
    to an SQL expression of its own (such a statement cannot be reused)."""
    shape = []
    for key, value in values.items():
        shared = None
        if isinstance(value, ClauseElement):
            shared = next((i for i, e in enumerate(_SHARED_EXPRESSIONS) if value is e), None)
            if shared is None:
                return None
        shape.append((key, shared))
    return tuple(sorted(shape, key=lambda column_: column_[0]))


def guarded_step_update(target: StepStatus, allowed: Iterable[StepStatus], values: dict, prefix: str, *where):
    """The guarded UPDATE of steps (``where``, and a status in ``allowed``) to ``target``: plain values
    are bind parameters named ``<prefix><column>``, SQL expressions are kept as they are."""
    new = {key: value if isinstance(value, ClauseElement) else bindparam(f"{prefix}{key}", type_=STEPS.c[key].type)
           for key, value in values.items()}
    return (
        update(STEPS)
        .where(*where, or_(*(STEPS.c.status == status.value for status in sorted(allowed))))
        .values(status=target.value, **new)
    )


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


# The guarded moves of steps built so far, by (dialect, target, allowed, at an attempt, shape).
_MOVE_STEPS: dict[tuple, Any] = {}


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
    if target is StepStatus.QUEUED and "held" not in values:
        values = {**values, "held": False}  # a queued step holds a place in its window until checked (admission)
    # ``only_from`` of just ``target``: the step's values are updated where it is, without a move.
    same = only_from is not None and set(only_from) == {target}
    allowed = frozenset({target}) if same else step_allowed_from(target, only_from)
    dialect = session.get_bind().dialect.name
    params: dict[str, Any] = {f"new_{k}": v for k, v in values.items() if not isinstance(v, ClauseElement)}
    params["at_attempt"] = at_attempt
    if dialect == "postgresql":
        params["run_ids"], params["step_ids"] = [k[0] for k in keys], [k[1] for k in keys]
    else:
        params["keys"] = [tuple(k) for k in keys]
    # Built once per shape (it is on every step's path, and building one costs about a round trip):
    # plain values go as parameters; NOW and NEXT_ATTEMPT are the expressions kept in it.
    shape = statement_shape(values)
    key = (dialect, target, allowed, at_attempt is not None, shape)
    query = _MOVE_STEPS.get(key) if shape is not None else None
    if query is None:
        query = _move_steps_statement(dialect, target, allowed, at_attempt is not None, values)
        if shape is not None:
            _MOVE_STEPS[key] = query
    return {(run_id, step_id) for run_id, step_id in session.execute(query, params)}


# The (run id, step id) keys of move_steps_many on PostgreSQL, as two arrays: the statement's text is
# the same for any number of keys (psycopg parses a statement of more than 50 parameters anew on
# every call).
_KEYS = (
    func.unnest(bindparam("run_ids", type_=postgresql.ARRAY(String)),
                bindparam("step_ids", type_=postgresql.ARRAY(String)))
    .table_valued(column("run_id", String), column("step_id", String))
    .render_derived(name="keys")
)


def _move_steps_statement(dialect: str, target: StepStatus, allowed: frozenset[StepStatus], at_attempt: bool,
                          values: dict):
    of_keys = (
        tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(select(_KEYS.c.run_id, _KEYS.c.step_id))
        if dialect == "postgresql"
        else tuple_(STEPS.c.run_id, STEPS.c.step_id).in_(bindparam("keys", expanding=True))
    )
    at = [STEPS.c.attempt == bindparam("at_attempt")] if at_attempt else []
    return guarded_step_update(target, allowed, values, "new_", of_keys, *at).returning(STEPS.c.run_id,
                                                                                       STEPS.c.step_id)
