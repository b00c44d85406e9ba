"""Concurrency keys (core.concurrency): the room a scheduler's pass reads under the concurrency lock,
the scheduler's look for waiters whose keys have room again, and the reports (GET /queues, a run's
diagnosis).

A holder is a row that carries the key in a holding status: a run of the workflow that is running,
waiting or paused (``runs.concurrency_keys`` holds "<index>:<key>"), or a step attempt queued or
running (``steps.concurrency_key`` holds "<tenant>:<key>"). A waiter is a queued run with keys, or a
`pending` step waiting on concurrency in a running or waiting run. Waiters start by their run's
priority, then age (created_at, id).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from orchestrator import diagnosis
from orchestrator.core import concurrency
from orchestrator.core.concurrency import RUN, STEP, Ask, Room
from orchestrator.core.snapshot import RunState
from orchestrator.core.transition import Transition
from orchestrator.core.vocabulary import WaitsOn
from orchestrator.db.types import JsonType
from orchestrator.states import RunStatus, StepStatus

# The key of the advisory lock every decision that admits under a concurrency key holds to its
# transaction's end (one lock: a pass takes it once, whatever keys its runs render).
LOCK_KEY = 715_002

HOLDING_RUN = (RunStatus.RUNNING.value, RunStatus.WAITING.value, RunStatus.PAUSED.value)
HOLDING_STEP = (StepStatus.QUEUED.value, StepStatus.RUNNING.value)
# A step waiting for room counts only in a run that may dispatch it (not paused, not ended).
_DISPATCHING_RUN = "('running', 'waiting')"
_CONCURRENCY = WaitsOn.CONCURRENCY.value

# Whether the run ``r`` carries the key :key, by dialect (runs.concurrency_keys is JSONB on PostgreSQL).
_HAS_KEY = {
    "postgresql": "r.concurrency_keys @> jsonb_build_array(CAST(:key AS text))",
    "sqlite": "EXISTS (SELECT 1 FROM json_each(r.concurrency_keys) AS k WHERE k.value = :key)",
}
# A statement's runs.concurrency_keys decoded from JSON as the column's type does (SQLite returns text).
_KEYS = {"concurrency_keys": JsonType}
# ``r`` comes before the run ``me`` in the order waiters start in.
_AHEAD_OF_ME = ("(r.priority < me.priority OR (r.priority = me.priority AND (r.created_at < me.created_at "
                "OR (r.created_at = me.created_at AND r.id < me.id))))")


def _dialect(session: Session) -> str:
    return "postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"


def lock(session: Session) -> None:
    """Hold the concurrency lock to the end of the transaction (PostgreSQL; SQLite has one writer)."""
    if _dialect(session) == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({LOCK_KEY})"))


def run_room(session: Session, run: RunState, key: str, cap: int) -> tuple[int, list[str]]:
    """The runs of ``run``'s workflow holding ``key``, and the ids of the first ``cap`` queued runs
    with it ahead of ``run``."""
    has_key = _HAS_KEY[_dialect(session)]
    scope = {"tenant": run.tenant_id, "workflow": run.workflow_id, "key": key}
    holders = session.execute(text(
        f"SELECT count(*) FROM runs r WHERE r.tenant_id = :tenant AND r.workflow_id = :workflow "
        f"AND r.concurrency_keys IS NOT NULL AND r.status IN {_in(HOLDING_RUN)} AND {has_key}"), scope).scalar_one()
    ahead = session.execute(text(
        f"SELECT r.id FROM runs r, runs me WHERE me.id = :me AND r.tenant_id = :tenant "
        f"AND r.workflow_id = :workflow AND r.concurrency_keys IS NOT NULL AND r.status = 'queued' "
        f"AND r.id <> me.id AND {has_key} AND {_AHEAD_OF_ME} ORDER BY r.priority, r.created_at, r.id LIMIT :cap"),
        {**scope, "me": run.id, "cap": cap}).scalars().all()
    return holders, list(ahead)


def step_room(session: Session, run: RunState, key: str, cap: int) -> tuple[int, list[str]]:
    """The attempts holding ``key``, and the first ``cap`` steps of other runs waiting for it ahead of
    ``run``'s ("<run id>/<step id>")."""
    holders = session.execute(text(
        f"SELECT count(*) FROM steps s WHERE s.concurrency_key = :key AND s.status IN {_in(HOLDING_STEP)}"),
        {"key": key}).scalar_one()
    ahead = session.execute(text(
        f"SELECT s.run_id, s.step_id FROM steps s JOIN runs r ON r.id = s.run_id, runs me WHERE me.id = :me "
        f"AND s.concurrency_key = :key AND s.status = 'pending' AND s.waiting_on = '{_CONCURRENCY}' "
        f"AND r.status IN {_DISPATCHING_RUN} AND r.id <> me.id AND {_AHEAD_OF_ME} "
        f"ORDER BY r.priority, r.created_at, r.id, s.position LIMIT :cap"),
        {"key": key, "me": run.id, "cap": cap}).all()
    return holders, [f"{run_id}/{step_id}" for run_id, step_id in ahead]


