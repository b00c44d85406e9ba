"""Concurrency keys, decided (docs/flow-control.md).

A workflow's ``concurrency`` keys are rendered from a run's input at its first pass: the run starts
only while every key has room (fewer active runs of the workflow hold it than its limit, counting the
runs waiting ahead of it: priority, then age); otherwise it stays `queued`, ``waiting_on``
"concurrency". A step's key is rendered when it is ready: its attempt is queued only while fewer than
the limit of the tenant's attempts with that key are queued or running (and fewer wait ahead of it);
otherwise it stays `pending`, ``waiting_on`` "concurrency".

The room is a fact the scheduler reads under its concurrency lock (``Room``, by (scope, key) in
``RunState.concurrency``); holding a key is nothing but being an active run, or a queued or running
attempt, that carries it, so a holder's end releases it. ``to_wake`` picks the waiting runs the
scheduler flags for a pass when keys have room again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator import templates
from orchestrator.core import outcome as outcomes
from orchestrator.core import stopping
from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.transition import NOW, Draft
from orchestrator.core.vocabulary import EventType, SkipReason, WaitsOn
from orchestrator.definitions import Definition
from orchestrator.states import RunStatus, StepStatus

# A key's scope: a workflow's runs (stored on the run as "<index>:<key>"), or the tenant's step
# attempts (stored on the step as "<tenant>:<key>").
RUN, STEP = "run", "step"
# The longest rendered key kept (the rest is cut): steps.concurrency_key holds the tenant's id too.
KEY_MAX_CHARS = 200


@dataclass(frozen=True)
class Room:
    """A key as one decision reads it: its holders (with those the same pass took already) and the
    waiters ahead of the one deciding (higher priority, or as high and older)."""

    holders: int
    ahead: int = 0

    def admits(self, limit: int, taken: int = 0) -> bool:
        """Whether one more holder fits, ``taken`` more having been taken by this decision."""
        return self.holders + self.ahead + taken < limit


@dataclass(frozen=True)
class Ask:
    """A key whose room a decision needs, and its limit (the reader caps how many waiters it counts)."""

    scope: str
    key: str
    limit: int


def run_keys(definition: Definition, run_input: Any) -> tuple[str, ...]:
    """The run's keys as stored ("<index>:<rendered key>"); PermanentStepError (template_error) if one
    does not render."""
    context = {"input": run_input}
    return tuple(f"{i}:{_text(templates.render(spec.key, context))}"
                 for i, spec in enumerate(definition.concurrency_keys))


def step_key(tenant_id: str, step_def: Any, context: dict[str, Any]) -> str:
    """The step's key as stored ("<tenant>:<rendered key>"); PermanentStepError if it does not render."""
    return f"{tenant_id}:{_text(templates.render(step_def.concurrency.key, context))}"


def shown(key: str, tenant_id: str | None = None) -> str:
    """A stored key as its template rendered it: without a run key's index, or a step key's tenant."""
    return key.removeprefix(f"{tenant_id}:") if tenant_id is not None else key.partition(":")[2]


def reads_outputs(step_def: Any) -> bool:
    """Whether the step's key reads what only the template context holds (outputs, the approval)."""
    return bool(templates.referenced_names(step_def.concurrency.key) & {"steps", "approval"})


def missing(state: RunState, asks: Iterable[Ask]) -> tuple[Ask, ...]:
    """The asks whose room the snapshot does not hold."""
    known = state.concurrency or {}
    return tuple(a for a in asks if (a.scope, a.key) not in known)


def run_asks(definition: Definition, keys: Sequence[str]) -> tuple[Ask, ...]:
    return tuple(Ask(RUN, key, spec.limit) for key, spec in zip(keys, definition.concurrency_keys, strict=True))