@dataclass
class PassRooms:
    """The room one scheduler pass (one transaction) reads for its runs' decisions: the concurrency
    lock is taken at the first read and held to the commit, so no other pass admits meanwhile; what
    the pass took already (``took``) counts as held, since it is written only at the pass's end."""

    locked: bool = False
    # What this pass took: the runs started holding a key, the attempts queued holding one.
    taken: dict[tuple[str, ...], list[str]] = field(default_factory=dict)

    def read(self, session: Session, run: RunState, asks: Iterable[Ask]) -> dict[tuple[str, str], Room]:
        if not self.locked:
            lock(session)
            self.locked = True
        rooms = {}
        for ask in asks:
            scope_key = _scope_key(run, ask.scope, ask.key)
            took = self.taken.get(scope_key, [])
            reader = run_room if ask.scope == RUN else step_room
            holders, ahead = reader(session, run, ask.key, ask.limit + len(took))
            rooms[(ask.scope, ask.key)] = Room(holders + len(took), len([a for a in ahead if a not in took]))
        return rooms

    def took(self, transition: Transition) -> None:
        """Count the keys ``transition`` (decided in this pass) holds from now."""
        run, after = transition.run, transition.after
        keys = transition.run_values.get("concurrency_keys")
        if keys and run.status is RunStatus.QUEUED and after is not None and after.status is not RunStatus.QUEUED \
                and transition.run_to is not RunStatus.FAILED:
            for key in keys:
                self.taken.setdefault(_scope_key(run, RUN, key), []).append(run.id)
        for move in transition.moves:
            key = move.values.get("concurrency_key")
            if key and move.target is StepStatus.QUEUED:
                self.taken.setdefault(_scope_key(run, STEP, key), []).append(f"{run.id}/{move.step_id}")


def _scope_key(run: RunState, scope: str, key: str) -> tuple[str, ...]:
    return (RUN, run.tenant_id, run.workflow_id, key) if scope == RUN else (STEP, key)


# --- the scheduler's look for waiters -----------------------------------------------------------

# The most waiters one look reads (the first in the order they start in; the next look reads on).
LOOK_LIMIT = 1000


@dataclass(frozen=True)
class WaitingRow:
    """A waiter as the look reads it; ``step_id`` None for a run (waiting for each of ``keys``)."""

    run_id: str
    step_id: str | None
    tenant_id: str
    workflow_id: str
    workflow_version: int
    keys: tuple[str, ...]
    flagged: bool


def waiting(session: Session) -> tuple[list[WaitingRow], dict[tuple[str, ...], int]]:
    """The waiters (runs first, each kind in the order they start in) and the holders of their keys,
    by scope key (core.concurrency.Waiter)."""
    runs = [WaitingRow(r.id, None, r.tenant_id, r.workflow_id, r.workflow_version, tuple(r.concurrency_keys),
                       bool(r.has_work))
            for r in session.execute(text(
                "SELECT r.id, r.tenant_id, r.workflow_id, r.workflow_version, r.concurrency_keys, r.has_work "
                "FROM runs r WHERE r.status = 'queued' AND r.concurrency_keys IS NOT NULL "
                "ORDER BY r.priority, r.created_at, r.id LIMIT :n").columns(**_KEYS), {"n": LOOK_LIMIT})]
    steps = [WaitingRow(r.run_id, r.step_id, r.tenant_id, r.workflow_id, r.workflow_version, (r.concurrency_key,),
                        bool(r.has_work))
             for r in session.execute(text(
                 "SELECT s.run_id, s.step_id, s.concurrency_key, r.tenant_id, r.workflow_id, r.workflow_version, "
                 "r.has_work FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.concurrency_key IS NOT NULL "
                 f"AND s.status = 'pending' AND s.waiting_on = '{_CONCURRENCY}' AND r.status IN {_DISPATCHING_RUN} "
                 "ORDER BY r.priority, r.created_at, r.id, s.position LIMIT :n"), {"n": LOOK_LIMIT})]
    holders: dict[tuple[str, ...], int] = {}
    workflows = sorted({(w.tenant_id, w.workflow_id) for w in runs})
    for tenant_id, workflow_id, keys in _active_runs(session, workflows):
        for key in keys or ():
            scope_key = (RUN, tenant_id, workflow_id, key)
            holders[scope_key] = holders.get(scope_key, 0) + 1
    step_keys = sorted({w.keys[0] for w in steps})
    if step_keys:
        for key, count in session.execute(text(
                f"SELECT concurrency_key, count(*) FROM steps WHERE concurrency_key IN :keys "
                f"AND status IN {_in(HOLDING_STEP)} GROUP BY concurrency_key"
        ).bindparams(bindparam("keys", expanding=True)), {"keys": step_keys}):
            holders[(STEP, key)] = count
    return runs + steps, holders


def _active_runs(session: Session, workflows: Sequence[tuple[str, str]]) -> list[Any]:
    """(tenant, workflow, keys) of the active runs with keys of these workflows."""
    rows = []
    for tenant_id, workflow_id in workflows:
        rows += session.execute(text(
            f"SELECT tenant_id, workflow_id, concurrency_keys FROM runs WHERE tenant_id = :tenant "
            f"AND workflow_id = :workflow AND concurrency_keys IS NOT NULL AND status IN {_in(HOLDING_RUN)}"
        ).columns(**_KEYS), {"tenant": tenant_id, "workflow": workflow_id}).all()
    return rows