def admit_run(draft: Draft, definition: Definition, keys: Sequence[str]) -> bool:
    """A queued run whose keys' room the snapshot holds: True if it may start (it holds its keys from
    now: they are written with its start); False if it is held, `queued` waiting on concurrency."""
    rooms = draft.run.concurrency or {}
    draft.run_values["concurrency_keys"] = list(keys)
    if all(rooms[(RUN, key)].admits(spec.limit) for key, spec in zip(keys, definition.concurrency_keys, strict=True)):
        draft.run_values["waiting_on"] = None
        return True
    draft.run_values["waiting_on"] = WaitsOn.CONCURRENCY.value
    return False


def fail_unrendered(draft: Draft, error: dict[str, Any]) -> None:
    """A queued run whose key did not render fails before it starts; its steps are skipped."""
    pending = [s.step_id for s in draft.steps.values() if s.status is StepStatus.PENDING]
    stopping.stop_steps(draft, cancel=(), skip=pending, message="the run's concurrency key did not render",
                        skip_reason=SkipReason.BLOCKED)
    draft.move_run(RunStatus.FAILED)
    draft.run_values.update(error={"code": error["code"], "message": error["message"], "step_id": None},
                            completed_at=NOW, waiting_on=None)
    draft.event(EventType.RUN_FAILED, None, None, error={"code": error["code"], "message": error["message"]})


def taken(draft: Draft, key: str) -> int:
    """The attempts with ``key`` this decision queued so far."""
    return sum(1 for m in draft.moves if m.target is StepStatus.QUEUED and m.values.get("concurrency_key") == key)


def queue_or_hold(draft: Draft, definition: Definition, step: StepState, key: str,
                  only_from: tuple[StepStatus, ...]) -> bool:
    """Queue the step's next attempt holding ``key`` if the key has room (True), else hold it `pending`
    waiting on concurrency (a retry that came due too)."""
    limit = definition.step(step.step_id).concurrency.limit
    if draft.run.concurrency[(STEP, key)].admits(limit, taken(draft, key)):
        return outcomes.queue_step(draft, definition, step, only_from=only_from, concurrency_key=key, waiting_on=None)
    if step.status is StepStatus.RETRYING:
        draft.move(step, StepStatus.PENDING, only_from=(StepStatus.RETRYING,), due_at=None,
                   waiting_on=WaitsOn.CONCURRENCY.value, concurrency_key=key)
    elif step.waiting_on != WaitsOn.CONCURRENCY or step.status is not StepStatus.PENDING:
        draft.update(step, waiting_on=WaitsOn.CONCURRENCY.value, concurrency_key=key)
    else:
        return False  # held already: nothing to write
    draft.event(EventType.STEP_DEFERRED, step.step_id, None, reason=WaitsOn.CONCURRENCY.value,
                key=shown(key, draft.run.tenant_id), limit=limit)
    return False


@dataclass(frozen=True)
class Waiter:
    """One waiter on one key, as the scheduler's look reads it: ``waiter`` is the run's id (a run
    waits for all its keys) or "<run id>/<step id>" (a step for its one); ``scope_key`` names the key
    across tenants and workflows; ``flagged``: its run is flagged for a pass already."""

    run_id: str
    waiter: str
    scope_key: tuple[str, ...]
    limit: int
    holders: int
    flagged: bool = False


def to_wake(waiters: Sequence[Waiter]) -> list[str]:
    """The runs to flag for a pass, from every waiter in the order they start in (priority, then age):
    a waiter is woken when it is within the first (limit - holders) waiters of each of its keys, the
    rule a pass admits by; a run already flagged is not flagged again."""
    position: dict[tuple[str, ...], int] = {}
    fits: dict[str, bool] = {}
    run_of: dict[str, str] = {}
    for w in waiters:
        place = position.get(w.scope_key, 0)
        position[w.scope_key] = place + 1
        fits[w.waiter] = fits.get(w.waiter, True) and w.holders + place < w.limit
        run_of[w.waiter] = w.run_id
    flagged = {w.run_id for w in waiters if w.flagged}
    return list(dict.fromkeys(run_of[w] for w, ok in fits.items() if ok and run_of[w] not in flagged))


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:KEY_MAX_CHARS]