def flag(session: Session, run_ids: Sequence[str]) -> int:
    """Flag these runs for a pass (their waiters' keys have room); how many were not flagged yet."""
    if not run_ids:
        return 0
    return session.execute(text("UPDATE runs SET has_work = true WHERE id IN :ids AND NOT has_work")
                           .bindparams(bindparam("ids", expanding=True)), {"ids": list(run_ids)}).rowcount


# --- reports ----------------------------------------------------------------------------------------


def key_report(session: Session, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
    """The tenant's keys that are held or waited for: a workflow's (its active and waiting runs) and
    the steps' (attempts queued or running, steps waiting), each with the key as rendered."""
    workflow_keys: dict[tuple[str, str], dict[str, Any]] = {}
    for workflow_id, status, keys in session.execute(text(
            "SELECT workflow_id, status, concurrency_keys FROM runs WHERE tenant_id = :tenant "
            f"AND concurrency_keys IS NOT NULL AND status IN {_in(('queued', *HOLDING_RUN))}").columns(**_KEYS),
            {"tenant": tenant_id}):
        for key in keys or ():
            entry = workflow_keys.setdefault((workflow_id, key), {
                "workflow_id": workflow_id, "key": concurrency.shown(key), "active": 0, "waiting": 0})
            entry["waiting" if status == RunStatus.QUEUED.value else "active"] += 1
    step_keys: dict[str, dict[str, Any]] = {}
    for key, status, count in session.execute(text(
            "SELECT s.concurrency_key, s.status, count(*) FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE r.tenant_id = :tenant AND s.concurrency_key IS NOT NULL AND (s.status IN "
            f"{_in(HOLDING_STEP)} OR (s.status = 'pending' AND s.waiting_on = '{_CONCURRENCY}')) "
            "GROUP BY s.concurrency_key, s.status"), {"tenant": tenant_id}):
        entry = step_keys.setdefault(key, {"key": concurrency.shown(key, tenant_id), "running": 0, "waiting": 0})
        entry["waiting" if status == StepStatus.PENDING.value else "running"] += count
    return {"workflow_keys": sorted(workflow_keys.values(), key=lambda e: (e["workflow_id"], e["key"])),
            "step_keys": sorted(step_keys.values(), key=lambda e: e["key"])}


# The most holders a diagnosis names for one key.
NAMED_HOLDERS = 20


def run_key_holders(session: Session, tenant_id: str, workflow_id: str, key: str) -> list[str]:
    """The ids of the runs of the workflow holding ``key`` (the first NAMED_HOLDERS, oldest first)."""
    return list(session.execute(text(
        f"SELECT r.id FROM runs r WHERE r.tenant_id = :tenant AND r.workflow_id = :workflow "
        f"AND r.concurrency_keys IS NOT NULL AND r.status IN {_in(HOLDING_RUN)} AND {_HAS_KEY[_dialect(session)]} "
        "ORDER BY r.created_at, r.id LIMIT :n"),
        {"tenant": tenant_id, "workflow": workflow_id, "key": key, "n": NAMED_HOLDERS}).scalars())


def step_key_holders(session: Session, key: str) -> list[str]:
    """The ids of the runs whose attempts hold ``key`` (the first NAMED_HOLDERS)."""
    return list(session.execute(text(
        f"SELECT DISTINCT s.run_id FROM steps s WHERE s.concurrency_key = :key AND s.status IN {_in(HOLDING_STEP)} "
        "ORDER BY s.run_id LIMIT :n"), {"key": key, "n": NAMED_HOLDERS}).scalars())


def _in(values: Iterable[str]) -> str:
    """Statuses (never input) as an SQL list of literals."""
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def waits(session: Session, run: Any, definition: Any) -> list[diagnosis.KeyWait]:
    """The concurrency keys the run (queued, with keys) or its steps (pending, waiting on one) wait
    for, each with its limit and holders (a run's diagnosis)."""
    found = []
    if run.status == RunStatus.QUEUED.value and run.waiting_on == _CONCURRENCY and run.concurrency_keys:
        for key in run.concurrency_keys:
            limit = definition.concurrency_keys[int(key.partition(":")[0])].limit
            found.append(diagnosis.KeyWait(None, concurrency.shown(key), limit,
                                           tuple(run_key_holders(session, run.tenant_id, run.workflow_id, key))))
    for step_id, key in session.execute(text(
            "SELECT step_id, concurrency_key FROM steps WHERE run_id = :run AND status = 'pending' "
            f"AND waiting_on = '{_CONCURRENCY}' AND concurrency_key IS NOT NULL ORDER BY position"), {"run": run.id}):
        limit = definition.step(step_id).concurrency.limit
        found.append(diagnosis.KeyWait(step_id, concurrency.shown(key, run.tenant_id), limit,
                                       tuple(step_key_holders(session, key))))
    return found
